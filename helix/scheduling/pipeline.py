"""Pipelines: the route one request takes from the coordinator through compute nodes and back.

A pipeline is an ordered tuple of hops ``(node, start, end)``: the node runs layers ``[start, end)``. The
coordinator sends the request to the first hop and the last hop returns it to the coordinator. Hops chain
exactly: the first starts at layer 0, each next one starts where the previous ended, the last ends at L.

Partial-overlap rule (serving.md §1.3): a node always runs a *suffix* of the range it holds. If the
previous hop ended at ``e`` and the next node holds ``[s, t)`` with ``s <= e < t``, it runs ``[e, t)``,
skipping its first ``e - s`` layers; it never stops before ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass

from helix.specs.placement import LayerRange


@dataclass(frozen=True, slots=True)
class Hop:
    """One stage of a pipeline: `node` runs layers [start, end)."""

    node: str
    start: int
    end: int

    @property
    def num_layers(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Hops from the coordinator back to it (the coordinator itself is implicit at both ends)."""

    hops: tuple[Hop, ...]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(hop.node for hop in self.hops)

    def __len__(self) -> int:
        return len(self.hops)

    def validate(self, num_layers: int) -> None:
        """Raise ValueError unless the hops cover layers 0..num_layers-1 exactly once, in order."""
        expected = 0
        for hop in self.hops:
            if hop.start != expected or hop.end <= hop.start:
                raise ValueError(f"hop {hop} does not continue at layer {expected}")
            expected = hop.end
        if expected != num_layers:
            raise ValueError(f"pipeline ends at layer {expected}, not {num_layers}")


def next_hop_layers(prev_end: int, held: LayerRange) -> tuple[int, int] | None:
    """Layers the node holding `held` runs after a hop that ended at `prev_end` (None if it cannot)."""
    if held.start <= prev_end < held.end:
        return prev_end, held.end
    return None
