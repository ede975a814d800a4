"""Tensor and pipeline parallelism for real: one process per rank (gloo on CPU), started by the
engine itself. Every layout gives exactly the tokens of one rank, with in-flight batching of 16
requests, chunked prefill, prompt scores and preemption."""

from __future__ import annotations

import random

import pytest

from ingot.builder.build import build_engine
from ingot.config import BuildConfig, CacheConfig, ParallelConfig, SchedulerConfig
from ingot.engine_format import read_spec
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from tests.tiny_models import make_checkpoint

BUILD = BuildConfig(dtype="fp32", max_batch_size=16, max_input_len=48, max_seq_len=96, max_num_tokens=48,
                    tokens_per_block=8)
ARCHS = {  # 8 query heads and 2 KV heads: tp 4 replicates KV heads; 4 layers: pp 2 takes 2 each
    "llama": ("LlamaForCausalLM", dict(attention_bias=True)),
    "qwen2": ("Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3ForCausalLM", dict(head_dim=16)),
}
LAYOUTS = [("llama", dict(tp=2)), ("llama", dict(tp=4)), ("llama", dict(pp=2)), ("llama", dict(tp=2, pp=2)),
           ("qwen2", dict(tp=2)), ("qwen2", dict(pp=2)), ("qwen3", dict(tp=2, pp=2))]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for name, (arch, overrides) in ARCHS.items():
        directory = tmp_path_factory.mktemp(f"{name}-ckpt")
        make_checkpoint(directory, arch, seed=9, hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                        intermediate_size=96, num_hidden_layers=4, **overrides)
        out[name] = directory
    return out


def _engine_dir(checkpoints, tmp_path_factory, arch: str, **parallel):
    name = f"{arch}-tp{parallel.get('tp', 1)}-pp{parallel.get('pp', 1)}"
    directory = tmp_path_factory.getbasetemp() / "dist-engines" / name
    if not directory.exists():
        build_engine(str(checkpoints[arch]), directory, BUILD, device="cpu", parallel=ParallelConfig(**parallel))
    return directory


def _workload(seed: int = 0):
    rng = random.Random(seed)
    return [([rng.randrange(300) for _ in range(rng.randint(2, 40))],
             SamplingParams(max_tokens=rng.randint(4, 12), temperature=0.0, ignore_eos=True,
                            prompt_logprobs=3 if i % 3 == 0 else None)) for i in range(16)]


def _run(engine_dir, max_num_tokens=48, cache_bytes=None):
    lookahead = 0 if cache_bytes else None  # a small pool is there to preempt: admit whatever fits now
    engine = LLMEngine(engine_dir, CacheConfig(max_cache_bytes=cache_bytes), device="cpu",
                       scheduler_config=SchedulerConfig.for_engine(read_spec(engine_dir).build,
                                                                   max_num_tokens=max_num_tokens,
                                                                   admission_lookahead=lookahead))
    try:
        requests = [engine.add_request(prompt, params) for prompt, params in _workload()]
        while engine.has_unfinished_requests():
            engine.step()
        return requests, engine.stats
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def single_rank(checkpoints, tmp_path_factory):
    return {arch: _run(_engine_dir(checkpoints, tmp_path_factory, arch))[0] for arch in ARCHS}


def _assert_same(got, want):
    for a, b in zip(got, want):
        assert a.output_token_ids == b.output_token_ids
        if b.prompt_logprobs is not None:
            for x, y in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:]):
                assert x.keys() == y.keys() and all(abs(x[t] - y[t]) < 1e-4 for t in x)


@pytest.mark.parametrize("arch,parallel", LAYOUTS, ids=[f"{a}-{'-'.join(f'{k}{v}' for k, v in p.items())}"
                                                         for a, p in LAYOUTS])
def test_layout_gives_the_tokens_of_one_rank(checkpoints, tmp_path_factory, single_rank, arch, parallel):
    engine_dir = _engine_dir(checkpoints, tmp_path_factory, arch, **parallel)
    requests, stats = _run(engine_dir, max_num_tokens=16)  # chunked: prompts of up to 40 tokens, 16 per step
    _assert_same(requests, single_rank[arch])
    assert stats.kv_blocks_used == 0 and stats.running == 0


def test_preemption_across_ranks(checkpoints, tmp_path_factory, single_rank):
    engine_dir = _engine_dir(checkpoints, tmp_path_factory, "llama", tp=2, pp=2)
    # rank 0 holds 2 of 4 layers with 1 of 2 KV heads: 512 bytes a token, 4 KiB a block; 14 blocks
    requests, stats = _run(engine_dir, cache_bytes=14 * 4096)
    _assert_same(requests, single_rank["llama"])
    assert stats.preempted_total > 0, "the pool was meant to be too small"
