"""Baseline placements (placement.md §6): Petals, Swarm, homogeneous pipelines, separate pipelines, and
Parallax-style disjoint pipelines (parallax.py).

All use the same node capacities cap(i, k) as the planner. Each is a pure function
``(cluster, model, capacity, *, seed) -> Placement``; randomness comes only from `random.Random(seed)`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from helix.errors import HelixInputError
from helix.flow.graph import node_capacity_tokens_per_s
from helix.perf.base import CapacityModel
from helix.specs.cluster import ClusterSpec, NodeSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

Baseline = Callable[..., Placement]


def _cap(node: NodeSpec, k: int, model: ModelSpec, capacity: CapacityModel) -> float:
    return node_capacity_tokens_per_s(node, k, model, capacity)


def _max_layers(node: NodeSpec, model: ModelSpec, capacity: CapacityModel) -> int:
    return min(capacity.max_layers(node.gpu.name), model.num_layers)


def check_fits(cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel) -> None:
    """Raise if the cluster's nodes together cannot hold every layer once."""
    total = sum(_max_layers(n, model, capacity) for n in cluster.nodes)
    if total < model.num_layers:
        raise HelixInputError(
            f"{model.name} has {model.num_layers} layers but the cluster's nodes can hold only {total} "
            f"in total (per node: weights plus KV reserve must fit in VRAM)",
            where=cluster.name,
            field="nodes",
            fix="add nodes or GPUs with more memory, or serve a smaller model",
        )


def petals_placement(
    cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, *, seed: int = 0
) -> Placement:
    """Petals: every node holds its maximum layer count; nodes in random order each take the window
    whose sorted per-layer throughputs are lexicographically smallest (the least-served layers)."""
    check_fits(cluster, model, capacity)
    nodes = list(cluster.nodes)
    random.Random(seed).shuffle(nodes)
    layer_tp = [0.0] * model.num_layers
    ranges = {}
    for node in nodes:
        k = _max_layers(node, model, capacity)
        best = min(range(model.num_layers - k + 1), key=lambda s: (sorted(layer_tp[s : s + k]), s))
        ranges[node.name] = LayerRange(best, best + k)
        cap = _cap(node, k, model, capacity)
        for layer in range(best, best + k):
            layer_tp[layer] += cap
    return Placement(ranges)


def stage_bounds(num_layers: int, num_stages: int) -> list[LayerRange]:
    """`num_stages` contiguous stages as equal as possible (the first ones one layer longer)."""
    base, extra = divmod(num_layers, num_stages)
    bounds, start = [], 0
    for i in range(num_stages):
        size = base + (1 if i < extra else 0)
        bounds.append(LayerRange(start, start + size))
        start += size
    return bounds


def swarm_placement(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    *,
    num_stages: int | None = None,
    seed: int = 0,
) -> Placement:
    """Swarm: equal stages (by default as few as the smallest node allows); nodes sorted by capacity
    (descending, ties to the larger index) each join the stage with the least summed capacity."""
    del seed  # deterministic
    check_fits(cluster, model, capacity)
    if num_stages is None:
        smallest = min(_max_layers(n, model, capacity) for n in cluster.nodes)
        num_stages = math.ceil(model.num_layers / smallest)
    stages = stage_bounds(model.num_layers, num_stages)
    size = max(s.num_layers for s in stages)
    too_small = [n.name for n in cluster.nodes if _max_layers(n, model, capacity) < size]
    if too_small:
        raise HelixInputError(
            f"nodes {too_small[:5]} cannot hold a stage of {size} layers",
            field="num_stages",
            fix="use more stages",
        )
    if num_stages > len(cluster.nodes):
        raise HelixInputError(
            f"{num_stages} stages need at least as many nodes",
            field="num_stages",
            fix="use fewer stages or more nodes",
        )
    order = sorted(
        enumerate(cluster.nodes), key=lambda p: (_cap(p[1], size, model, capacity), p[0]), reverse=True
    )
    stage_cap = [0.0] * num_stages
    ranges = {}
    for _, node in order:
        stage = min(range(num_stages), key=lambda s: (stage_cap[s], s))
        ranges[node.name] = stages[stage]
        stage_cap[stage] += _cap(node, stages[stage].num_layers, model, capacity)
    return Placement(ranges)


def _fill_pipelines(
    nodes: list[NodeSpec], model: ModelSpec, capacity: CapacityModel
) -> dict[str, LayerRange]:
    """Greedy pipelines in the given node order: each node takes min(K, remaining) layers; a pipeline
    that cannot be completed is dropped (its nodes stay unused)."""
    ranges, pipeline, start = {}, {}, 0
    for node in nodes:
        k = min(_max_layers(node, model, capacity), model.num_layers - start)
        pipeline[node.name] = LayerRange(start, start + k)
        start += k
        if start == model.num_layers:
            ranges.update(pipeline)
            pipeline, start = {}, 0
    return ranges


def _by_type(cluster: ClusterSpec) -> dict[str, list[NodeSpec]]:
    groups: dict[str, list[NodeSpec]] = {}
    for node in cluster.nodes:
        groups.setdefault(node.gpu.name, []).append(node)
    return groups


def homogeneous_placement(
    cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, *, seed: int = 0
) -> Placement:
    """Homogeneous pipelines: types ranked by K·cap(K); nodes fill pipelines greedily (each takes
    min(K, remaining) layers); nodes that cannot complete a pipeline stay unused."""
    check_fits(cluster, model, capacity)
    rng = random.Random(seed)
    by_type = _by_type(cluster)
    ranked = sorted(by_type, key=lambda t: -capacity.best_layer_work(t))
    nodes = []
    for gpu in ranked:
        group = list(by_type[gpu])
        rng.shuffle(group)
        nodes.extend(group)
    return Placement(_fill_pipelines(nodes, model, capacity))


def separate_pipelines_placement(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    *,
    seed: int = 0,
    respect_memory: bool = True,
) -> Placement:
    """Separate pipelines: pipelines of one GPU type each, layers split evenly over their nodes.

    With `respect_memory` (default) each type forms as many pipelines of ceil(L / K) nodes as it can;
    the nodes left over (all of a type too small to hold the model alone) form mixed pipelines greedily,
    fastest types first (Helix's "SP+"). Helix's own variant (`respect_memory=False`) spreads L over all
    nodes of each type even past their memory limit, which the capacity model cannot evaluate.
    """
    del seed
    check_fits(cluster, model, capacity)
    ranges, leftover = {}, []
    for group in _by_type(cluster).values():
        k_max = _max_layers(group[0], model, capacity)
        per_pipeline = len(group) if not respect_memory else math.ceil(model.num_layers / k_max)
        num_pipelines = len(group) // per_pipeline
        for p in range(num_pipelines):
            members = group[p * per_pipeline : (p + 1) * per_pipeline]
            start = 0
            for node, stage in zip(members, stage_bounds(model.num_layers, len(members))[::-1], strict=True):
                ranges[node.name] = LayerRange(start, start + stage.num_layers)
                start += stage.num_layers
        leftover.extend(group[num_pipelines * per_pipeline :])
    if respect_memory:
        leftover.sort(key=lambda n: -capacity.best_layer_work(n.gpu.name))
        ranges.update(_fill_pipelines(leftover, model, capacity))
    return Placement(ranges)


# parallax.py builds on the helpers above; importing it here keeps one registry of baselines
from helix.placement.parallax import parallax_greedy_placement, parallax_placement  # noqa: E402

BASELINES: dict[str, Baseline] = {
    "petals": petals_placement,
    "swarm": swarm_placement,
    "homogeneous": homogeneous_placement,
    "separate": separate_pipelines_placement,
    "parallax": parallax_placement,
    "parallax-greedy": parallax_greedy_placement,
}
