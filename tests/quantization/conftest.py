"""What the accuracy tests of quantized SmolLM2 builds share: the held-out Hamlet span and the
unquantized engine's score of every token in it, computed once per session."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ingot.eval.perplexity import engine_token_nll
from ingot.llm import LLM
from tests.helpers_data import hamlet_path

CALIB_CHARS = 60_000  # calibrate on the text's first characters ...
HELD_OUT = (150_000, 156_000)  # ... and score a later span: never the same tokens
WINDOW, STRIDE = 512, 256


@dataclass
class HeldOut:
    text: str  # the scored span
    token_ids: list[int]  # its tokens (SmolLM2's tokenizer)
    unquantized_nll: list[float]  # -log p of each scored token under the unquantized fp32 engine

    @property
    def unquantized_perplexity(self) -> float:
        import math

        return math.exp(sum(self.unquantized_nll) / len(self.unquantized_nll))

    def nll(self, engine_dir) -> list[float]:
        """The same tokens, the same windows, scored by another engine."""
        llm = LLM(engine_dir, device="cpu")
        try:
            return _flat(engine_token_nll(llm, self.token_ids, WINDOW, STRIDE, use_progress=False)[1])
        finally:
            llm.engine.shutdown()


def _flat(per_window: list[list[float]]) -> list[float]:
    return [x for scored in per_window for x in scored]


@pytest.fixture(scope="session")
def smollm2_held_out(smollm2_engine) -> HeldOut:
    text = hamlet_path().read_text(encoding="utf-8")[HELD_OUT[0]:HELD_OUT[1]]
    llm = LLM(smollm2_engine, device="cpu")
    try:
        ids = llm.tokenizer.encode(text)
        nll = _flat(engine_token_nll(llm, ids, WINDOW, STRIDE, use_progress=False)[1])
    finally:
        llm.engine.shutdown()
    return HeldOut(text, ids, nll)


@pytest.fixture(scope="session")
def calibration_text(tmp_path_factory):
    """The text's first CALIB_CHARS characters, as a file for --calib-data."""
    path = tmp_path_factory.mktemp("calib") / "hamlet-head.md"
    path.write_text(hamlet_path().read_text(encoding="utf-8")[:CALIB_CHARS], encoding="utf-8")
    return path
