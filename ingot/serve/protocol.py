"""Request bodies of /v1/completions and /v1/chat/completions, validated once, here.

Strict types (a string is not a number) and OpenAI's ranges, so a bad value is a 400 naming the
field before anything reaches the engine. Unknown fields are ignored, as OpenAI-compatible
servers do, so clients that send extra options (LangChain's `user`, ...) keep working; options
that would silently change the meaning of a request (logit_bias, suffix) are refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingot.sampling_params import MAX_STOP_TOKEN_IDS, REPETITION_PENALTY_RANGE, SamplingParams
from ingot.serve.errors import bad_request
from ingot.serve.limits import ServeLimits, flag
from ingot.serve.structured_fields import structured_output
from ingot.structured import StructuredOutput

MAX_N = 128
MAX_TOP_LOGPROBS = 20
SEED_LIMIT = 2**62  # torch seeds are 64-bit; sample i of n uses seed + i * stride, which must fit too
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


class _Strict(BaseModel):
    # allow_inf_nan=False: Python's JSON reader takes the non-standard literals NaN and Infinity
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_means_absent(cls, data):
        """Clients send `"n": null` for "the default"; a required field sent as null is still missing."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """The fields both endpoints share; vLLM's extensions (top_k, min_p, ...) included."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
    seed: int | None = Field(None, ge=-SEED_LIMIT, le=SEED_LIMIT)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # constraints on the answer (ingot/serve/structured_fields.py): OpenAI's and vLLM's spellings
    response_format: dict | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stops_not_empty(cls, stop):
        if any(not s for s in _as_list(stop)):
            raise ValueError("stop strings must be non-empty")
        return stop

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def num_prompts(self) -> int:
        return 1

    def check_supported(self, limits: ServeLimits) -> None:
        """The caps, and what ingot does not support."""
        check_stop_caps(_as_list(self.stop), limits, "stop")
        prompts = self.num_prompts
        sequences, most = prompts * self.n, limits.max_sequences_per_request
        if sequences > most:
            of = f" of {prompts} prompts make {sequences} sequences" if prompts > 1 else ""
            raise bad_request(f"n={self.n} samples{of}, over this server's limit of {most} sequences per request "
                              f"({flag('max_sequences_per_request')}); lower n"
                              + (" or send fewer prompts" if prompts > 1 else ""), "n")
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by ingot", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed when stream is true", "stream_options")

    def sampling_params(self, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None = None,
                        structured: StructuredOutput | None = None) -> SamplingParams:
        optional = {name: getattr(self, name) for name in
                    ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty") if getattr(self, name) is not None}
        return SamplingParams(
            max_tokens=max_tokens, n=self.n, seed=self.seed, stop=self.stop or [],
            stop_token_ids=self.stop_token_ids or [], ignore_eos=self.ignore_eos,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            structured=structured if structured is not None else structured_output(self), **optional)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(DEFAULT_COMPLETION_MAX_TOKENS, ge=0)  # 0 with echo: score the prompt only
    echo: bool = False  # the answer starts with the prompt; with logprobs, the prompt's tokens are scored
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, prompt):
        ok = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and (
            all(isinstance(p, str) for p in prompt) or all(_is_int(p) for p in prompt)
            or all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt)))
        if not ok:
            raise ValueError("must be a string, a non-empty list of strings, a list of token ids, "
                             "or a list of non-empty lists of token ids")
        return prompt

    @property
    def num_prompts(self) -> int:
        return len(self.prompts())

    def check_supported(self, limits: ServeLimits) -> None:
        prompts, most = self.num_prompts, limits.max_prompts_per_request
        if prompts > most:
            raise bad_request(f"{prompts} prompts in one request, over this server's limit of {most} "
                              f"({flag('max_prompts_per_request')}); send them in several requests", "prompt")
        super().check_supported(limits)
        if self.suffix:
            raise bad_request("suffix (insertion) is not supported by ingot", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise bad_request(f"best_of={self.best_of} is not supported: ingot returns every sample (best_of = n)",
                              "best_of")

    @property
    def prompt_logprobs(self) -> int | None:
        """echo with logprobs scores the prompt's tokens too (the legacy OpenAI API's, and vLLM's, behaviour)."""
        return self.logprobs if self.echo else None

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt of a batch: text or token ids."""
        if isinstance(self.prompt, str) or _is_int(self.prompt[0]):
            return [self.prompt]
        return list(self.prompt)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None  # an assistant's earlier calls (OpenAI's shape)
    tool_call_id: str | None = None  # role "tool": the call this message answers

    def to_dict(self) -> dict:
        content = self.content
        if isinstance(content, list):  # the parts' texts, concatenated: templates expect a string
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content, "name": self.name, "tool_calls": self.tool_calls,
                "tool_call_id": self.tool_call_id}


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    add_generation_prompt: bool = True
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None  # "auto" (default with tools), "none", "required", or a named function
    parallel_tool_calls: bool = True

    def check_supported(self, limits: ServeLimits) -> None:
        super().check_supported(limits)
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def check_stop_caps(stops: list[str], limits: ServeLimits, param: str) -> None:
    """Stop strings against --max-stop-strings and --max-stop-string-chars; APIError 400 naming param."""
    if len(stops) > limits.max_stop_strings:
        raise bad_request(f"{len(stops)} stop strings, over this server's limit of {limits.max_stop_strings} "
                          f"({flag('max_stop_strings')}); send fewer", param)
    longest = max(map(len, stops), default=0)
    if longest > limits.max_stop_string_chars:
        raise bad_request(f"a stop string of {longest} characters, over this server's limit of "
                          f"{limits.max_stop_string_chars} ({flag('max_stop_string_chars')}); shorten it", param)


def _as_list(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else stop or []


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# A normalizer may merge characters before tokenizing (NFC makes "e" + U+0301 one "é"): the bound on the
# characters one token covers is taken this many times over.
NORMALIZER_MARGIN = 4


def check_text_fits(text: str, max_token_chars: int, build, prompt_param: str) -> None:
    """Refuse, before tokenizing, a text that cannot fit in max_input_len tokens: tokenizing a 10 MB prompt
    took SmolLM2's tokenizer 6 s of a core only to find it too long (issue 21)."""
    most = build.max_input_len * max_token_chars * NORMALIZER_MARGIN
    if len(text) > most:
        raise bad_request(f"the prompt has {len(text)} characters, more than this engine's max_input_len="
                          f"{build.max_input_len} tokens can hold (a token covers at most {max_token_chars} "
                          f"characters here); shorten it", prompt_param)


def check_fits(num_prompt_tokens: int, max_tokens: int, build, prompt_param: str) -> None:
    """The engine's envelope, checked here so the 400 can name the field to change."""
    if num_prompt_tokens > build.max_input_len:
        raise bad_request(f"the prompt has {num_prompt_tokens} tokens, over this engine's max_input_len="
                          f"{build.max_input_len}; shorten it (or rebuild the engine with a larger --max-input-len)",
                          prompt_param)
    if num_prompt_tokens + max_tokens > build.max_seq_len:
        raise bad_request(f"max_tokens={max_tokens} plus the prompt's {num_prompt_tokens} tokens is "
                          f"{num_prompt_tokens + max_tokens}, over this engine's max_seq_len={build.max_seq_len}; "
                          f"ask for at most {max(build.max_seq_len - num_prompt_tokens, 0)} tokens", "max_tokens")
