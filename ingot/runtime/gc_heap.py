"""Python's cyclic garbage collector in a long-running engine process.

A full (generation 2) collection walks every tracked container object in the process. After
start-up that is ~300,000 of them (torch's, the model's, the modules' functions and tuples), none
of which will ever be garbage; with 1,024 requests decoding, a full collection ran every ~14
steps and cost ~140 ms on a 2-core CI machine: ~40% of the host time of a decode step, and the
GPU waits for the host at that batch. Freezing moves everything alive at the end of start-up
into the permanent generation, which collections skip (as vLLM's engine core does); objects made
later (requests, their lists) are collected as before.

Only processes that ingot owns freeze for good (the engine-core process); `ingot bench`, which
tests also call in-process, thaws when it returns (`unfreeze`): objects alive at the freeze that
become cyclic garbage later are collected only once thawed.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect what is garbage now, then freeze the rest; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.debug("froze %d start-up objects out of the garbage collector's walks", frozen)
    return frozen


def unfreeze() -> None:
    """Hand the frozen objects back to the collector (the oldest generation)."""
    gc.unfreeze()
