"""The benchmark record: every field written by the command that measured it (../shared/BENCHMARKS.md).

A record holds who measured what (device, commit, command, date, engine summary), the measured
figures, the card's ceilings measured in the same process (ingot/bench/ceilings.py), the floors
computed from the engine's config (ingot/bench/floors.py), and the ratios. Each ratio is computed
from the record's own stored fields, so a reader recomputes it from the file alone:

    decode_floor_tok_s    = batch_size x copy_tbps x 1e12 / decode_step_bytes
    decode_floor_ratio    = decode_tok_s_total / decode_floor_tok_s
    compute_ceiling_tok_s = matmul_tflops x 1e12 / flops_per_output_token
    compute_ceiling_ratio = output_tok_s / compute_ceiling_tok_s

An FP8 engine runs its block linear layers on the FP8 tensor cores and the rest (lm_head,
attention) in the model dtype, so its ceiling adds the two times a token costs:

    compute_ceiling_tok_s = 1e12 / (flops_per_output_token_fp8 / matmul_fp8_tflops
                                    + (flops_per_output_token - flops_per_output_token_fp8) / matmul_tflops)
"""

from __future__ import annotations

import datetime
import json
import shlex
import subprocess
from pathlib import Path

from ingot.bench import floors


def header(device: str, argv: list[str] | None) -> dict:
    """device, commit, command, date, software versions."""
    import torch

    import ingot

    return {
        "device": device,
        "commit": _commit(),
        "command": "ingot " + shlex.join(argv) if argv is not None else "(not run from the ingot command)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"ingot": ingot.__version__, "torch": torch.__version__},
    }


def device_name(device: str) -> str:
    """The device as torch reports it (the GPU's name), or this CPU with its thread count."""
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def engine_summary(spec, engine_dir: str) -> dict:
    """What the engine is: enough to rebuild one like it."""
    build = spec.build.to_dict()
    return {"path": str(engine_dir), "architecture": spec.model.architecture, "dtype": spec.dtype,
            "quantization": spec.quant.to_dict(), "load_format": spec.load_format, "source": spec.source,
            "parallel": {"tp": spec.mapping.config.tp, "pp": spec.mapping.config.pp},
            "speculative": spec.speculative.to_dict(),
            **{k: build[k] for k in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens",
                                    "tokens_per_block") if k in build}}


def add_decode_floor(record: dict, spec, batch: int, isl: int, osl: int) -> None:
    """Bytes a decode step reads at this batch and mean context, the floor and its ratio."""
    parts = floors.decode_step_bytes(spec.model, spec.dtype, batch, floors.decode_mean_context(isl, osl), spec.quant)
    record["decode_step_bytes"] = parts["total"]
    record["decode_step_bytes_parts"] = parts
    record["decode_floor_tok_s"] = round(batch * record["copy_tbps"] * 1e12 / record["decode_step_bytes"], 3)
    record["decode_floor_ratio"] = round(record["decode_tok_s_total"] / record["decode_floor_tok_s"], 4)


def add_compute_ceiling(record: dict, spec, lengths: list[tuple[int, int]]) -> None:
    """FLOPs per output token of the workload's (isl, osl) pairs, the ceiling and its ratio."""
    record["flops_per_output_token"] = round(floors.flops_per_output_token(spec.model, lengths))
    seconds_per_tflop = 1 / record["matmul_tflops"]
    if "matmul_fp8_tflops" in record:
        fp8 = record["flops_per_output_token_fp8"] = round(floors.flops_per_output_token(spec.model, lengths,
                                                                                        "block_linear"))
        rest = record["flops_per_output_token"] - fp8
        seconds_per_tflop = (fp8 / record["matmul_fp8_tflops"] + rest / record["matmul_tflops"]) \
            / record["flops_per_output_token"]
    record["compute_ceiling_tok_s"] = round(1e12 / seconds_per_tflop / record["flops_per_output_token"], 3)
    record["compute_ceiling_ratio"] = round(record["output_tok_s"] / record["compute_ceiling_tok_s"], 4)


def write(record: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(record, indent=2, default=str) + "\n")


def _commit() -> str:
    """$INGOT_COMMIT, else the HEAD of the git checkout ingot runs from (and whether it had changes)."""
    from ingot.envs import commit_override

    if (named := commit_override()) is not None:
        return named
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git; set INGOT_COMMIT)"
    if head.returncode != 0:
        return "unknown (not a git checkout; set INGOT_COMMIT)"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
