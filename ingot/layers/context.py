"""What every layer needs to know at construction beyond the model's shape: which rank it is
built for (its tensor-parallel slice, its stage's layers), the precision scheme that
gives each linear layer its method, and what the KV cache stores."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingot.parallel.mapping import RankLayout
from ingot.quantization import make_scheme
from ingot.quantization.base import LinearMethod, QuantScheme


@dataclass(frozen=True)
class LayerContext:
    rank: RankLayout
    scheme: QuantScheme = field(default_factory=make_scheme)
    kv_cache_dtype: str = "auto"  # QuantConfig.kv_cache_dtype: "fp8" gives each attention layer its kv_scale

    @classmethod
    def single(cls, num_layers: int, scheme: QuantScheme | None = None) -> "LayerContext":
        return cls(RankLayout.single(num_layers), scheme or make_scheme())

    @property
    def kv_cache_fp8(self) -> bool:
        return self.kv_cache_dtype == "fp8"

    @property
    def tp_rank(self) -> int:
        return self.rank.tp_rank

    @property
    def tp_size(self) -> int:
        return self.rank.tp_size

    def linear_method(self, prefix: str) -> LinearMethod:
        return self.scheme.linear_method(prefix)
