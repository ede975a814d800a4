"""After a token is sampled: detokenize it, decide whether the request is done, and say what
text is new. A stop string may span several tokens, so text that could still become a stop
string is held back from streaming until it is decided."""

from __future__ import annotations

from ingot.runtime.outputs import CompletionOutput, RequestOutput
from ingot.runtime.request import Request
from ingot.runtime.stop_strings import StopMatcher


def apply_stop_conditions(request: Request, token: int, max_seq_len: int) -> str:
    """Update request.finish_reason / stop_reason / output_text; return the new visible text."""
    params = request.params
    if request.detokenizer is None:  # token ids only (an engine without a tokenizer)
        _check_token_stops(request, token, max_seq_len)
        return ""
    request.detokenizer.add([token])
    full = request.detokenizer.text
    visible = full
    if not params.ignore_eos and token in request.eos_token_ids:
        request.finish_reason = "stop"
    elif token in params.stop_token_ids:
        request.finish_reason, request.stop_reason = "stop", token
    elif params.stop:
        if request.stop_matcher is None:
            request.stop_matcher = StopMatcher(params.stop)
        match = request.stop_matcher.feed(full)
        if match is not None:
            index, stop = match
            visible = full[: index + len(stop)] if params.include_stop_str_in_output else full[:index]
            request.finish_reason, request.stop_reason = "stop", stop
    if request.finish_reason is None and (request.num_output_tokens >= params.max_tokens
                                          or request.num_tokens >= max_seq_len):
        request.finish_reason = "length"
    if request.finish_reason is not None and request.stop_reason is None or request.finish_reason == "length":
        request.detokenizer.flush()  # release bytes held back for an unfinished UTF-8 character
        visible = full = request.detokenizer.text
    if request.finish_reason is None and params.stop:
        visible = full[: len(full) - request.stop_matcher.hold_back]
    delta = visible[len(request.output_text):] if len(visible) >= len(request.output_text) else ""
    request.output_text = visible if len(visible) >= len(request.output_text) else request.output_text
    return delta


def _check_token_stops(request: Request, token: int, max_seq_len: int) -> None:
    params = request.params
    if not params.ignore_eos and token in request.eos_token_ids:
        request.finish_reason = "stop"
    elif token in params.stop_token_ids:
        request.finish_reason, request.stop_reason = "stop", token
    elif request.num_output_tokens >= params.max_tokens or request.num_tokens >= max_seq_len:
        request.finish_reason = "length"


def output_of(request: Request, delta_text: str, delta_token_ids: list[int] | None = None) -> RequestOutput:
    """The request's output now; delta_token_ids: the tokens new since its last output (default: the last one)."""
    completion = CompletionOutput(
        index=request.sample_index,
        text=request.output_text,
        token_ids=list(request.output_token_ids),  # a snapshot: the request keeps growing
        finish_reason=request.finish_reason,
        stop_reason=request.stop_reason,
        logprobs=request.logprobs if request.params.logprobs is not None else None,
        delta_text=delta_text,
        delta_token_ids=request.token_ids[-1:] if delta_token_ids is None else list(delta_token_ids),
    )
    return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids, [completion],
                         finished=request.finish_reason is not None, prompt_logprobs=request.prompt_logprobs)
