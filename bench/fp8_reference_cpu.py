"""FP8 W8A8 accuracy, checked against a reference that shares no code with ingot's FP8 path, and
attributed (CPU). The reference is transformers' model of the same checkpoint (the GGUF dequantized
by transformers' own reader) with the block linear layers replaced by fake-quant ones: the weight
rounded through torch's float8_e4m3fn cast with ingot's scales (per output channel, or per matrix
with fused q/k/v and gate/up sharing their largest), the input rounded the same way per token
(dynamic) or with a static scale (max over the calibration text), an fp32 matmul.

    python bench/fp8_reference_cpu.py --text ../shared/data/hamlet.md --model smollm2 --out bench/results

It records, on the held-out span and windows of bench/fp8_accuracy_cpu.py:
  * whether ingot's per_channel engine stores exactly the reference's rounded weights;
  * for each variant, the perplexity and its change against the unquantized reference (with the
    paired standard error over tokens), and the mean KL(unquantized || variant) of the next-token
    distributions, which a rounding realization moves far less than the perplexity: per_channel
    and per_tensor W8A8, weights only, activations only, each fused linear alone (qkv, o, gate_up,
    down), each block of layers alone, and W8A8 with the window's first token left unrounded (the
    token that carries the massive activations);
  * the per-channel change under tiny rescalings of the activation scales (x (1 + eps)): equivalent
    schemes, different rounding realizations, i.e. how much one figure on this text can move.

Writes DATE-cpu-fp8-reference-hamlet-MODEL.json.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from benchlib import record_header, write_record

GROUPS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o": ("self_attn", ("o_proj",)),
          "gate_up": ("mlp", ("gate_proj", "up_proj")), "down": ("mlp", ("down_proj",))}
ENGINE_NAMES = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj",
                "down": "mlp.down_proj"}


def e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x through E4M3 at `scale` and back, float32: torch's cast, saturated at +-448."""
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale


def row_scales(x: torch.Tensor) -> torch.Tensor:
    return (x.abs().amax(-1, keepdim=True).float() / 448).clamp(min=1e-12)


class FakeQuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, weight: torch.Tensor, acts: str, static_amax=None, eps: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # (out, in), already rounded
        self.bias = linear.bias
        self.acts, self.static_amax, self.eps = acts, static_amax, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1]).float()  # one window at a time: row 0 is its first token
        if self.acts == "token":
            x = e4m3(x, row_scales(x) * (1 + self.eps))
        elif self.acts == "token_skip_first":
            x = torch.cat([x[:1], e4m3(x[1:], row_scales(x[1:]))])
        elif self.acts == "static":
            x = e4m3(x, (self.static_amax / 448).clamp(min=1e-12))
        y = x @ self.weight.t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], -1)


def quantize(model, weights: str, acts: str, groups=tuple(GROUPS), layers=None, static_amax=None, eps=0.0):
    """weights: per_channel | per_tensor | none; acts: token | token_skip_first | static | none."""
    for i, layer in enumerate(model.model.layers):
        if layers is not None and i not in layers:
            continue
        for group in groups:
            parent_name, names = GROUPS[group]
            parent = getattr(layer, parent_name)
            parts = [getattr(parent, n) for n in names]
            shared = max(p.weight.detach().abs().amax().float() for p in parts)  # fused: one scale for the group
            for name, part in zip(names, parts):
                w = part.weight.detach().float()
                if weights == "per_channel":
                    w = e4m3(w, row_scales(w))
                elif weights == "per_tensor":
                    w = e4m3(w, (shared / 448).clamp(min=1e-12))
                amax = static_amax[(i, group)] if acts == "static" else None
                setattr(parent, name, FakeQuantLinear(part, w, acts, amax, eps))
    return model


def input_amax(model, samples) -> dict:
    """The largest |x| each fused group's input reached on the calibration samples, each run alone."""
    amax, hooks = {}, []
    for i, layer in enumerate(model.model.layers):
        for group, (parent_name, names) in GROUPS.items():
            def hook(module, args, key=(i, group)):
                seen = args[0].detach().abs().amax().float()
                amax[key] = torch.maximum(amax[key], seen) if key in amax else seen
            hooks.append(getattr(getattr(layer, parent_name), names[0]).register_forward_pre_hook(hook))
    with torch.inference_mode():
        for sample in samples:
            model(torch.tensor([sample]))
    for hook in hooks:
        hook.remove()
    return amax


def score(model, ids, spans):
    """Per window, log-probabilities of the whole vocabulary at each scored token: (scored, vocab) float32."""
    rows = []
    with torch.inference_mode():
        for w in spans:
            logits = model(torch.tensor([ids[w.begin:w.end]])).logits[0].float()
            rows.append(torch.log_softmax(logits[w.first_scored - w.begin - 1:w.end - w.begin - 1], dim=-1))
    return rows


def token_nll(rows, ids, spans) -> list[float]:
    targets = torch.tensor([ids[i] for w in spans for i in range(w.first_scored, w.end)])
    return (-torch.cat(rows).gather(1, targets[:, None])[:, 0]).tolist()


def compare(base_rows, rows, ids, spans, first_positions: int = 4) -> dict:
    from ingot.eval.perplexity import paired_change

    positions = torch.tensor([i - w.begin for w in spans for i in range(w.first_scored, w.end)])
    base, other = torch.cat(base_rows), torch.cat(rows)
    base_nll, nll = token_nll(base_rows, ids, spans), token_nll(rows, ids, spans)
    kl = (base.exp() * (base - other)).sum(-1)
    change, se = paired_change(base_nll, nll)
    return {"perplexity": math.exp(sum(nll) / len(nll)), "relative_to_unquantized": change,
            "relative_se": se, "mean_kl": kl.mean().item(),
            f"mean_kl_first_{first_positions}_positions": kl[positions < first_positions].mean().item(),
            "mean_kl_later_positions": kl[positions >= first_positions].mean().item()}


def variants(num_layers: int, block: int) -> dict:
    """name -> (weights, acts, groups, layers)"""
    out = {"per_channel_w8a8": ("per_channel", "token", tuple(GROUPS), None),
           "per_tensor_w8a8": ("per_tensor", "static", tuple(GROUPS), None),
           "per_channel_weights_only": ("per_channel", "none", tuple(GROUPS), None),
           "per_token_activations_only": ("none", "token", tuple(GROUPS), None),
           "per_tensor_weights_only": ("per_tensor", "none", tuple(GROUPS), None),
           "static_activations_only": ("none", "static", tuple(GROUPS), None),
           "per_channel_w8a8_first_token_unrounded": ("per_channel", "token_skip_first", tuple(GROUPS), None)}
    for group in GROUPS:
        out[f"per_channel_w8a8_{group}_only"] = ("per_channel", "token", (group,), None)
    for start in range(0, num_layers, block):
        stop = min(start + block, num_layers)
        out[f"per_channel_w8a8_layers_{start}_{stop - 1}_only"] = ("per_channel", "token", tuple(GROUPS),
                                                                   set(range(start, stop)))
    return out


def ingot_weights_equal(engine_dir: Path, reference) -> dict:
    """Does ingot's per_channel engine store exactly the reference's rounded weights?"""
    from safetensors.torch import load_file

    stored = {}
    for file in engine_dir.glob("rank*.safetensors"):
        stored.update(load_file(file))
    differing = total = 0
    for i, layer in enumerate(reference.model.layers):
        for group, (parent_name, names) in GROUPS.items():
            parent = getattr(layer, parent_name)
            ours = torch.cat([getattr(parent, n).weight.detach() for n in names])
            base = f"layers.{i}.{ENGINE_NAMES[group]}"
            theirs = stored[f"{base}.weight"].float() * stored[f"{base}.weight_scale"]
            differing += (ours != theirs).sum().item()
            total += ours.numel()
    return {"weights_compared": total, "weights_differing": differing}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--calib-chars", type=int, default=60_000)
    parser.add_argument("--calib-size", type=int, default=8)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--eval-chars", type=int, nargs=2, default=[150_000, 156_000])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--layer-block", type=int, default=5, help="layers per block in the by-layer rows")
    parser.add_argument("--eps", type=float, nargs="*", default=[-1e-6, 1e-6, 1e-5, 1e-4],
                        help="activation-scale rescalings of the per_channel realization rows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    header = record_header()
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, QuantConfig
    from ingot.eval.perplexity import windows
    from ingot.eval.reference import load_transformers_model
    from ingot.tokenizer import Tokenizer

    full = Path(args.text).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:  # ingot's tokenizer (the token ids every record scores) and FP8 weights
        engine = Path(tmp) / "fp8"
        build_engine(args.model, engine, BuildConfig(dtype="fp32", max_seq_len=args.window, max_input_len=args.window),
                     device="cpu", quant=QuantConfig("fp8", {"scaling": "per_channel"}))
        tokenizer = Tokenizer.from_dir(engine)
        ids = tokenizer.encode(full[args.eval_chars[0]:args.eval_chars[1]])
        calib_ids = tokenizer.encode(full[:args.calib_chars])
        spans = windows(len(ids), args.window, args.stride)
        base_model = load_transformers_model(args.model, "fp32")
        check = quantize(copy.deepcopy(base_model), "per_channel", "none")
        weights = ingot_weights_equal(engine, check)
        del check
    print(f"ingot's per_channel weights against the reference's: {weights}", flush=True)
    samples = [calib_ids[i * args.calib_seq_len:(i + 1) * args.calib_seq_len]
               for i in range(min(args.calib_size, len(calib_ids) // args.calib_seq_len))]
    amax = input_amax(base_model, samples)
    started = time.perf_counter()
    base_rows = score(base_model, ids, spans)
    base_nll = token_nll(base_rows, ids, spans)
    results = {"unquantized": {"perplexity": math.exp(sum(base_nll) / len(base_nll)),
                               "score_s": round(time.perf_counter() - started, 1)}}
    rows = dict(variants(len(base_model.model.layers), args.layer_block))
    rows.update({f"per_channel_w8a8_activation_scales_x_1{eps:+g}": ("per_channel", "token", tuple(GROUPS), None, eps)
                 for eps in args.eps})
    for name, spec in rows.items():
        weights_mode, acts, groups, layers, *eps = spec
        started = time.perf_counter()
        model = quantize(copy.deepcopy(base_model), weights_mode, acts, groups, layers, amax, eps[0] if eps else 0.0)
        results[name] = {**compare(base_rows, score(model, ids, spans), ids, spans),
                         "score_s": round(time.perf_counter() - started, 1)}
        r = results[name]
        print(f"{name:<48} ppl {r['perplexity']:8.3f} {r['relative_to_unquantized']:+7.2%} +- {r['relative_se']:.2%}"
              f"  KL {r['mean_kl']:.4f}", flush=True)
    record = {**header, "model": args.model, "dtype": "fp32", "text": Path(args.text).name,
              "reference": "transformers (GGUF dequantized by its reader), block linears fake-quantized through "
                           "torch's float8_e4m3fn cast, fp32 matmul",
              "calibration": {"chars": args.calib_chars, "samples": len(samples), "seq_len": args.calib_seq_len,
                              "statistic": "max"},
              "eval": {"chars": args.eval_chars, "window": args.window, "stride": args.stride,
                       "num_scored": sum(w.num_scored for w in spans)},
              "ingot_per_channel_weights": weights, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    write_record(args.out / f"{header['date'][:10]}-cpu-fp8-reference-hamlet-{args.model}.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
