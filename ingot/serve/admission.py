"""--max-queue counts prompts in flight, not HTTP requests: each prompt of a request becomes a request
in the engine, so a request of 64 prompts must not cost the same one slot as a request of one.

The Gate (app.py) gives every generation request a QueueSlots once its body is read and takes the
first slot; a handler that finds more prompts in the validated body holds one slot per prompt before
tokenizing anything; the Gate releases them all when the answer has been sent (a stream: when it ends).
"""

from __future__ import annotations

from ingot.serve.errors import APIError

SCOPE_KEY = "ingot.queue_slots"  # where the Gate leaves a request's QueueSlots in its ASGI scope


class QueueSlots:
    """The --max-queue slots one request holds; metrics.in_flight counts them for the whole server."""

    def __init__(self, state) -> None:
        self.state = state  # ServerState: max_queue and metrics
        self.held = 0

    def hold(self, count: int, param: str | None = None) -> None:
        """Hold `count` slots in all, or raise APIError: 429 while the server is full, 400 when the
        request alone has more prompts than the whole queue (it could never be admitted)."""
        extra = count - self.held
        if extra <= 0:
            return
        metrics, limit = self.state.metrics, self.state.max_queue
        if limit is not None and count > limit:
            raise APIError(400, f"{count} prompts in one request, over this server's limit of {limit} prompts in "
                                f"flight (--max-queue); send at most {limit} per request", param)
        if limit is not None and metrics.in_flight + extra > limit:
            raise APIError(429, f"the server is at its limit of {limit} prompts in flight (--max-queue); "
                                "retry later", type="rate_limit_error", code="queue_full")
        metrics.in_flight += extra
        self.held = count

    def release(self) -> None:
        self.state.metrics.in_flight -= self.held
        self.held = 0


def slots_of(request) -> QueueSlots:
    """The slots of a request the Gate let through (a Starlette Request)."""
    return request.scope[SCOPE_KEY]
