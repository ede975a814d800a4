"""Which rank owns what: the parallel mapping an engine is built for and records.

Ranks are numbered stage by stage, tensor-parallel ranks contiguous inside a stage (they
talk every layer, so they belong in one NVLink domain; stages talk once per step):

    tp = 2, pp = 2, 6 layers        rank = pp_rank * tp + tp_rank
        stage 0: rank 0, rank 1     layers [0, 3)   embedding
        stage 1: rank 2, rank 3     layers [3, 6)   final norm, lm_head

Inside a stage, each tensor-parallel rank holds its slice of every layer (see
ingot/layers/linear.py for how each weight is cut). Expert parallelism groups the tp ranks
further for mixture-of-experts layers; dense models keep ep = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingot.config import ModelConfig, ParallelConfig
from ingot.errors import ConfigError


@dataclass(frozen=True)
class RankLayout:
    """What one rank holds."""

    rank: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    layers: tuple[int, int]  # [first, end): the decoder layers this rank's stage owns

    @property
    def is_first_stage(self) -> bool:
        """Holds the token embedding."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """Holds the final norm and the lm_head."""
        return self.pp_rank == self.pp_size - 1

    @property
    def layer_ids(self) -> range:
        return range(*self.layers)

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "tp_rank": self.tp_rank, "pp_rank": self.pp_rank,
                "layers": list(self.layers), "experts": None}

    @classmethod
    def single(cls, num_layers: int) -> "RankLayout":
        """The whole model on one rank."""
        return cls(0, 0, 1, 0, 1, (0, num_layers))


@dataclass(frozen=True)
class ParallelMapping:
    config: ParallelConfig
    ranks: tuple[RankLayout, ...]

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    @classmethod
    def build(cls, model: ModelConfig, config: ParallelConfig | None = None) -> "ParallelMapping":
        """Check that the model can be split this way and assign layers to stages."""
        config = config or ParallelConfig()
        check_divisible(model, config)
        stage_layers = config.pp_layers or even_split(model.num_layers, config.pp)
        if sum(stage_layers) != model.num_layers:
            raise ConfigError(f"parallel config: pp_layers={list(stage_layers)} sum to {sum(stage_layers)}, "
                              f"the model has {model.num_layers} layers")
        starts = [sum(stage_layers[:i]) for i in range(config.pp)]
        ranks = tuple(RankLayout(pp * config.tp + tp, tp, config.tp, pp, config.pp,
                                 (starts[pp], starts[pp] + stage_layers[pp]))
                      for pp in range(config.pp) for tp in range(config.tp))
        return cls(config, ranks)

    def to_dict(self) -> dict[str, Any]:
        return {**self.config.to_dict(), "world_size": self.world_size, "ranks": [r.to_dict() for r in self.ranks]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ParallelMapping":
        config = ParallelConfig.from_dict(data)
        ranks = tuple(RankLayout(r["rank"], r["tp_rank"], config.tp, r["pp_rank"], config.pp, tuple(r["layers"]))
                      for r in data["ranks"])
        return cls(config, ranks)


def even_split(num_layers: int, stages: int) -> tuple[int, ...]:
    """As even as possible; the earlier stages take the remainder (the last stage also runs the lm_head)."""
    base, extra = divmod(num_layers, stages)
    return tuple(base + (1 if stage < extra else 0) for stage in range(stages))


def check_divisible(model: ModelConfig, config: ParallelConfig) -> None:
    """Refuse a layout the model cannot take, naming the numbers."""
    tp, pp = config.tp, config.pp
    problems = []
    if model.num_heads % tp:
        problems.append(f"num_attention_heads={model.num_heads} is not divisible by tp={tp}")
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        problems.append(f"num_key_value_heads={model.num_kv_heads} and tp={tp}: one must divide the other "
                        "(KV heads are split, or replicated when ranks outnumber them)")
    if model.intermediate_size % tp:
        problems.append(f"intermediate_size={model.intermediate_size} is not divisible by tp={tp}")
    if pp > model.num_layers:
        problems.append(f"pp={pp} stages for {model.num_layers} layers: a stage needs at least one layer")
    if config.ep > 1:
        problems.append(f"ep={config.ep}: {model.architecture} has no experts to split; use ep=1")
    if problems:
        raise ConfigError(f"cannot split {model.architecture} as tp={tp} pp={pp} ep={config.ep}: "
                          + "; ".join(problems))


def kv_heads_per_rank(num_kv_heads: int, tp_size: int) -> int:
    """KV heads each rank holds: a share when they divide evenly, else one (replicated)."""
    return max(num_kv_heads // tp_size, 1)


def kv_head_start(num_kv_heads: int, tp_size: int, tp_rank: int) -> int:
    """First KV head of a rank; with more ranks than KV heads, tp_size // num_kv_heads
    consecutive ranks share (replicate) one head, so their query heads find it."""
    if tp_size <= num_kv_heads:
        return tp_rank * (num_kv_heads // tp_size)
    return tp_rank // (tp_size // num_kv_heads)
