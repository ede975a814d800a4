"""The `ingot build` line for a plan, made only of flags the real `ingot build` parser has.

A model whose architecture `ingot build` does not build (its model registry, ingot.models)
gets no command, whatever the layout: a note names the architectures it builds. For the rest,
a plan can ask for more than ingot builds today: quantized weights, an FP8 KV cache, EP for a
mixture of experts. Every flag and its value are checked against the parser `ingot build`
itself uses (ingot.commands.build.make_build_parser), so every printed command parses. What
the parser lacks is left out and a note says what the command builds instead, as
precisions.execution_on notes what a GPU lacks; a layout of several GPUs the parser cannot
express gets no command at all. When an architecture lands in the registry or a flag in that
parser, the planner prints it.

    ingot build MODEL -o engines/NAME --dtype D [--quant Q] [--calib-data ./calibration.txt]
                [--kv-cache-dtype K] [--tp T] [--pp P] [--ep E] --max-batch-size B --max-input-len I ...

--calib-data appears when the quantization method or an fp8 KV cache (its per-layer scales)
calibrates on a text.

--tp, --pp and --ep appear only above 1, their default: a one-GPU command stays short.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from pathlib import Path

from ingot.commands.build import make_build_parser
from ingot.config import BuildConfig
from ingot.models import supported_architectures
from ingot.plan.gpus import GPU
from ingot.plan.memory import Envelope, Layout, kv_dtype_bytes, memory_per_gpu, total_weight_bytes
from ingot.plan.precisions import PRECISIONS, Precision
from ingot.plan.shapes import ModelShape

# MODEL when the plan names no checkpoint: an engine directory that records none to rebuild from.
CHECKPOINT_PLACEHOLDER = "CHECKPOINT_DIR"
# --calib-data of a calibrating method (AWQ, GPTQ): a text the user puts there first.
CALIB_FILE = "./calibration.txt"
# What `ingot build` reads of it by default (--calib-size, --calib-seq-len): the values of
# ingot/quantization/calibration.py, which imports torch, so they are repeated here.
CALIB_SIZE, CALIB_SEQ_LEN = 128, 512


@dataclass(frozen=True)
class BuildCommand:
    command: str | None  # None: `ingot build` cannot build this model or layout yet; the notes say why
    notes: tuple[str, ...]  # what to do before running it, and where it builds less than the plan


def build_parser() -> argparse.ArgumentParser:
    """The parser that bounds every printed command; the one place tests swap in a future one."""
    return make_build_parser()


def buildable_architectures() -> set[str]:
    """The architectures `ingot build` builds, from its model registry; tests swap in more here."""
    return set(supported_architectures())


class BuildFlags:
    """The option flags of a parser and the values each takes (None: any value)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        # argparse offers no public list of its actions; _actions has been stable since 2.7.
        self._values = {flag: None if action.choices is None else {str(c) for c in action.choices}
                        for action in parser._actions for flag in action.option_strings}

    def accepts(self, flag: str, value: str) -> bool:
        if flag not in self._values:
            return False
        allowed = self._values[flag]
        return allowed is None or value in allowed

    def option(self, flag: str, value: str) -> list[str]:
        """[flag, value] when the parser takes them, else []."""
        return [flag, value] if self.accepts(flag, value) else []


def build_command(shape: ModelShape, precision: Precision, kv_dtype: str, layout: Layout, env: Envelope,
                  gpu: GPU) -> BuildCommand:
    """The command for `layout`, or none and a note when `ingot build` cannot build the model or
    express the layout. The architecture comes first: no flag matters for a model it cannot build."""
    unbuildable = _architecture_note(shape.architecture)
    if unbuildable:
        return BuildCommand(None, (unbuildable,))
    flags = BuildFlags(build_parser())
    quant = flags.option("--quant", precision.quant) if precision.quant else []
    parallel, lacking = _parallel_words(flags, layout)
    if lacking:
        return BuildCommand(None, (_no_command_note(precision, layout, gpu, lacking, quant),))
    built = precision if quant or not precision.quant else PRECISIONS[precision.act_dtype]
    kv = flags.option("--kv-cache-dtype", kv_dtype) if kv_dtype != precision.act_dtype else []
    built_kv = kv_dtype if kv or kv_dtype == precision.act_dtype else precision.act_dtype
    calibrating = [*([f"--quant {precision.quant} fits its scales to what each layer is fed on it"]
                     if quant and precision.calibrates else []),
                   *(["--kv-cache-dtype fp8 sets each layer's K and V scales from the largest it computes on it "
                      "(--kv-cache-scales unit instead needs no text: scales of 1.0)"] if kv and kv_dtype == "fp8" else [])]
    calib = _calibration_words(flags) if calibrating else []
    dtype, *envelope = _settings(precision, env)
    model, notes = _model_argument(shape)
    notes += [_calibration_note(calibrating)] if calib else []
    out = f"engines/{shape.name.lower()}-{built.name}-tp{layout.tp}pp{layout.pp}"
    words = ["ingot", "build", model, "-o", out, *flags.option(*dtype), *quant, *calib, *kv, *parallel,
             *(word for setting in envelope for word in flags.option(*setting))]
    notes += _fallback_notes(shape, precision, built, kv_dtype, built_kv, layout, env, gpu)
    notes += [f"`ingot build` has no `{flag} {value}`: the engine takes its default"
              for flag, value in (dtype, *envelope) if not flags.accepts(flag, value)]
    return BuildCommand(shlex.join(words), tuple(notes))


def _calibration_words(flags: BuildFlags) -> list[str]:
    """--calib-data, for a method or an fp8 KV cache that calibrates, when the parser takes it. Every
    printed command reads a real checkpoint (the planner never prints --load-format dummy, under which
    `ingot build` calibrates on random token ids), and on one such a build refuses to run without it."""
    return flags.option("--calib-data", CALIB_FILE)


def _calibration_note(calibrating: list[str]) -> str:
    """What --calib-data needs (`calibrating`: what each part that calibrates does with it): the builder
    reads the first CALIB_SIZE windows of CALIB_SEQ_LEN tokens."""
    tokens = CALIB_SIZE * CALIB_SEQ_LEN
    return (f"put a few hundred kB of text like what the model will serve (its language, chat or code) in "
            f"{CALIB_FILE} first: {'; '.join(calibrating)}; "
            f"the first part is read, {CALIB_SIZE} samples of {CALIB_SEQ_LEN} tokens by default ({tokens:,} "
            f"tokens, about {tokens * 4 // 1000} kB of English at ~4 characters a token; --calib-size, "
            "--calib-seq-len)")


def _settings(precision: Precision, env: Envelope) -> list[tuple[str, str]]:
    """--dtype, then the envelope; BuildConfig validates them as `ingot build` will."""
    build = BuildConfig(dtype=precision.act_dtype, max_batch_size=env.concurrency, max_input_len=env.isl,
                        max_seq_len=env.seq_len, max_num_tokens=env.max_num_tokens)
    return [("--dtype", build.dtype), ("--max-batch-size", str(build.max_batch_size)),
            ("--max-input-len", str(build.max_input_len)), ("--max-seq-len", str(build.max_seq_len)),
            ("--max-num-tokens", str(build.max_num_tokens))]


def _fallback_notes(shape: ModelShape, precision: Precision, built: Precision, kv_dtype: str, built_kv: str,
                    layout: Layout, env: Envelope, gpu: GPU) -> list[str]:
    """Where the command builds less than the plan sized (weights, KV), and whether it still fits."""
    notes = []
    if built is not precision:
        notes.append(f"`ingot build` has no `--quant {precision.quant}` yet, so this command builds "
                     f"{built.name} weights: {total_weight_bytes(shape, built) / 1e9:.1f} GB instead of "
                     f"{total_weight_bytes(shape, precision) / 1e9:.1f} GB in {precision.name}")
    if built_kv != kv_dtype:
        notes.append(f"`ingot build` has no `--kv-cache-dtype {kv_dtype}` yet, so the KV cache is stored in "
                     f"the activation dtype, {built_kv} ({kv_dtype_bytes(built_kv):g} bytes per element "
                     f"instead of {kv_dtype_bytes(kv_dtype):g})")
    if notes:
        notes.append(_fit_note(shape, built, built_kv, layout, env, gpu))
    return notes


def _architecture_note(architecture: str) -> str | None:
    """Why there is no command when `ingot build` has no model for `architecture`, else None."""
    buildable = buildable_architectures()
    if architecture in buildable:
        return None
    return (f"`ingot build` does not build {architecture} yet (it builds {', '.join(sorted(buildable))}), "
            "so there is no command to print")


def _parallel_words(flags: BuildFlags, layout: Layout) -> tuple[list[str], list[str]]:
    """(--tp/--pp/--ep words the parser takes, the ones it lacks), each only above 1. A size of 1
    is `ingot build`'s default (one rank, one stage, experts sliced), so leaving it out loses
    nothing, even where the parser has no such flag."""
    wanted = _parallel_sizes(layout)
    words = [word for flag, n in wanted for word in flags.option(flag, str(n))]
    lacking = [f"{flag} {n}" for flag, n in wanted if not flags.accepts(flag, str(n))]
    return words, lacking


def _parallel_sizes(layout: Layout) -> list[tuple[str, int]]:
    """The layout's parallel flags that differ from the default of 1."""
    return [(flag, n) for flag, n in (("--tp", layout.tp), ("--pp", layout.pp), ("--ep", layout.ep)) if n > 1]


def _no_command_note(precision: Precision, layout: Layout, gpu: GPU, lacking: list[str], quant: list[str]) -> str:
    """Every flag the layout needs, which of them (and of --quant) `ingot build` lacks, and what to try."""
    needed = " ".join(f"{flag} {n}" for flag, n in _parallel_sizes(layout))
    note = (f"{layout.name} needs `{needed}`; `ingot build` does not offer "
            f"{', '.join(f'`{w}`' for w in lacking)} yet")
    if precision.quant and not quant:
        note += f", nor the plan's `--quant {precision.quant}`"
    return note + f", so there is no command to print; plan for 1 GPU (--num-gpus 1) to see what one {gpu.name} holds"


def _model_argument(shape: ModelShape) -> tuple[str, list[str]]:
    """MODEL as `ingot build` takes it (a local folder, .gguf file or preset, never a hub id),
    and what to do first."""
    if shape.checkpoint_path:
        return shape.checkpoint_path, _checkpoint_notes(Path(shape.checkpoint_path))
    if shape.hf_id:
        folder = "./" + shape.hf_id.rstrip("/").rsplit("/", 1)[-1]
        return folder, [f"download {shape.hf_id} into {folder} first (e.g. `hf download "
                        f"{shape.hf_id} --local-dir {folder}`)"]
    return CHECKPOINT_PLACEHOLDER, [f"replace {CHECKPOINT_PLACEHOLDER} with a checkpoint folder of {shape.name}: "
                                    "its engine.json names none to rebuild from (no source, or random weights "
                                    "from --load-format dummy)"]


def _checkpoint_notes(path: Path) -> list[str]:
    """A folder --model named may hold only a config; `ingot build` needs the weights too."""
    if not path.is_dir() or ((path / "config.json").is_file() and any(path.glob("*.safetensors"))):
        return []
    return [f"{path} is not a whole checkpoint yet: `ingot build` reads config.json, *.safetensors and "
            "tokenizer.json from it; put them there first"]


def _fit_note(shape: ModelShape, built: Precision, kv_dtype: str, layout: Layout, env: Envelope, gpu: GPU) -> str:
    """Whether what the command builds (not what the plan sized) still fits the layout."""
    m = memory_per_gpu(shape, built, kv_dtype, layout, env, gpu.memory_bytes)
    built_as = f"as built ({built.name} weights, {kv_dtype} KV cache), the engine"
    where = f"{layout.name} on {gpu.name}"
    if m.fits:
        return f"{built_as} still fits {where} with KV for all {env.concurrency} requests"
    if m.fits_weights and m.max_concurrency > 0:
        return (f"{built_as} fits {where} with KV for only {m.max_concurrency} of {env.concurrency} "
                "concurrent requests")
    if m.fits_weights:
        return f"{built_as} holds its weights on {where} but has no KV room for one request of {env.seq_len:,} tokens"
    return (f"{built_as} does not fit {where}: {m.weights / 1e9:.1f} GB of weights per GPU plus activations "
            f"and runtime exceed {m.capacity / 1e9:.1f} GB")
