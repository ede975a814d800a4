"""The records between the API side (AsyncLLM) and the engine core, whether the core runs in its own
process (core_process.py, the server's default) or on a thread (engine_loop.py).

    API side ── AddRequest / abort ids ──▶ core: submit, step ── a StepMessage per step ──▶ API side

A step's outputs for every request travel as one message of deltas: what each request got since its
previous delta (new token ids, new visible text, new logprobs), never its whole output again, so
that a message costs the same at token 10 and token 10,000. The API side adds the deltas up.
Deltas travel as plain tuples (`pack` / `OutputDelta(*t)`): pickling 256 dataclasses costs ~6x
as much as 256 tuples, and the core pays it every step.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingot.runtime.outputs import RequestOutput
from ingot.runtime.stats import EngineStats
from ingot.sampling_params import SamplingParams


@dataclass(frozen=True)
class AddRequest:
    """A validated prompt to run: its n samples become engine requests `sample_ids(request_id, n)`."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams


@dataclass(slots=True)
class OutputDelta:
    """What one engine request (one sample) got in one step."""

    request_id: str  # the sample's engine request id
    token_ids: list[int]  # tokens new since the previous delta
    text: str  # visible text new since the previous delta
    finish_reason: str | None = None  # "stop" | "length" | "abort"; None while running
    stop_reason: str | int | None = None
    logprobs: list[dict[int, float]] | None = None  # one entry per new token, when asked for
    # The prompt's scores, on the request's first delta only (when asked for; see RequestOutput)
    prompt_logprobs: list[dict[int, float] | None] | None = None

    def pack(self) -> tuple:
        return (self.request_id, self.token_ids, self.text, self.finish_reason, self.stop_reason, self.logprobs,
                self.prompt_logprobs)


@dataclass(frozen=True)
class StepMessage:
    """One message from the core: the step's deltas (packed) and the engine's stats after it."""

    deltas: list[tuple]  # OutputDelta.pack() of each request that advanced or finished
    stats: EngineStats


class DeltaTracker:
    """The core's side: turns the engine's cumulative RequestOutputs into deltas. It remembers, per
    request still running, how many tokens and characters were already sent."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[int, int]] = {}  # request id -> (tokens, characters) sent

    def delta(self, output: RequestOutput) -> OutputDelta:
        completion = output.outputs[0]
        sent = self._sent.get(output.request_id)
        num_ids, num_chars = sent or (0, 0)
        ids = completion.token_ids
        logprobs = completion.logprobs[num_ids:len(ids)] if completion.logprobs is not None else None
        delta = OutputDelta(output.request_id, ids[num_ids:], completion.text[num_chars:], completion.finish_reason,
                            completion.stop_reason, logprobs, output.prompt_logprobs if sent is None else None)
        if completion.finished:
            self._sent.pop(output.request_id, None)
        else:
            self._sent[output.request_id] = (len(ids), len(completion.text))
        return delta

    def pack(self, outputs: list[RequestOutput]) -> list[tuple]:
        return [self.delta(output).pack() for output in outputs]
