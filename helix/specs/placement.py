"""A placement: which contiguous layer range [start, end) each node holds (or none)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from helix.errors import HelixInputError


@dataclass(frozen=True, slots=True, order=True)
class LayerRange:
    """Layers [start, end) of the model: what a plan gives a node and what an engine stage holds."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise HelixInputError(
                f"invalid layer range [{self.start}, {self.end})",
                field="layer_range",
                fix="use 0 <= start < end",
            )

    def validate(self, num_layers: int) -> LayerRange:
        """Return self, or raise `HelixInputError` if the range ends past the model's `num_layers`."""
        if self.end > num_layers:
            raise HelixInputError(
                f"layer range [{self.start}, {self.end}) is outside the model's {num_layers} layers",
                field="layer_range",
                fix=f"use 0 <= start < end <= {num_layers}",
            )
        return self

    @property
    def num_layers(self) -> int:
        return self.end - self.start

    def is_first(self) -> bool:
        return self.start == 0

    def is_last(self, num_layers: int) -> bool:
        return self.end == num_layers

    def __str__(self) -> str:
        return f"[{self.start},{self.end})"


@dataclass(frozen=True)
class Placement:
    """Node name → layer range. Nodes absent from the mapping are unused."""

    ranges: Mapping[str, LayerRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", MappingProxyType(dict(self.ranges)))

    @classmethod
    def from_pairs(cls, pairs: Mapping[str, tuple[int, int]]) -> Placement:
        return cls({name: LayerRange(s, e) for name, (s, e) in pairs.items()})

    def __getitem__(self, node: str) -> LayerRange:
        return self.ranges[node]

    def __contains__(self, node: object) -> bool:
        return node in self.ranges

    def __iter__(self) -> Iterator[str]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)

    def get(self, node: str) -> LayerRange | None:
        return self.ranges.get(node)

    def items(self) -> Iterator[tuple[str, LayerRange]]:
        return iter(self.ranges.items())

    def as_pairs(self) -> dict[str, tuple[int, int]]:
        return {name: (r.start, r.end) for name, r in self.ranges.items()}

    def uncovered_layers(self, num_layers: int) -> list[int]:
        covered = [False] * num_layers
        for r in self.ranges.values():
            for layer in range(r.start, min(r.end, num_layers)):
                covered[layer] = True
        return [layer for layer, ok in enumerate(covered) if not ok]

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.as_pairs().items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Placement) and self.as_pairs() == other.as_pairs()
