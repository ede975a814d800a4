"""Candidate build profiles for a machine, and the choice among them.

A profile is a set of `ingot build` flags (precision, envelope, parallel layout) with the figures
behind it. On a GPU the planner knows, each candidate envelope is planned by `make_plan` at the
GPU's native 16-bit precision: the planner picks the layout (the fewest GPUs that fit, the fastest
split among them) and prints the build command from the real `ingot build` parser; the profile is
that command's flags. On a CPU the planner has no figures (it models GPUs), so the profiles are
fp32 (what the builder runs on CPU) with modest envelopes, sized here: fp32 weights plus the KV
cache of the whole envelope must fit in CPU_MEMORY_SHARE of the RAM.

The first envelope of each list is the default; `choose_profile` takes it when it fits.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

from ingot.commands.build import make_build_parser
from ingot.errors import ConfigError
from ingot.plan.memory import Envelope
from ingot.plan.planner import DEFAULT_CONCURRENCY, DEFAULT_ISL, DEFAULT_OSL, make_plan
from ingot.plan.shapes import ModelShape

# (ISL, OSL, concurrent sequences); the first is the default, then long context, then many short.
GPU_ENVELOPES = ((DEFAULT_ISL, DEFAULT_OSL, DEFAULT_CONCURRENCY), (8192, 1024, 16), (1024, 256, 128))
# CPU decoding is compute-bound: past a few sequences a batch adds latency, not throughput.
CPU_ENVELOPES = ((1024, 1024, 8), (512, 256, 4), (2048, 2048, 16))
CPU_MEMORY_SHARE = 0.5  # of the host's RAM: the server, tokenizer and OS keep the rest


@dataclass(frozen=True)
class Profile:
    name: str  # from the flags: precision, layout, envelope ("bf16-tp1pp1-b64-i2048-s2560")
    flags: tuple[str, ...]  # `ingot build` flags after MODEL -o DIR; parse with make_build_parser
    fits: bool
    memory_gb: float  # per device: weights + KV for the whole envelope (+ activations and runtime on GPU)
    tok_s: float | None  # the planner's output tok/s at this envelope; None where it has no figure
    status: str  # the planner's verdict, or why there is no figure


def parse_flags(flags: tuple[str, ...]) -> argparse.Namespace:
    """A profile's flags read by the `ingot build` parser, as `ingot build` would read them."""
    return make_build_parser().parse_args(["MODEL", "-o", "OUT", *flags])


def profile_name(flags: tuple[str, ...]) -> str:
    a = parse_flags(flags)
    return (f"{a.dtype}-tp{a.tp}pp{a.pp}-b{a.max_batch_size}-i{a.max_input_len or 'auto'}"
            f"-s{a.max_seq_len or 'auto'}")


def model_shape(model: str) -> ModelShape:
    """The shapes of a checkpoint folder, .gguf file or preset (its config, not its weights)."""
    from ingot.builder.checkpoint import load_checkpoint

    return ModelShape.from_hf(load_checkpoint(model).hf_config, name=Path(model).name or model)


def candidate_profiles(shape: ModelShape, machine) -> list[Profile]:
    """One profile per envelope (clipped to the model's context), duplicates dropped, default first."""
    if machine.kind == "cpu":
        envelopes, make = CPU_ENVELOPES, _cpu_profile
    elif machine.gpu is None:
        return [_unknown_gpu_profile(machine)]
    else:
        envelopes, make = GPU_ENVELOPES, _gpu_profile
    profiles: dict[str, Profile] = {}
    for isl, osl, concurrency in envelopes:
        env = Envelope(*_clip(isl, osl, shape.max_position_embeddings), concurrency)
        profile = make(shape, machine, env)
        profiles.setdefault(profile.name, profile)
    return list(profiles.values())


def choose_profile(profiles: list[Profile], requested: str | None = None) -> tuple[Profile, str]:
    """(profile, why): the one asked for by name; else the default envelope when it fits; else the
    fitting one with the highest planner tok/s (the largest batch where there is no figure)."""
    if requested is not None:
        match = next((p for p in profiles if p.name == requested), None)
        if match is None:
            raise ConfigError(f"--profile {requested!r} is not a profile for this machine; choose one of "
                              f"{', '.join(p.name for p in profiles)} (`ingot profiles MODEL` lists them)")
        caveat = "" if match.fits else f" (the planner says: {match.status})"
        return match, f"asked for with --profile{caveat}"
    if profiles[0].fits:
        return profiles[0], "the default envelope, and it fits"
    fitting = [p for p in profiles if p.fits]
    if not fitting:
        verdicts = "; ".join(f"{p.name}: {p.status}" for p in profiles)
        raise ConfigError(f"no build profile fits this machine ({verdicts}); build one by hand with `ingot build` "
                          "(`ingot plan` sizes it) and serve the engine directory")
    best = max(fitting, key=lambda p: (p.tok_s or 0.0, parse_flags(p.flags).max_batch_size))
    return best, f"the default envelope does not fit ({profiles[0].status}); this is the fastest that does"


def _clip(isl: int, osl: int, max_positions: int) -> tuple[int, int]:
    """Shrink ISL and OSL in proportion so that ISL + OSL fits the model's context."""
    if isl + osl <= max_positions:
        return isl, osl
    osl = max(1, max_positions * osl // (isl + osl))
    return max_positions - osl, osl


def _envelope_flags(env: Envelope) -> list[str]:
    return ["--max-batch-size", str(env.concurrency), "--max-input-len", str(env.isl),
            "--max-seq-len", str(env.seq_len), "--max-num-tokens", str(env.max_num_tokens)]


def _cpu_profile(shape: ModelShape, machine, env: Envelope) -> Profile:
    flags = ("--dtype", "fp32", *_envelope_flags(env))
    need = shape.num_params * 4 + shape.kv_bytes_per_token(4) * env.concurrency * env.seq_len
    room = machine.memory_bytes * CPU_MEMORY_SHARE
    fits = need <= room
    status = (f"fp32 weights + KV for the envelope {'fit' if fits else 'do not fit'} in {room / 1e9:.1f} GB "
              f"({CPU_MEMORY_SHARE:.0%} of RAM)")
    return Profile(profile_name(flags), flags, fits, need / 1e9, None, status)


def _gpu_profile(shape: ModelShape, machine, env: Envelope) -> Profile:
    """The planner's recommendation at the GPU's native 16-bit precision, on at most machine.count GPUs."""
    gpu = machine.gpu
    precision = "bf16" if gpu.supports("bf16") else "fp16"
    plan = make_plan(shape, gpu.key, precision, isl=env.isl, osl=env.osl, concurrency=env.concurrency)
    layout = plan["recommendation"]["layout"]
    if layout is None or layout["num_gpus"] > machine.count:
        try:  # the best it can do on the GPUs present (KV-limited, or not even the weights)
            plan = make_plan(shape, gpu.key, precision, isl=env.isl, osl=env.osl, concurrency=env.concurrency,
                             num_gpus=machine.count)
        except ConfigError as exc:
            return _no_profile(precision, env, str(exc))
    rec = plan["recommendation"]
    layout, command = rec["layout"], rec["build_command"]
    if layout is None or command is None:
        return _no_profile(precision, env, rec["reason"] if layout is None else "; ".join(rec["build_notes"]))
    words = shlex.split(command)
    flags = tuple(words[words.index("-o") + 2:])
    gb = layout["memory_gb"]
    memory = gb["weights"] + gb["kv_envelope"] + gb["activations"] + gb["overhead"]
    tok_s = layout["perf"]["output_tok_s"] if layout["perf"] else None
    status = layout["status"] if layout["num_gpus"] <= machine.count else f"needs {layout['num_gpus']} GPUs"
    return Profile(profile_name(flags), flags, layout["fits"], round(memory, 2), tok_s, status)


def _no_profile(precision: str, env: Envelope, why: str) -> Profile:
    flags = ("--dtype", precision, *_envelope_flags(env))
    return Profile(profile_name(flags), flags, False, 0.0, None, why)


def _unknown_gpu_profile(machine) -> Profile:
    """A GPU the planner's table lacks: the builder's defaults (dtype auto, its envelope), no figures."""
    flags = ("--dtype", "auto")
    return Profile(profile_name(flags), flags, True, 0.0, None,
                   f"{machine.name} is not in the planner's GPU table: the builder's defaults, no figures")
