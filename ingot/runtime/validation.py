"""The checks a request passes before it reaches an engine, in one place: the engine runs them when a
request is made in its own process (LLM), and AsyncLLM runs them in the API process so that a bad
request is refused at once, before anything crosses to the engine core."""

from __future__ import annotations

from pathlib import Path

from ingot.engine_format import EngineSpec
from ingot.errors import RequestError
from ingot.sampling_params import SamplingParams


def check_prompt_kind(engine_dir: str | Path, has_tokenizer: bool, prompt_is_text: bool,
                      params: SamplingParams) -> None:
    """An engine built with --load-format dummy has no tokenizer: token ids in, stop token ids only,
    no structured output (its grammar is compiled against the tokenizer's vocabulary)."""
    if not has_tokenizer and (prompt_is_text or params.stop):
        raise RequestError(f"engine {engine_dir} has no tokenizer (built with --load-format dummy): "
                           "give the prompt as token ids and stop with stop_token_ids, not strings")
    if not has_tokenizer and params.structured is not None:
        raise RequestError(f"engine {engine_dir} has no tokenizer: structured output needs one "
                           "(rebuild with --tokenizer)")


def validate_request(spec: EngineSpec, token_ids: list[int], params: SamplingParams) -> None:
    """The prompt and max_tokens fit the engine's envelope; every id is inside the vocabulary."""
    build, vocab = spec.build, spec.model.vocab_size
    if not token_ids:
        raise RequestError("prompt is empty: give at least one token")
    if len(token_ids) > build.max_input_len:
        raise RequestError(f"prompt has {len(token_ids)} tokens, over the engine's max_input_len="
                           f"{build.max_input_len}; shorten it or rebuild with a larger --max-input-len")
    if len(token_ids) + params.max_tokens > build.max_seq_len:
        raise RequestError(f"prompt ({len(token_ids)} tokens) + max_tokens ({params.max_tokens}) = "
                           f"{len(token_ids) + params.max_tokens} exceeds the engine's max_seq_len="
                           f"{build.max_seq_len}; lower max_tokens to at most "
                           f"{build.max_seq_len - len(token_ids)} or rebuild with a larger --max-seq-len")
    bad = [t for t in token_ids if not 0 <= t < vocab]
    if bad:
        raise RequestError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
    bad = [t for t in params.stop_token_ids if not 0 <= t < vocab]
    if bad:
        raise RequestError(f"stop_token_ids {bad[:5]} are outside the vocabulary [0, {vocab})")
