"""EngineCore: the engine as the API side drives it — requests in by AddRequest, aborted by id,
outputs out as deltas (core_records.py). No threads and no I/O here: engine_loop.py runs it on a
thread of the caller's process, core_process.py in a process of its own.
"""

from __future__ import annotations

import logging

from ingot.errors import RequestError
from ingot.runtime.core_records import AddRequest, DeltaTracker, OutputDelta
from ingot.runtime.engine import LLMEngine
from ingot.runtime.samples import make_sample_requests, sample_ids

logger = logging.getLogger("ingot")


class EngineCore:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._deltas = DeltaTracker()
        self._live: set[str] = set()  # engine request ids added and not yet finished

    def add(self, adds: list[AddRequest]) -> list[tuple]:
        """Submit each prompt's samples; return the deltas of any the engine refused."""
        return [delta for add in adds for delta in self._add(add)]

    def _add(self, add: AddRequest) -> list[tuple]:
        """The API side validated the request; one the engine still refuses (an id already in use)
        is logged and answered with its samples' abort deltas."""
        submitted = []
        try:
            for request in make_sample_requests(self.engine, add.prompt_token_ids, add.params, add.request_id):
                self.engine.submit(request)
                self._live.add(request.request_id)
                submitted.append(request.request_id)
        except RequestError as exc:
            logger.warning("request %s refused by the engine: %s", add.request_id, exc)
            refused = [i for i in sample_ids(add.request_id, add.params.n) if i not in submitted]
            return self.abort(submitted) + [OutputDelta(i, [], "", "abort").pack() for i in refused]
        return []

    def abort(self, request_ids: list[str] | None) -> list[tuple]:
        """Abort these requests (None: every one in flight), free their KV blocks at once, and return
        their final deltas (finish_reason "abort")."""
        ids = sorted(self._live) if request_ids is None else [i for i in request_ids if i in self._live]
        return self._pack([self.engine.abort_output(request_id) for request_id in ids])

    def step(self) -> list[tuple]:
        return self._pack(self.engine.step())

    @property
    def has_work(self) -> bool:
        return self.engine.has_unfinished_requests()

    def _pack(self, outputs) -> list[tuple]:
        for output in outputs:
            if output.finished:
                self._live.discard(output.request_id)
        return self._deltas.pack(outputs)
