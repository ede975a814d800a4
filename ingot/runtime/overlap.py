"""A decode step launched but not yet read back (the runner's host/GPU overlap).

While a step is in flight, each of its requests carries a placeholder as its last token: the
scheduler counts it (the request owes one more token), the next step's input for that request
comes from the device tensor, and when the step is read back the placeholder is taken off and
the real token handed to the engine, which appends it like any other.

    launch N   -> tokens of N on the device, copied to pinned host memory, event recorded
    launch N+1 -> inputs gathered from N's device tensor (no host round trip)
    collect N  -> wait for N's copy only; placeholders off; RunnerOutput to the engine
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ingot.runtime.records import RunnerOutput, SampledTokens, SchedulerOutput

PLACEHOLDER = -1


@dataclass
class PendingStep:
    step: SchedulerOutput
    token_ids: torch.Tensor  # (n,) int64, device: the sampled tokens, one per scheduled request
    host_copy: torch.Tensor  # (n,) int64, pinned host memory (CPU: the same tensor)
    ready: torch.cuda.Event | None  # recorded after the copy; None on CPU
    row_of: dict  # request -> its row in token_ids

    @classmethod
    def start(cls, step: SchedulerOutput, token_ids: torch.Tensor) -> "PendingStep":
        if token_ids.is_cuda:
            host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            host.copy_(token_ids, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host, ready = token_ids, None
        return cls(step, token_ids, host, ready, {r: i for i, r in enumerate(step.requests)})

    def holds_all(self, step: SchedulerOutput) -> bool:
        return all(s.request in self.row_of for s in step.scheduled)

    def inputs_for(self, step: SchedulerOutput) -> torch.Tensor:
        """(len(step),) int64, device: this step's sampled token of each of `step`'s requests."""
        rows = torch.tensor([self.row_of[s.request] for s in step.scheduled], device=self.token_ids.device)
        return self.token_ids.index_select(0, rows)

    def hold_places(self) -> "PendingStep":
        """Give each request still running its placeholder token (after earlier steps were applied)."""
        for request in self.step.requests:
            if not request.is_finished:
                request.append_token(PLACEHOLDER)
        return self

    def collect(self) -> RunnerOutput:
        """Wait for this step's copy only (later launches keep running), take the placeholders off
        and return the tokens. Requests that finished meanwhile (aborted) are left out."""
        if self.ready is not None:
            self.ready.synchronize()
        sampled = []
        for request, token in zip(self.step.requests, self.host_copy.tolist()):
            if request.is_finished:
                continue
            request.drop_placeholder()
            sampled.append(SampledTokens(request, [token]))
        return RunnerOutput(self.step, sampled)
