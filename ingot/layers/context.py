"""What every layer needs to know at construction beyond the model's shape: which rank it is
built for (its tensor-parallel slice, its stage's layers) and the precision scheme that
gives each linear layer its method."""

from __future__ import annotations

from dataclasses import dataclass, field

from ingot.parallel.mapping import RankLayout
from ingot.quantization import make_scheme
from ingot.quantization.base import LinearMethod, QuantScheme


@dataclass(frozen=True)
class LayerContext:
    rank: RankLayout
    scheme: QuantScheme = field(default_factory=make_scheme)

    @classmethod
    def single(cls, num_layers: int, scheme: QuantScheme | None = None) -> "LayerContext":
        return cls(RankLayout.single(num_layers), scheme or make_scheme())

    @property
    def tp_rank(self) -> int:
        return self.rank.tp_rank

    @property
    def tp_size(self) -> int:
        return self.rank.tp_size

    def linear_method(self, prefix: str) -> LinearMethod:
        return self.scheme.linear_method(prefix)
