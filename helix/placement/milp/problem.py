"""The planning problem, aggregated: nodes that are interchangeable become one class with a count.

Two nodes are interchangeable when they have the same GPU type, the same capacity table cap(k) for
k = 1..K (K = max layers from the capacity model's memory limit), lie in the same *zone*, and have the
same coordinator links after clamping. Link capacities are clamped at ``big`` = the smaller of the largest
node capacity anywhere and the saturation bound F* (bounds.py): a link at least that fast can never bind,
since no single link carries more than the node capacity at either end, nor more than the whole flow,
which never exceeds F*. Zones are the connected components of "never-binding" links, so a single-region
cluster where every link is 1 Gbps (61,035 tok/s for 70B) is one zone, and a geo cluster with slow
inter-region links (slower than F*) splits into its regions; a region link faster than F* does not split.

The aggregated model is *exact* when there is one zone whose nodes are all pairwise linked by
never-binding links and every coordinator link is never-binding: then the max flow of a placement equals
the max flow on the line of layer boundaries 0..L where a node holding [s, e) is an arc s→e with
capacity cap(k) (the boundary graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helix.errors import HelixInputError
from helix.flow.graph import node_capacity_tokens_per_s
from helix.perf.base import CapacityModel
from helix.placement.milp.bounds import tables_saturation_bound
from helix.specs.cluster import COORDINATOR, ClusterSpec
from helix.specs.model import ModelSpec


@dataclass(frozen=True)
class NodeClass:
    """Interchangeable nodes. Coordinator capacities are (min, max) over the class; 0 = no link."""

    key: str
    gpu: str
    zone: int
    nodes: tuple[str, ...]
    caps_tokens_per_s: tuple[float, ...]
    source_cap: tuple[float, float]
    sink_cap: tuple[float, float]

    @property
    def count(self) -> int:
        return len(self.nodes)

    @property
    def max_layers(self) -> int:
        return len(self.caps_tokens_per_s)


@dataclass(frozen=True)
class Problem:
    """The aggregated problem.

    Attributes:
        num_layers: L.
        classes: node classes.
        zones: number of zones; zone_links[(a, b)] = (min, max) clamped link capacity from zone a to b.
        big_tokens_per_s: the clamp value (links at least this fast never bind).
        exact: whether the boundary-graph model is exact (see the module docstring).
    """

    num_layers: int
    classes: tuple[NodeClass, ...]
    zones: int
    zone_links: dict[tuple[int, int], tuple[float, float]]
    big_tokens_per_s: float
    exact: bool

    def num_columns(self) -> int:
        """Integer columns of the boundary MILP: (class, start, layers) triples."""
        L = self.num_layers
        return sum(sum(min(c.max_layers, L - s) for s in range(L)) for c in self.classes)


def _link_cap(cluster: ClusterSpec, src: str, dst: str, per_token_bytes: float, big: float) -> float:
    link = cluster.link(src, dst)
    return 0.0 if link is None else min(big, link.bandwidth_bytes_per_s / per_token_bytes)


def _zones(cluster: ClusterSpec, model: ModelSpec, big: float) -> dict[str, int]:
    """Connected components of nodes joined (both ways) by never-binding links, numbered by first node."""
    parent = {n.name: n.name for n in cluster.nodes}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    act = model.activation_bytes_per_token
    for link in cluster.links:
        if COORDINATOR in (link.src, link.dst):
            continue
        if (
            min(
                _link_cap(cluster, link.src, link.dst, act, big),
                _link_cap(cluster, link.dst, link.src, act, big),
            )
            >= big
        ):
            parent[find(link.src)] = find(link.dst)
    roots: dict[str, int] = {}
    return {n.name: roots.setdefault(find(n.name), len(roots)) for n in cluster.nodes}


def build_problem(cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel) -> Problem:
    """Aggregate `cluster` into node classes and zones (see the module docstring)."""
    tables = {}
    for node in cluster.nodes:
        k_max = min(capacity.max_layers(node.gpu.name), model.num_layers)
        tables[node.name] = tuple(
            node_capacity_tokens_per_s(node, k, model, capacity) for k in range(1, k_max + 1)
        )
    biggest = max((max(t) for t in tables.values() if t), default=1.0)
    saturation = tables_saturation_bound([(t, 1) for t in tables.values()], model.num_layers)
    big = min(biggest, saturation) if saturation > 0 else biggest
    zone_of = _zones(cluster, model, big)
    tok = model.token_bytes
    groups: dict[tuple, list[str]] = {}
    for node in cluster.nodes:
        src = _link_cap(cluster, COORDINATOR, node.name, tok, big)
        dst = _link_cap(cluster, node.name, COORDINATOR, tok, big)
        key = (node.gpu.name, zone_of[node.name], tables[node.name], src, dst)
        groups.setdefault(key, []).append(node.name)
    classes = []
    for (gpu, zone, table, src, dst), names in groups.items():
        if not table:
            continue
        classes.append(
            NodeClass(f"{gpu}@z{zone}#{len(classes)}", gpu, zone, tuple(names), table, (src, src), (dst, dst))
        )
    zones = max(zone_of.values()) + 1
    zone_links = _zone_links(cluster, model, zone_of, zones, big)
    one_zone_clean = zones == 1 and zone_links.get((0, 0), (big, big))[0] >= big
    coord_fast = all(c.source_cap[0] >= big and c.sink_cap[0] >= big for c in classes)
    return Problem(model.num_layers, tuple(classes), zones, zone_links, big, one_zone_clean and coord_fast)


def _zone_links(
    cluster: ClusterSpec, model: ModelSpec, zone_of: dict[str, int], zones: int, big: float
) -> dict[tuple[int, int], tuple[float, float]]:
    act = model.activation_bytes_per_token
    caps: dict[tuple[int, int], list[float]] = {}
    names = [n.name for n in cluster.nodes]
    for a in names:
        for b in names:
            if a != b:
                caps.setdefault((zone_of[a], zone_of[b]), []).append(_link_cap(cluster, a, b, act, big))
    return {pair: (min(v), max(v)) for pair, v in caps.items()}


def check_feasible(problem: Problem, cluster: ClusterSpec, model: ModelSpec) -> None:
    """Raise a `HelixInputError` explaining why no placement can carry any flow, if that is so."""
    total = sum(c.count * c.max_layers for c in problem.classes)
    if total < problem.num_layers:
        raise HelixInputError(
            f"{model.name} has {problem.num_layers} layers but the cluster's nodes can hold only {total} "
            "in total (weights plus KV reserve must fit in each node's memory)",
            where=cluster.name,
            field="nodes",
            fix="add nodes or GPUs with more memory, or serve a smaller model",
        )
    if not any(c.source_cap[1] > 0 for c in problem.classes):
        raise HelixInputError(
            "the coordinator cannot send to any node",
            where=cluster.name,
            field="links",
            fix="add links from the coordinator to nodes",
        )
    if not any(c.sink_cap[1] > 0 for c in problem.classes):
        raise HelixInputError(
            "no node can send results back to the coordinator",
            where=cluster.name,
            field="links",
            fix="add links from nodes to the coordinator",
        )
    reach = _reachable_boundaries(problem, cluster, model)
    if problem.num_layers not in reach:
        raise HelixInputError(
            f"no chain of linked nodes can cover all {problem.num_layers} layers from the coordinator back "
            f"to it (layer boundaries reachable: up to {max(reach)})",
            where=cluster.name,
            field="links",
            fix="add links between nodes, or nodes with more memory",
        )


def _reachable_boundaries(problem: Problem, cluster: ClusterSpec, model: ModelSpec) -> set[int]:
    """Boundaries b such that some chain of linked nodes covers [0, b), starting at the coordinator
    (ignores that a node appears once). Chains only grow, so boundaries are settled in increasing order:
    ``ends[e, v]`` (a chain ending at node v covers [0, e)) holds when v was entered at some b in
    [e − max_layers(v), e); v is entered at b = 0 when the coordinator links to it, and at b > 0 when a
    node u ≠ v with ``ends[b, u]`` links to it. O(L · N²) boolean work (N nodes), vectorised."""
    L = problem.num_layers
    max_k = {n: c.max_layers for c in problem.classes for n in c.nodes}
    names = list(max_k)
    index = {n: i for i, n in enumerate(names)}
    k = np.array([max_k[n] for n in names], dtype=np.int64)
    adjacency = np.zeros((len(names), len(names)), dtype=bool)
    for src, dst in cluster.link_by_pair:
        if src in index and dst in index and src != dst:
            adjacency[index[src], index[dst]] = True
    ends = np.zeros((L + 1, len(names)), dtype=bool)
    entered = np.zeros(len(names), dtype=bool)
    for c in problem.classes:
        if c.source_cap[1] > 0:
            entered[[index[n] for n in c.nodes]] = True
    longest = int(k.max(initial=0))
    for b in range(L):
        if b > 0:
            entered = adjacency[ends[b]].any(axis=0)
        for d in range(1, min(longest, L - b) + 1):
            ends[b + d] |= entered & (k >= d)
    reached = {e for e in range(1, L + 1) if ends[e].any()}
    sinks = [index[n] for c in problem.classes if c.sink_cap[1] > 0 for n in c.nodes]
    if not ends[L, sinks].any():
        reached.discard(L)
    return reached | {0}


__all__ = ["NodeClass", "Problem", "build_problem", "check_feasible"]
