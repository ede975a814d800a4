"""vLLM's tokenizer endpoints, which evaluation harnesses use to count and split tokens exactly as
the server does (lm-evaluation-harness's `tokenizer_backend=remote`):

    GET  /tokenizer_info  {eos_token, bos_token, pad_token, chat_template, model_max_length, ...}
    POST /tokenize        {"prompt": text, "add_special_tokens": true} or {"messages": [...], ...}
                          -> {"tokens": [ids], "count": n, "max_model_len": L}
    POST /detokenize      {"tokens": [ids]} -> {"prompt": text}
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ingot.errors import RequestError
from ingot.serve.errors import bad_request, from_request_error
from ingot.serve.protocol import ChatMessage, _Strict

MAX_TOKENIZE_CHARS = 1 << 20  # one request may not keep the event loop busy for long


class TokenizeRequest(_Strict):
    model: str | None = None
    prompt: str | None = Field(None, max_length=MAX_TOKENIZE_CHARS)
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt (text) or messages (a chat)")
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int]


def tokenizer_info(served) -> dict:
    """served: the ServedModel whose tokenizer is asked about (`?model=`, or the one served)."""
    tokenizer = served.llm.tokenizer
    specials = tokenizer.special_tokens
    template = tokenizer.chat_template
    return {"tokenizer_class": tokenizer.config.get("tokenizer_class", "PreTrainedTokenizerFast"),
            "eos_token": specials.get("eos_token"), "bos_token": specials.get("bos_token"),
            "pad_token": specials.get("pad_token"), "chat_template": template if isinstance(template, str) else None,
            "model_max_length": served.llm.spec.build.max_seq_len, "vocab_size": tokenizer.vocab_size}


def tokenize(state, req: TokenizeRequest) -> dict:
    llm = state.model(req.model).llm
    tokenizer = llm.tokenizer
    try:
        if req.messages is not None:
            ids = tokenizer.encode_chat([m.to_dict() for m in req.messages], req.add_generation_prompt)
        else:
            ids = tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    except RequestError as exc:
        raise from_request_error(exc, "messages") from None
    return {"tokens": ids, "count": len(ids), "max_model_len": llm.spec.build.max_seq_len}


def detokenize(state, req: DetokenizeRequest) -> dict:
    llm = state.model(req.model).llm
    vocab = llm.spec.model.vocab_size
    bad = [t for t in req.tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})", "tokens")
    return {"prompt": llm.tokenizer.decode(req.tokens, skip_special_tokens=False)}
