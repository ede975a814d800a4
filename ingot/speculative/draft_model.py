"""draft_target: a smaller ingot engine with the target's tokenizer proposes the next K tokens.

The draft engine is a whole LLMEngine (its own weights, KV cache, scheduler and CUDA graphs) in
which every decoding target request has a mirror request: the same tokens, decoded greedily. A
round of proposals, before each target step:

    sync      each mirror is cut back to the longest prefix it shares with its target request (the
              drafts the target rejected go, and their KV with them: kv.rewind) and given the
              target's tokens after it (the accepted token the target emitted, at least)
    decode    K draft steps for all mirrors at once (a batched decode in the draft engine; the
              first also computes the tokens each mirror was given)
    propose   each target request's drafts are its mirror's K new tokens

The draft's tokens are deterministic (greedy), so the acceptance rule of verify.py applies as is
and the target's output is unchanged. The draft engine runs without prefix caching: its blocks
hold guesses that are rewound, and only confirmed tokens may ever be published.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ingot.config import CacheConfig
from ingot.errors import ConfigError
from ingot.runtime.request import Request
from ingot.sampling_params import SamplingParams
from ingot.speculative.base import Proposer

# Of the free device memory when the draft engine loads (before the target): its KV cache. The
# draft's KV per token is a fraction of the target's, so a small share holds the same sequences.
DRAFT_MEMORY_FRACTION = 0.15


class DraftModelProposer(Proposer):
    name = "draft_target"

    def __init__(self, max_draft_len: int, draft_engine_dir: str | Path, device: str | None = None,
                 cache_config: CacheConfig | None = None) -> None:
        from ingot.runtime.engine import LLMEngine

        super().__init__(max_draft_len)
        cache = cache_config or CacheConfig(gpu_memory_fraction=DRAFT_MEMORY_FRACTION)
        cache = CacheConfig(cache.gpu_memory_fraction, cache.max_cache_bytes, enable_prefix_caching=False)
        self.draft = LLMEngine(draft_engine_dir, cache, device=device, async_output=False)
        self.mirrors: dict[str, Request] = {}
        self.max_seq_len = self.draft.spec.build.max_seq_len

    def check_target(self, target_spec, target_dir: Path) -> None:
        """The draft must speak the target's tokens and hold its longest sequence."""
        draft_spec, draft_dir = self.draft.spec, self.draft.engine_dir
        if draft_spec.model.vocab_size != target_spec.model.vocab_size \
                or _tokenizer_digest(draft_dir) != _tokenizer_digest(target_dir):
            raise ConfigError(f"--draft-engine {draft_dir}: its tokenizer (vocabulary {draft_spec.model.vocab_size}) "
                              f"differs from the target {target_dir}'s (vocabulary {target_spec.model.vocab_size}); "
                              "draft_target needs a draft model with the same tokenizer")
        for field in ("max_seq_len", "max_input_len"):
            draft_value, target_value = getattr(draft_spec.build, field), getattr(target_spec.build, field)
            if draft_value < target_value:
                raise ConfigError(f"--draft-engine {draft_dir}: {field} {draft_value} is below the target's "
                                  f"{target_value}; rebuild the draft with --{field.replace('_', '-')} {target_value}")

    def propose(self, request: Request) -> list[int]:
        self.propose_for([request])
        return request.draft_tokens

    def propose_for(self, requests: list[Request]) -> None:
        # a request whose last token is a step still in flight (runtime/overlap.py) waits a round
        decoding = [r for r in requests if r.params.speculative and r.num_computed_tokens == r.num_tokens - 1
                    and r.token_ids[-1] >= 0 and r.num_tokens + self.max_draft_len <= self.max_seq_len]
        if not decoding:
            return
        starts = {r.request_id: self._sync(r).num_tokens for r in decoding}
        for _ in range(self.max_draft_len):
            self.draft.step()
        for request in decoding:
            mirror, start = self.mirrors[request.request_id], starts[request.request_id]
            request.draft_tokens = mirror.token_ids[start:start + self.max_draft_len]

    def _sync(self, request: Request) -> Request:
        """The request's mirror, holding exactly the request's tokens, with at least the last one to compute."""
        mirror = self.mirrors.get(request.request_id)
        if mirror is None or mirror.is_finished:
            params = SamplingParams(temperature=0.0, ignore_eos=True, speculative=False,
                                    max_tokens=self.max_seq_len - request.num_tokens)
            mirror = self.draft.make_request(list(request.token_ids), params, f"draft-{request.request_id}")
            mirror.detokenizer = None  # its text is never read
            self.draft.submit(mirror)
            self.mirrors[request.request_id] = mirror
            return mirror
        target = request.token_ids
        shared = _common_prefix(mirror.token_ids, target)
        keep_computed = min(shared, len(target) - 1)  # the last target token is computed to draft after it
        self.draft.kv.rewind(mirror, mirror.num_computed_tokens - keep_computed)
        mirror.truncate(shared)
        for token in target[shared:]:
            mirror.append_token(token)
        return mirror

    def forget(self, request: Request) -> None:
        mirror = self.mirrors.pop(request.request_id, None)
        if mirror is not None:
            self.draft.abort_request(mirror.request_id)

    def shutdown(self) -> None:
        self.draft.shutdown()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _tokenizer_digest(engine_dir: Path) -> str | None:
    path = Path(engine_dir) / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
