"""Calibration: run the model block by block on calibration text, so that methods which look at
what a layer is fed (AWQ, GPTQ) see it — through the blocks before it as already quantized.

    samples (token ids) ─▶ embed ─▶ block 0: capture its linear layers' inputs ─▶ quantize it
                                  ─▶ block 0 again, quantized ─▶ block 1: capture ... ─▶ ...

Each sample is one sequence run alone through a block with its own small KV cache (the torch
attention backend), on the build device. Only the decoder blocks are visited; the embedding, the
final norm and the lm_head are not quantized.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ingot.attention import AttentionMetadata, get_backend
from ingot.errors import ConfigError

DEFAULT_CALIB_SIZE = 128
DEFAULT_CALIB_SEQ_LEN = 512
MAX_KEPT_TOKENS = 8192  # inputs a layer keeps for searches over them (AWQ); Hessians use every token


@dataclass
class CalibrationSet:
    samples: list[list[int]]  # each a sequence of seq_len token ids
    source: str  # what they came from: "FILE (sha256 ...)" or "random token ids (seed 0)"

    def describe(self) -> dict:
        return {"source": self.source, "num_samples": len(self.samples),
                "seq_len": len(self.samples[0]) if self.samples else 0}


def text_samples(path: str | Path, tokenizer, num_samples: int, seq_len: int) -> CalibrationSet:
    """Consecutive windows of seq_len tokens from the start of the text (as many as it holds, up to num_samples)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--calib-data {path}: no such file")
    data = file.read_bytes()
    ids = tokenizer.encode(data.decode("utf-8", errors="replace"))
    count = min(num_samples, len(ids) // seq_len)
    if count == 0:
        raise ConfigError(f"--calib-data {path} holds {len(ids)} tokens, fewer than one sample of --calib-seq-len "
                          f"{seq_len}; give a longer text or a shorter --calib-seq-len")
    samples = [ids[i * seq_len:(i + 1) * seq_len] for i in range(count)]
    return CalibrationSet(samples, f"{file.name} (sha256 {hashlib.sha256(data).hexdigest()[:16]})")


def random_samples(vocab_size: int, num_samples: int, seq_len: int, seed: int = 0) -> CalibrationSet:
    """For engines with random weights (--load-format dummy): the machinery, not the accuracy, matters."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (num_samples, seq_len), generator=generator).tolist()
    return CalibrationSet(ids, f"random token ids (seed {seed})")


@dataclass
class LinearInputs:
    """What one linear layer was fed over the calibration samples."""

    hessian: torch.Tensor | None = None  # (K, K) float32: sum of 2 x^T x, divided by `tokens`
    kept: list[torch.Tensor] = field(default_factory=list)  # up to MAX_KEPT_TOKENS rows of x, float32
    tokens: int = 0

    def add(self, x: torch.Tensor, want_hessian: bool) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if want_hessian:
            update = 2 * x.T @ x
            total = self.tokens + x.shape[0]
            self.hessian = update / total if self.hessian is None else \
                self.hessian * (self.tokens / total) + update / total
        room = MAX_KEPT_TOKENS - sum(t.shape[0] for t in self.kept)
        if room > 0:
            self.kept.append(x[:room])
        self.tokens += x.shape[0]

    @property
    def x(self) -> torch.Tensor:
        return torch.cat(self.kept)


class BlockRunner:
    """Runs the decoder blocks of a single-rank, unquantized model on the calibration samples."""

    def __init__(self, model: torch.nn.Module, samples: list[list[int]], device: torch.device) -> None:
        self.model, self.device = model, device
        self.backend = get_backend("torch")
        self.positions = [torch.arange(len(s), device=device) for s in samples]
        with torch.inference_mode():
            self.states = [(model.embed_tokens(torch.tensor(s, device=device)), None) for s in samples]

    def capture(self, block: torch.nn.Module, names: list[str], want_hessian: bool) -> dict[str, LinearInputs]:
        """Run the block on every sample, recording the inputs of its linear layers `names`."""
        inputs = {name: LinearInputs() for name in names}
        hooks = [block.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: inputs[name].add(args[0], want_hessian)) for name in names]
        try:
            for (hidden, residual), positions in zip(self.states, self.positions):
                self._run(block, hidden, residual, positions)
        finally:
            for hook in hooks:
                hook.remove()
        return inputs

    def advance(self, block: torch.nn.Module) -> None:
        """The samples' states after this block (as it is now: quantized), the next block's inputs."""
        self.states = [self._run(block, hidden, residual, positions)
                       for (hidden, residual), positions in zip(self.states, self.positions)]

    @torch.inference_mode()
    def _run(self, block, hidden, residual, positions):
        tokens = len(positions)
        attention = block.self_attn
        cache = torch.zeros((2, 2, tokens, attention.num_kv_heads, attention.head_dim), dtype=hidden.dtype,
                            device=self.device)
        meta = AttentionMetadata(
            query_start_loc=torch.tensor([0, tokens], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([tokens], dtype=torch.int32, device=self.device),
            block_tables=torch.tensor([[1]], dtype=torch.int32, device=self.device),
            slot_mapping=torch.arange(tokens, 2 * tokens, device=self.device),
            query_start_loc_cpu=[0, tokens], seq_lens_cpu=[tokens], max_query_len=tokens, max_seq_len=tokens)
        attention.backend = self.backend  # the reference backend: one sequence, any device
        return block(positions, hidden, residual, cache, meta)


def quantize_blocks(runner: BlockRunner, blocks: dict[str, torch.nn.Module],
                    quantize_block: Callable[[str, torch.nn.Module], None], what: str) -> None:
    """For each block in order: quantize it (the callback captures what it needs), then move the samples through it."""
    from tqdm import tqdm

    for index, block in tqdm(blocks.items(), desc=what, unit="layer"):
        quantize_block(index, block)
        runner.advance(block)


@dataclass
class QuantizeContext:
    """What a calibrating method gets from the builder."""

    spec: object  # the EngineSpec being built
    device: torch.device
    calibration: CalibrationSet

    @property
    def dtype(self) -> torch.dtype:
        """The engine's dtype: stored scales use it."""
        from ingot.engine_format import torch_dtype

        return torch_dtype(self.spec.dtype)

    def float_model(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The whole model (one rank, unquantized) in float32 on the build device, holding `weights`."""
        import dataclasses

        from ingot.config import QuantConfig
        from ingot.models import create_model
        from ingot.parallel.mapping import ParallelMapping

        spec = dataclasses.replace(self.spec, dtype="fp32", quant=QuantConfig(),
                                   mapping=ParallelMapping.build(self.spec.model))
        model = create_model(spec, self._backend(), device=self.device)
        model.load_state_dict({name: tensor.float() for name, tensor in weights.items()})
        model.rotary.reset_cache(self.device)
        return model.eval()

    def engine_model(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The whole model (one rank) as the engine stores it, in its dtype and quantization (a KV cache
        in the model dtype), on the build device, holding `weights`: the quantize stage's output."""
        import dataclasses

        from ingot.models import create_model
        from ingot.parallel.mapping import ParallelMapping

        spec = dataclasses.replace(self.spec, quant=dataclasses.replace(self.spec.quant, kv_cache_dtype="auto"),
                                   mapping=ParallelMapping.build(self.spec.model))
        model = create_model(spec, self._backend(), device=self.device)
        model.load_state_dict(weights)
        for module in model.modules():
            if hasattr(module, "process_after_load"):
                module.process_after_load()
        model.rotary.reset_cache(self.device)
        return model.eval()

    @staticmethod
    def _backend():
        return get_backend("torch")
