"""FP8 on the GPU: the fused activation-quantization kernels give torch's bytes, every FP8 GEMM
tactic computes the scheme, and whole FP8 engines (fused kernels, tuned tactics, CUDA graphs)
match a reference of the scheme written on transformers."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ingot.quantization.fp8_format import quantize, quantize_per_row, quantize_per_tensor
from ingot.quantization.fp8_method import fp8_linear_emulated

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

SHAPE = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=2, num_attention_heads=8,
             num_key_value_heads=4, head_dim=128, vocab_size=32000, max_position_embeddings=4096,
             rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)


def _same_bytes(got, want):
    (q, scale), (want_q, want_scale) = got, want
    assert torch.equal(scale, want_scale), f"{(scale != want_scale).sum().item()} scales differ"
    differ = q.view(torch.uint8) != want_q.view(torch.uint8)
    assert not differ.any(), f"{differ.sum().item()} of {q.numel()} values differ, e.g. " \
                             f"{q[differ][:4].float().tolist()} against {want_q[differ][:4].float().tolist()}"


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rows,width", [(1, 4096), (7, 14336), (33, 1000), (2, 28672)])
def test_fused_quantization_gives_torch_bytes(rows, width, static):
    from ingot.kernels import fused_add_rmsnorm, silu_and_mul
    from ingot.kernels.fp8_quant import quantize_fp8, silu_and_mul_fp8
    from ingot.kernels.rmsnorm import fused_add_rmsnorm_fp8

    torch.manual_seed(width + rows)
    x = (torch.randn(rows, width, device="cuda") * 4).bfloat16()
    x[0, 5] = 300.0  # an outlier channel, as real activations have
    ref = (lambda t: (quantize(t, scale), scale)) if static else quantize_per_row
    scale = quantize_per_tensor(x)[1] * 0.5 if static else None  # static: a few values saturate
    _same_bytes(quantize_fp8(x, scale), ref(x))
    gate_up = torch.randn(rows, 2 * width, device="cuda").bfloat16()
    _same_bytes(silu_and_mul_fp8(gate_up, scale), ref(silu_and_mul(gate_up)))
    weight, residual = torch.randn(width, device="cuda").bfloat16(), torch.randn_like(x)
    normed, new_residual = fused_add_rmsnorm(x, residual, weight, 1e-5)
    q, q_scale, q_residual = fused_add_rmsnorm_fp8(x, residual, weight, 1e-5, scale)
    assert torch.equal(q_residual, new_residual)
    _same_bytes((q, q_scale), ref(normed))


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("n,k", [(1536, 1024), (1024, 3584), (6144, 4096)])
def test_every_fp8_tactic_computes_the_scheme(n, k, per_row):
    from ingot.tactics.fp8_tuning import fp8_candidates, fp8_linear_fn

    torch.manual_seed(n + k)
    quant = quantize_per_row if per_row else quantize_per_tensor
    w_q, w_scale = quant(torch.randn(n, k, device="cuda") * k ** -0.5)
    bias = torch.randn(n, device="cuda").bfloat16()
    for m in (1, 3, 16, 77, 300, 2048):
        x_q, x_scale = quant(torch.randn(m, k, device="cuda").bfloat16())
        want = fp8_linear_emulated(x_q, x_scale, w_q, w_scale, bias, torch.float32)
        for tactic in fp8_candidates(m):
            got = fp8_linear_fn(tactic)(x_q, x_scale, w_q, w_scale, bias, torch.bfloat16).float()
            err = ((got - want).norm() / want.norm()).item()
            assert err < 1e-2, f"{tactic} at M={m}: relative error {err:.3g}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import transformers

    from tests.tiny_models import write_tokenizer

    directory = tmp_path_factory.mktemp("fp8-ckpt")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(architectures=["LlamaForCausalLM"], **SHAPE)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(directory)
    write_tokenizer(directory)
    return directory, model.float()


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(" ".join(rng.choice(["the", "king", "ghost", "night", "castle", "to", "be"]) for _ in range(3000)))
    return path


@pytest.fixture(scope="module", params=["per_channel", "per_tensor"])
def fp8_engine(request, checkpoint, calib_text, tmp_path_factory):
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, QuantConfig

    scaling = request.param
    params = {"scaling": scaling, **({"calib_data": str(calib_text), "calib_size": 4, "calib_seq_len": 64}
                                     if scaling == "per_tensor" else {})}
    directory = tmp_path_factory.mktemp("engines") / f"fp8-{scaling}"
    build_engine(str(checkpoint[0]), directory, BuildConfig(dtype="bf16", max_seq_len=1024, max_batch_size=16,
                                                            max_num_tokens=1024, cuda_graph_batch_sizes=(1, 2, 4, 8, 16)),
                 device="cuda", quant=QuantConfig("fp8", params))
    return scaling, directory


def _engine(engine_dir, **kwargs):
    from ingot.config import CacheConfig
    from ingot.runtime.engine import LLMEngine

    return LLMEngine(engine_dir, CacheConfig(max_cache_bytes=1 << 30), device="cuda", **kwargs)


def _prefill_logits(engine, prompt):
    from ingot.sampling_params import SamplingParams

    request = engine.add_request(prompt, SamplingParams(max_tokens=1))
    inputs = engine.runner.prepare(engine.scheduler.schedule())
    with torch.inference_mode():
        logits = engine.model.compute_logits(engine.model(inputs.input_ids, inputs.positions, engine.pool.layers,
                                                          inputs.metadata))
    engine.abort_request(request.request_id)
    return logits


def _emulate_gemms(engine) -> int:
    """Make every FP8 layer multiply with fp8_linear_emulated (the CPU runtime's formula, fp32) in place
    of its tuned kernels; the quantization kernels stay (their bytes are checked against torch above)."""
    from ingot.quantization.fp8_method import Fp8LinearMethod

    def emulated(x_q, x_scale, w_q, w_scale, bias, out_dtype):
        return fp8_linear_emulated(x_q, x_scale, w_q, w_scale, bias, out_dtype)

    methods = [m.method for m in engine.model.modules() if isinstance(getattr(m, "method", None), Fp8LinearMethod)]
    for method in methods:
        method.tactics = [(1 << 62, emulated)]
    return len(methods)


def test_fp8_engine_logits_equal_the_emulation_and_track_the_scheme(checkpoint, calib_text, fp8_engine):
    """The GPU engine (fused quantization, tuned FP8 kernels) against the same engine multiplying by
    the CPU emulation's formula: equal up to fp32 summation order. Against a reference of the
    scheme on transformers (fp32 activations, where the engine's are bf16): the same top token."""
    from ingot.quantization.calibration import text_samples
    from ingot.tokenizer import Tokenizer
    from tests.quantization.test_fp8_engine import _reference_model

    scaling, engine_dir = fp8_engine
    hf_model = checkpoint[1]
    samples = text_samples(calib_text, Tokenizer.from_dir(checkpoint[0]), 4, 64).samples if scaling == "per_tensor" else []
    reference_model = _reference_model(hf_model.cpu(), scaling, samples).cuda()
    for module in reference_model.modules():  # its E4M3 weights and calibrated ranges are plain attributes
        for name in ("w", "input_amax"):
            if isinstance(getattr(module, name, None), torch.Tensor):
                setattr(module, name, getattr(module, name).cuda())
    hf_model.cuda()
    engine, emulated = _engine(engine_dir, enforce_eager=True), _engine(engine_dir, enforce_eager=True)
    assert _emulate_gemms(emulated) == 2 * 4
    rng = random.Random(1)
    for length in (1, 7, 300):
        prompt = [rng.randrange(32000) for _ in range(length)]
        ours, theirs = _prefill_logits(engine, prompt), _prefill_logits(emulated, prompt)
        assert (ours - theirs).abs().max().item() <= 0.01 * theirs.abs().max().item(), length
        with torch.inference_mode():
            reference = reference_model(torch.tensor([prompt], device="cuda")).logits[0].float()
        agree = (ours.argmax(-1) == reference.argmax(-1)).float().mean().item()
        assert agree >= 0.9, (length, agree)


def test_fp8_cuda_graph_decode_equals_eager(fp8_engine):
    """Graph replays equal eager steps up to near-ties: a graph runs the batch padded to its captured
    size, and cuBLASLt (a tactic at some buckets) may pick another algorithm for another M."""
    from ingot.sampling_params import SamplingParams
    from tests.gpu.test_engine_gpu import _diverges_only_at_near_ties

    rng = random.Random(2)
    prompts = [[rng.randrange(32000) for _ in range(n)] for n in (5, 17, 33, 100, 9, 1)]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=2)

    def generate(engine):
        requests = [engine.add_request(p, params) for p in prompts]
        while engine.has_unfinished_requests():
            engine.step()
        return requests

    graphed = _engine(fp8_engine[1])
    assert graphed.runner.graphs is not None
    replayed, eager = generate(graphed), generate(_engine(fp8_engine[1], enforce_eager=True))
    exact = _diverges_only_at_near_ties(prompts, [r.output_token_ids for r in replayed], eager,
                                        [r.logprobs for r in replayed])
    assert exact >= len(prompts) // 2


def test_weights_generated_at_load_on_the_gpu(tmp_path):
    """--dummy-weights at_load: no file, FP8 weights made on the GPU at load; the engine generates."""
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, QuantConfig
    from ingot.sampling_params import SamplingParams

    (tmp_path / "config.json").write_text(json.dumps({**SHAPE, "architectures": ["LlamaForCausalLM"],
                                                      "torch_dtype": "bfloat16"}))
    build_engine(str(tmp_path / "config.json"), tmp_path / "e", BuildConfig(dtype="bf16", max_seq_len=256,
                                                                             max_batch_size=4, max_num_tokens=256),
                 device="cuda", load_format="dummy", quant=QuantConfig("fp8"), dummy_weights="at_load")
    assert not list((tmp_path / "e").glob("*.safetensors"))
    engine = _engine(tmp_path / "e")
    assert engine.model.layers["0"].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    request = engine.add_request([1, 2, 3], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert len(request.output_token_ids) == 8
