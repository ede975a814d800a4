"""FP8 KV cache end to end on a tiny random model (CPU, the torch backend): the scales the build
calibrates are each layer's max |k| and |v| over the calibration samples / 448, computed here from
transformers' model; the engine's log-probabilities, prompt and generated alike (prefill, chunked
prefill, prefix-cache hits and decode all reading the fp8 pool), equal those of transformers' model
with every key and value rounded through E4M3 at the engine's scales; the pool holds twice the
tokens; engine.json, the start-up line and `ingot inspect` tell the KV dtype and the scales."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging

import pytest
import torch
from safetensors import safe_open

from ingot.builder.build import build_engine
from ingot.config import BuildConfig, CacheConfig, QuantConfig, SchedulerConfig
from ingot.engine_format import ENGINE_JSON, torch_dtype
from ingot.errors import ConfigError
from ingot.quantization.calibration import text_samples
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from ingot.tokenizer import Tokenizer
from tests.helpers_data import hamlet_path

BUILD = BuildConfig(dtype="fp32", max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=64,
                    tokens_per_block=8)
CALIB = {"calib_size": 3, "calib_seq_len": 48}
PROMPT = torch.randint(0, 311, (29,), generator=torch.Generator().manual_seed(3)).tolist()


def _e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x through E4M3 at `scale`, back in x's dtype: torch's cast, saturated."""
    return ((x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


@contextlib.contextmanager
def _hf_attention(hf_model, transform):
    """Run transformers' model with each layer's keys and values (after rotary, as a KV cache holds
    them) passed through transform(layer, key, value) before SDPA."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(module, query, key, value, attention_mask, **kwargs):
        key, value = transform(module.layer_idx, key, value)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("ingot_test_kv", attention)
    previous = hf_model.config._attn_implementation
    hf_model.config._attn_implementation = "ingot_test_kv"
    try:
        yield
    finally:
        hf_model.config._attn_implementation = previous


def _hf_kv_amax(hf_model, samples) -> torch.Tensor:
    """(layers, 2): the largest |k| and |v| of each layer over the samples, each run alone."""
    amax = torch.zeros(hf_model.config.num_hidden_layers, 2)

    def record(layer, key, value):
        amax[layer] = torch.maximum(amax[layer], torch.stack([key.abs().max(), value.abs().max()]))
        return key, value

    with _hf_attention(hf_model, record), torch.no_grad():
        for sample in samples:
            hf_model(torch.tensor([sample]))
    return amax


def _hf_logprobs(hf_model, ids: list[int], scales: torch.Tensor | None) -> torch.Tensor:
    """(len(ids), vocab) log-probabilities; with scales (layers, 2), K and V rounded through E4M3."""
    def round_kv(layer, key, value):
        return _e4m3(key, scales[layer, 0]), _e4m3(value, scales[layer, 1])

    with _hf_attention(hf_model, round_kv) if scales is not None else contextlib.nullcontext(), torch.no_grad():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), -1)


def _engine_scales(engine_dir) -> torch.Tensor:
    with safe_open(str(engine_dir / "rank0.safetensors"), framework="pt") as f:
        return torch.stack([f.get_tensor(f"layers.{i}.self_attn.kv_scale") for i in range(2)])


def _engine_runs(engine_dir, max_num_tokens: int, runs: int = 2, cache: CacheConfig | None = None):
    """Greedy runs of PROMPT, one after the other (the second hits the prefix cache): each run's
    log-probabilities of the prompt's tokens 2.. and of its 6 generated tokens, and its tokens;
    and the engine."""
    engine = LLMEngine(engine_dir, cache, device="cpu", async_output=False,
                       scheduler_config=SchedulerConfig.for_engine(BUILD, max_num_tokens=max_num_tokens))
    results = []
    for _ in range(runs):
        engine.add_request(PROMPT, SamplingParams(max_tokens=6, temperature=0.0, logprobs=0, prompt_logprobs=0))
        finished = []
        while not finished:
            finished = [out for out in engine.step() if out.finished]
        out = finished[0]
        prompt = [next(iter(lp.values())) for lp in out.prompt_logprobs[1:]]
        generated = [next(iter(lp.values())) for lp in out.outputs[0].logprobs]
        results.append((prompt + generated, out.outputs[0].token_ids))
    return results, engine


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.md"
    path.write_text(hamlet_path().read_text(encoding="utf-8")[:5_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fp8_kv_engine(tiny_checkpoint, calib_text, tmp_path_factory):
    directory = tmp_path_factory.mktemp("fp8kv") / "e"
    build_engine(str(tiny_checkpoint[0]), directory, BUILD, device="cpu",
                 quant=QuantConfig("none", {"calib_data": str(calib_text), **CALIB}, kv_cache_dtype="fp8"))
    return directory


def test_calibrated_scales_are_the_max_over_the_calibration_text(fp8_kv_engine, tiny_checkpoint, calib_text):
    directory, hf_model = tiny_checkpoint
    samples = text_samples(calib_text, Tokenizer.from_dir(directory), CALIB["calib_size"], CALIB["calib_seq_len"])
    want = _hf_kv_amax(hf_model, samples.samples) / 448
    torch.testing.assert_close(_engine_scales(fp8_kv_engine), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("max_num_tokens", [64, 16])  # the prompt in one step, or in chunks of 16
def test_fp8_kv_engine_equals_a_reference_rounding_kv_through_e4m3(fp8_kv_engine, tiny_checkpoint, max_num_tokens):
    hf_model = tiny_checkpoint[1]
    scales = _engine_scales(fp8_kv_engine)
    (first, tokens), (second, tokens_again) = _engine_runs(fp8_kv_engine, max_num_tokens)[0]
    assert tokens_again == tokens  # the second run read the first's fp8 blocks from the prefix cache
    ids = PROMPT + tokens
    positions = torch.arange(len(PROMPT) - 1, len(ids) - 1)
    picked = torch.tensor(ids[1:])

    def of(logprobs):  # log p(token i | tokens before it) for every token after the first
        return logprobs[torch.arange(len(ids) - 1), picked]

    reference, exact = of(_hf_logprobs(hf_model, ids, scales)), of(_hf_logprobs(hf_model, ids, None))
    fp8_error = (reference - exact).abs().max().item()
    for ours in (torch.tensor(first), torch.tensor(second)):
        ours_error = (ours - reference).abs().max().item()
        assert fp8_error > 1e-4, "rounding K and V must change the result, or this test compares nothing"
        assert ours_error < 0.01 * fp8_error, (ours_error, fp8_error, positions)  # measured: ~5e-7 against ~4e-3


def test_pool_holds_twice_the_tokens(tiny_checkpoint, tmp_path):
    """bf16 engines (the GPU case): the same bytes hold twice the blocks in fp8, each block twice the
    tokens' worth of K and V; the pool allocates exactly what the plan says."""
    from ingot.runtime.kv_cache import KVCachePool
    from ingot.runtime.kv_sizing import plan_pool

    plans, pools = {}, {}
    for kv in ("auto", "fp8"):
        spec = build_engine(str(tiny_checkpoint[0]), tmp_path / kv, BuildConfig(dtype="bf16", max_batch_size=16,
                                                                               max_seq_len=128, tokens_per_block=8),
                            device="cpu", quant=QuantConfig(kv_cache_dtype=kv, kv_cache_scales="unit"))
        plans[kv] = plan = plan_pool(spec, CacheConfig(max_cache_bytes=40 * 1536), torch.device("cpu"))
        pools[kv] = KVCachePool(2, plan.num_blocks, 8, 2, 12, torch_dtype(spec.kv_dtype), torch.device("cpu"))
    assert plans["auto"].bytes_per_token == 2 * 2 * 2 * 12 * 2 == 2 * plans["fp8"].bytes_per_token
    assert (plans["auto"].num_blocks, plans["fp8"].num_blocks) == (40, 80)
    for kv, pool in pools.items():
        assert sum(t.numel() * t.element_size() for t in pool.layers) == plans[kv].num_blocks * plans[kv].bytes_per_block
    assert pools["fp8"].layers[0].dtype == torch.float8_e4m3fn


def test_start_up_line_tells_the_kv_dtype(fp8_kv_engine, tiny_engine, caplog):
    with caplog.at_level(logging.INFO, logger="ingot"):
        engines = [LLMEngine(e, device="cpu") for e in (fp8_kv_engine, tiny_engine)]
    assert engines[0].pool.layers[0].dtype == torch.float8_e4m3fn
    assert "in fp8 (E4M3, per-layer scales), 96 bytes per token" in caplog.text
    assert "in fp32, 384 bytes per token" in caplog.text


def test_engine_records_and_inspect_prints_the_scales(fp8_kv_engine, capsys):
    from ingot.commands.inspect import run as inspect

    record = json.loads((fp8_kv_engine / ENGINE_JSON).read_text())["quantization"]
    assert record["kv_cache_dtype"] == "fp8" and record["kv_cache_scales"] == "calibrated"
    assert record["kv_cache_calibration"]["num_samples"] == 3 and record["params"] == {}
    assert inspect(argparse.Namespace(engine=str(fp8_kv_engine), json=False)) == 0
    out = capsys.readouterr().out
    assert "KV cache fp8" in out
    assert "kv cache       fp8 (E4M3): 96 bytes per token (2 layers x 2 KV heads x head_dim 12 x K and V x 1 byte)" in out
    assert "kv scales      calibrated on calib.md (sha256 " in out
    scales = _engine_scales(fp8_kv_engine)
    assert f"  layer 0    k {scales[0, 0].item():.4g} (|k| <= " in out


@pytest.mark.parametrize("quant", [QuantConfig("fp8", {"scaling": "per_channel"}, "fp8", "unit"),
                                   QuantConfig("int4_rtn", {"group_size": 32}, "fp8", "unit")])
def test_fp8_kv_with_quantized_weights_equals_its_weights_with_kv_rounded(tiny_checkpoint, tmp_path, quant):
    """FP8 KV on top of FP8 or INT4 weights: the engine equals the engine of the same weights with an
    unquantized cache whose attention input K and V are rounded through E4M3 at scale 1."""
    import dataclasses

    from ingot.attention import get_backend

    build_engine(str(tiny_checkpoint[0]), tmp_path / "kv", BUILD, device="cpu", quant=quant)
    build_engine(str(tiny_checkpoint[0]), tmp_path / "w", BUILD, device="cpu",
                 quant=dataclasses.replace(quant, kv_cache_dtype="auto"))
    ours = _engine_runs(tmp_path / "kv", 64, runs=1)[0][0]
    no_reuse = CacheConfig(enable_prefix_caching=False)  # the next run must compute its own KV
    [(weights_only, _)], engine = _engine_runs(tmp_path / "w", 64, runs=1, cache=no_reuse)
    assert (torch.tensor(weights_only) - torch.tensor(ours[0])).abs().max() > 1e-4  # the KV's rounding shows
    torch_backend, one = get_backend("torch"), torch.ones(())

    class RoundingBackend(type(torch_backend)):
        def forward(self, q, k, v, kv_cache, metadata, scale, sliding_window, kv_scale=None):
            return torch_backend.forward(q, _e4m3(k, one), _e4m3(v, one), kv_cache, metadata, scale, sliding_window)

    for module in engine.model.modules():
        if hasattr(module, "backend"):
            module.backend = RoundingBackend()
    engine.add_request(PROMPT, SamplingParams(max_tokens=6, temperature=0.0, logprobs=0, prompt_logprobs=0))
    out = next(o for _ in range(20) for o in engine.step() if o.finished)
    assert out.outputs[0].token_ids == ours[1]
    reference = [next(iter(lp.values())) for lp in out.prompt_logprobs[1:] + out.outputs[0].logprobs]
    torch.testing.assert_close(torch.tensor(ours[0]), torch.tensor(reference), rtol=0, atol=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["--kv-cache-dtype", "fp8"], r"--kv-cache-dtype fp8 calibrates its K and V scales on a text: pass --calib-data "
                                  r"FILE .*, or --kv-cache-scales unit for scales of 1.0"),
    (["--kv-cache-scales", "unit"], r"--kv-cache-scales unit applies to --kv-cache-dtype fp8 only \(this build has "
                                    r"--kv-cache-dtype auto\): add --kv-cache-dtype fp8 or drop --kv-cache-scales"),
    (["--kv-cache-dtype", "fp16"], None),
])
def test_fp8_kv_flags_refused_with_the_fix(tiny_checkpoint, tmp_path, argv, message):
    from ingot.commands.build import build_options, make_build_parser

    parser = make_build_parser()
    if message is None:  # argparse's own refusal names the choices
        with pytest.raises(SystemExit):
            parser.parse_args([str(tiny_checkpoint[0]), "-o", str(tmp_path / "e"), *argv])
        return
    args = parser.parse_args([str(tiny_checkpoint[0]), "-o", str(tmp_path / "e"), *argv])
    with pytest.raises(ConfigError, match=message):
        build_engine(args.model, args.output, **build_options(args))


def test_weights_made_at_load_get_unit_kv_scales(tmp_path, capsys):
    """--dummy-weights at_load: no text to calibrate on at load, so unit scales, or a refusal."""
    from ingot.cli import main
    from tests.tiny_models import BASE

    (tmp_path / "config.json").write_text(json.dumps({**BASE, "architectures": ["LlamaForCausalLM"]}))
    common = [str(tmp_path / "config.json"), "--load-format", "dummy", "--dummy-weights", "at_load",
              "--max-seq-len", "64", "--device", "cpu", "--kv-cache-dtype", "fp8"]
    assert main(["build", *common, "-o", str(tmp_path / "e"), "--kv-cache-scales", "unit"]) == 0
    engine = LLMEngine(tmp_path / "e", device="cpu")
    scales = [m.kv_scale for m in engine.model.modules() if getattr(m, "kv_scale", None) is not None]
    assert len(scales) == BASE["num_hidden_layers"] and all(torch.equal(s, torch.ones(2)) for s in scales)
    request = engine.add_request([1, 2, 3], SamplingParams(max_tokens=3, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert len(request.output_token_ids) == 3
    assert main(["build", *common, "-o", str(tmp_path / "calibrated")]) == 2
    assert "--kv-cache-dtype fp8 calibrates its scales on a text; add --kv-cache-scales unit" in capsys.readouterr().err
