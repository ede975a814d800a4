"""A decode step launched but not yet read back (the engine's host/GPU overlap).

While a step is in flight, each of its requests carries a placeholder as its last token: the
scheduler counts it (the request owes one more token), the next step's input for that request
comes from the device tensor, and the real id replaces the placeholder when it is read back.

    launch N   -> tokens of N on the device, copied to pinned host memory, event recorded
    launch N+1 -> inputs gathered from N's device tensor (no host round trip)
    resolve N  -> wait for N's copy only, replace placeholders, stop checks, detokenize
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ingot.runtime.request import Request

PLACEHOLDER = -1


@dataclass
class PendingStep:
    requests: list[Request]
    token_ids: torch.Tensor  # (n,) int64, device: the sampled tokens
    host_copy: torch.Tensor  # (n,) int64, pinned host memory (CPU: the same tensor)
    ready: torch.cuda.Event | None  # recorded after the copy; None on CPU
    row_of: dict  # request -> its row in token_ids

    @classmethod
    def start(cls, requests: list[Request], token_ids: torch.Tensor) -> "PendingStep":
        if token_ids.is_cuda:
            host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
            host.copy_(token_ids, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host, ready = token_ids, None
        return cls(requests, token_ids, host, ready, {r: i for i, r in enumerate(requests)})

    def placeholders_for_unfinished(self) -> "PendingStep":
        """Give each request still running its placeholder token (after earlier steps resolved)."""
        for request in self.requests:
            if not request.is_finished:
                request.append_token(PLACEHOLDER)
        return self

    def read_tokens(self) -> list[int]:
        """Wait for this step's copy only (later launches keep running) and return the ids."""
        if self.ready is not None:
            self.ready.synchronize()
        return self.host_copy.tolist()
