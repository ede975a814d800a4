"""Build an engine: checkpoint -> engine directory, through the stages of ingot/builder/stages.py.

The engine is assembled in a hidden temporary directory beside the target and renamed into
place only when complete, so a failed or interrupted build never leaves a directory that
looks like an engine.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import uuid
from pathlib import Path

import torch

from ingot.builder import stages
from ingot.builder.checkpoint import load_checkpoint
from ingot.builder.quantized_checkpoints import detect as detect_quantized
from ingot.builder.dummy import check_tokenizer_fits, dummy_tensors, read_config_json
from ingot.builder.dummy import tokenizer_files as dummy_tokenizer_files
from ingot.builder.tuning import tune_tactics
from ingot.config import BuildConfig, ModelConfig, ParallelConfig, QuantConfig, SpeculativeConfig
from ingot.engine_format import (ENGINE_JSON, EngineSpec, current_device, software_versions, torch_dtype,
                                 write_spec)
from ingot.errors import CheckpointError, ConfigError, EngineError
from ingot.integrity import file_checksum
from ingot.models import check_architecture, create_model
from ingot.parallel.mapping import ParallelMapping
from ingot.quantization import make_scheme
from ingot.quantization.kv_cache import add_kv_scales, route_calibration

# Stage lines at INFO: `ingot serve CHECKPOINT` shows them while it builds.
logger = logging.getLogger("ingot.build")

LOAD_FORMATS = ("auto", "dummy")
DUMMY_WEIGHTS = ("file", "at_load")  # --load-format dummy: random weights written, or generated at load
DUMMY_SEED = 0


def resolve_dtype(requested: str, checkpoint_dtype: str, device_kind: str) -> str:
    """auto: bf16 on CUDA (fp16 if the checkpoint is fp16), fp32 on CPU where bf16 matmuls are slow."""
    if requested != "auto":
        return requested
    if device_kind == "cpu":
        return "fp32"
    return "fp16" if checkpoint_dtype == "fp16" else "bf16"


def build_engine(model: str, output_dir: str | Path, build_config: BuildConfig | None = None,
                 device: str | None = None, load_format: str = "auto", parallel: ParallelConfig | None = None,
                 quant: QuantConfig | None = None, speculative: SpeculativeConfig | None = None,
                 tokenizer: str | Path | None = None, dummy_weights: str = "file") -> EngineSpec:
    """Build MODEL (checkpoint folder, .gguf file or preset name; with load_format="dummy", a
    config.json whose shapes get random weights, and the `tokenizer` file or folder if given) into
    output_dir, one weight file per rank of `parallel`, stored as `quant` says, drafting as
    `speculative` says. With load_format="dummy" and dummy_weights="at_load" no weight is written:
    the loader generates them from the seed engine.json records (ingot/runtime/generated_weights.py)."""
    started = time.perf_counter()
    build_config, quant = build_config or BuildConfig(), quant or QuantConfig()
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    if load_format not in LOAD_FORMATS:
        raise ConfigError(f"load_format={load_format!r} is unknown; use one of {', '.join(LOAD_FORMATS)}")
    _check_dummy_weights(dummy_weights, load_format)
    if tokenizer is not None and load_format != "dummy":
        raise ConfigError(f"--tokenizer is for --load-format dummy builds; {model} is a checkpoint, which brings "
                          "its own tokenizer (the engine's ids must be the weights' ids): drop --tokenizer")
    logger.info("build %s: reading the checkpoint", model)
    checkpoint = None if load_format == "dummy" else load_checkpoint(model)
    hf_config = read_config_json(model) if checkpoint is None else checkpoint.hf_config
    tokenizer_files = _tokenizer_files(checkpoint, tokenizer, hf_config)
    model_config = model_config_of(hf_config, str(model))
    requested = quant
    imported = detect_quantized(hf_config, str(model)) if checkpoint is not None else None
    if imported is not None:
        if quant.method != "none":
            raise ConfigError(f"{model} is quantized already ({imported.describe()}); "
                              f"build it without --quant {quant.method}: ingot reads its weights as they are")
        quant = imported.quant_config()
    quant, calibration = route_calibration(requested, quant)
    build_config = build_config.resolved(model_config)
    mapping = ParallelMapping.build(model_config, parallel)
    make_scheme(quant).check_layout(model_config, mapping.config.tp)
    target = current_device(device)
    dtype = resolve_dtype(build_config.dtype, model_config.checkpoint_dtype, target.kind)
    spec = EngineSpec(model=model_config, build=build_config, dtype=dtype, target=target, mapping=mapping,
                      quant=quant, speculative=speculative or SpeculativeConfig(), versions=software_versions(),
                      source=str(model), load_format=load_format,
                      tokenizer_source=str(Path(tokenizer).expanduser().resolve()) if tokenizer is not None else "",
                      dummy_seed=DUMMY_SEED if dummy_weights == "at_load" else None)
    staging = output_dir.parent / f".{output_dir.name}.building-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for name, content in tokenizer_files.items():
            (staging / name).write_bytes(content)
        if spec.tokenizer_source:
            check_tokenizer_fits(staging, model_config.vocab_size, str(tokenizer))
        scheme = make_scheme(spec.quant)
        logger.info("build %s: writing %s weights (%s, %d rank(s))", model, dtype, quant.method, spec.world_size)
        if getattr(scheme, "needs_calibration", False) and spec.dummy_seed is not None:
            raise ConfigError(f"--dummy-weights at_load generates the weights at load, where nothing calibrates: "
                              f"--quant {quant.method} with these settings calibrates on a text; use "
                              "--dummy-weights file, or a scheme that needs no calibration (fp8 per_channel, int4_rtn)")
        if quant.kv_cache_calibrates and spec.dummy_seed is not None:
            raise ConfigError("--dummy-weights at_load generates the weights at load, where nothing calibrates: "
                              "--kv-cache-dtype fp8 calibrates its scales on a text; add --kv-cache-scales unit")
        weights_calibrate = getattr(scheme, "needs_calibration", False)
        context = _quantize_context(spec, staging, calibration) \
            if weights_calibrate or quant.kv_cache_calibrates else None
        if spec.dummy_seed is None:
            stored = scheme.quantize(_engine_tensors(spec, checkpoint, imported), context if weights_calibrate else None)
            if quant.kv_cache_fp8:
                stored = add_kv_scales(stored, spec, context)
            stages.write(staging, stages.shard(stored, _rank_models(spec)))
        if context is not None:  # engine.json records what the scales were calibrated on
            spec = dataclasses.replace(spec, quant=_record_calibration(spec.quant, context.calibration.describe(),
                                                                       weights_calibrate))
        logger.info("build %s: tuning kernel tactics for %s", model, target.describe())
        tactics, tactic_timings = tune_tactics(model_config, build_config, torch_dtype(dtype), target, mapping.config.tp,
                                               scheme)
        checksums = {f.name: file_checksum(f) for f in sorted(staging.glob("rank*.safetensors"))}
        spec = dataclasses.replace(spec, tactics=tactics, tactic_timings=tactic_timings, checksums=checksums,
                                   build_seconds=time.perf_counter() - started)
        write_spec(staging, spec)  # last: engine.json marks a complete engine
        _move_into_place(staging, output_dir)
        logger.info("build %s: done in %.1f s", model, spec.build_seconds)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spec


def _check_dummy_weights(dummy_weights: str, load_format: str) -> None:
    if dummy_weights not in DUMMY_WEIGHTS:
        raise ConfigError(f"--dummy-weights {dummy_weights} is unknown; use one of {', '.join(DUMMY_WEIGHTS)}")
    if dummy_weights == "at_load" and load_format != "dummy":
        raise ConfigError("--dummy-weights at_load is for --load-format dummy builds (random weights); "
                          "a checkpoint's weights are written to the engine: drop --dummy-weights")


def _tokenizer_files(checkpoint, tokenizer: str | Path | None, hf_config: dict) -> dict[str, bytes]:
    """The checkpoint's tokenizer files, or those --tokenizer names for random weights, or none."""
    if checkpoint is not None:
        return checkpoint.tokenizer_files
    return dummy_tokenizer_files(tokenizer, hf_config) if tokenizer is not None else {}


def _engine_tensors(spec: EngineSpec, checkpoint, imported=None) -> stages.Tensors:
    """read -> convert -> check_and_cast: the whole model's tensors, unsliced, in the model dtype
    (the quantize stage follows), or, from a checkpoint quantized already, in ingot's INT4 or FP8 layout."""
    layout = full_layout(spec, quantized=imported is not None)
    if checkpoint is None:
        device = "cuda" if spec.target.kind == "cuda" else "cpu"  # random numbers are fast on a GPU
        tensors = dummy_tensors({name: shape for name, (shape, _) in layout.items()}, torch_dtype(spec.dtype), device)
    else:
        source_tensors = checkpoint.tensors()
        if imported is not None:
            source_tensors = imported.import_tensors(source_tensors)
        tensors = stages.convert(spec.model, source_tensors, spec.source)
    return stages.check_and_cast(tensors, layout, spec.source, spec.model.architecture)


def _record_calibration(quant: QuantConfig, described: dict, weights_calibrated: bool) -> QuantConfig:
    """The calibration set, in the record of each part it calibrated: the weights' and the KV cache's."""
    if weights_calibrated:
        quant = dataclasses.replace(quant, params={**quant.params, "calibration": described})
    return dataclasses.replace(quant, kv_cache_calibration=described) if quant.kv_cache_calibrates else quant


def _quantize_context(spec: EngineSpec, staging: Path, params: dict):
    """Calibration samples for AWQ / GPTQ / FP8 static scales / the FP8 KV cache's scales: windows of
    --calib-data (params: the calibration flags) read with the engine's tokenizer, or random token ids
    for an engine of random weights."""
    from ingot.quantization import calibration as calib

    size = int(params.get("calib_size", calib.DEFAULT_CALIB_SIZE))
    seq_len = int(params.get("calib_seq_len", calib.DEFAULT_CALIB_SEQ_LEN))
    if spec.load_format == "dummy":
        samples = calib.random_samples(spec.model.vocab_size, size, seq_len)
    elif params.get("calib_data"):
        from ingot.tokenizer import Tokenizer

        samples = calib.text_samples(params["calib_data"], Tokenizer.from_dir(staging), size, seq_len)
    elif not getattr(make_scheme(spec.quant), "needs_calibration", False):
        raise ConfigError("--kv-cache-dtype fp8 calibrates its K and V scales on a text: pass --calib-data FILE "
                          "(a few hundred kB of text like what the model will serve), or --kv-cache-scales unit "
                          "for scales of 1.0")
    else:
        what = f"--quant {spec.quant.method}" + (" --fp8-scaling per_tensor" if spec.quant.method == "fp8" else "")
        raise ConfigError(f"{what} calibrates on a text: pass --calib-data FILE "
                          "(a few hundred kB of text like what the model will serve)")
    device = torch.device("cuda" if spec.target.kind == "cuda" else "cpu")
    return calib.QuantizeContext(spec, device, samples)


def full_layout(spec: EngineSpec, quantized: bool = False) -> stages.Layout:
    """Engine name -> (shape, dtype) of every tensor of the whole model (single rank): unquantized,
    or as the engine's quantization stores it."""
    stored = dataclasses.replace(spec.quant, kv_cache_dtype="auto")  # kv scales come after this layout's stages
    single = EngineSpec(spec.model, spec.build, spec.dtype, spec.target, ParallelMapping.build(spec.model),
                        quant=stored if quantized else QuantConfig())
    model = create_model(single, _meta_backend())
    return {name: (tuple(p.shape), p.dtype) for name, p in model.state_dict().items()}


def _rank_models(spec: EngineSpec) -> list[torch.nn.Module]:
    """Each rank's model on the meta device: what the shard stage cuts for (no memory)."""
    return [create_model(spec, _meta_backend(), rank.rank) for rank in spec.mapping.ranks]


def _meta_backend():
    from ingot.attention import get_backend

    return get_backend("torch")


def model_config_of(hf_config: dict, source: str) -> ModelConfig:
    archs = hf_config.get("architectures") or ["<none>"]
    check_architecture(archs[0])
    try:
        return ModelConfig.from_hf(hf_config)
    except KeyError as exc:
        raise CheckpointError(f"{source}: config.json lacks the field {exc}") from exc


def _check_output_dir(output_dir: Path) -> None:
    """Replace an earlier engine, but never clobber a directory that holds something else."""
    if output_dir.exists() and not (output_dir / ENGINE_JSON).is_file() and any(output_dir.iterdir()):
        raise EngineError(f"output directory {output_dir} exists and is not an engine; "
                          "choose another -o or empty it")


def _move_into_place(staging: Path, output_dir: Path) -> None:
    if output_dir.exists():
        retired = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        output_dir.rename(retired)
        staging.rename(output_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output_dir)
