"""Parallax-style layer allocation (GradientHQ/parallax's scheduler, from its published description).

Parallax builds *disjoint* pipelines, each node holding one contiguous layer range:

- every node has a memory-bounded layer capacity K_i (here `capacity.max_layers`) and a compute power
  w_i (here its tokens/s through one layer, cap_i(1));
- **greedy**: nodes by capacity, largest first; a pipeline takes the largest free nodes until the layers
  still needed fit in one node, then closes with the *smallest* free node that holds them (a one-step
  look-ahead: fewest stages, big nodes kept for the next pipeline); repeat while the free nodes can
  still hold L layers. Goal: many pipelines, few stages each;
- **dp**: choose the number of pipelines k maximising k² / s*(k), s*(k) = the fewest stages in all
  that realise k disjoint pipelines (concurrency k against latency s*(k)/k). s*(k) comes from a dynamic
  programme over the nodes in capacity order with state (pipelines closed, layers the open one still
  needs), each node skipped or added to the open pipeline;
- **water-filling** in every pipeline: layers proportional to compute power under the capacities,
  n_i = min(K_i, λ·w_i) with λ such that Σ n_i = L, rounded by largest remainder (≥ 1 layer each);
- nodes left over replicate the layers with the least hosting power (KV tokens per layer summed over
  their holders): each takes K_i layers at the window whose summed hosting power is smallest.

Deterministic; `seed` is unused (the order is by capacity, ties by name). Above `DP_MAX_WORK` the dp
strategy falls back to greedy (its programme grows as nodes × pipelines × L).
"""

from __future__ import annotations

import math

from helix.perf.base import CapacityModel
from helix.placement.baselines import _cap, _max_layers, check_fits
from helix.specs.cluster import ClusterSpec, NodeSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

DP_MAX_WORK = 4_000_000  # DP states × nodes; larger clusters use the greedy construction


def water_fill(num_layers: int, caps: list[int], powers: list[float]) -> list[int]:
    """Layers per node: n_i = min(K_i, λ·w_i), Σ n_i = L, integers ≥ 1 (largest remainder)."""
    if sum(caps) < num_layers or len(caps) > num_layers:
        raise ValueError("the pipeline cannot hold the model")
    lo, hi = 0.0, num_layers / min(powers) + 1.0
    for _ in range(100):
        lam = (lo + hi) / 2
        if sum(min(k, lam * w) for k, w in zip(caps, powers, strict=True)) < num_layers:
            lo = lam
        else:
            hi = lam
    share = [min(k, hi * w) for k, w in zip(caps, powers, strict=True)]
    layers = [max(1, min(k, math.floor(s))) for k, s in zip(caps, share, strict=True)]
    order = sorted(range(len(caps)), key=lambda i: -(share[i] - math.floor(share[i])))
    while sum(layers) < num_layers:
        for i in order:
            if layers[i] < caps[i] and sum(layers) < num_layers:
                layers[i] += 1
    while sum(layers) > num_layers:
        i = max((i for i in range(len(caps)) if layers[i] > 1), key=lambda i: layers[i] - share[i])
        layers[i] -= 1
    return layers


def _greedy_pipelines(nodes: list[NodeSpec], caps: dict[str, int], num_layers: int) -> list[list[NodeSpec]]:
    free = list(nodes)  # capacity order, largest first
    pipelines = []
    while sum(caps[n.name] for n in free) >= num_layers:
        pipeline, need = [], num_layers
        while need > 0:
            closing = [n for n in free if caps[n.name] >= need]
            node = min(closing, key=lambda n: caps[n.name]) if closing else free[0]
            free.remove(node)
            pipeline.append(node)
            need -= caps[node.name]
        pipelines.append(pipeline)
    return pipelines


def _dp_pipelines(nodes: list[NodeSpec], caps: dict[str, int], num_layers: int) -> list[list[NodeSpec]]:
    """k maximising k²/s*(k) (module docstring), and its pipelines."""
    k_max = sum(caps[n.name] for n in nodes) // num_layers
    inf = math.inf
    # best[j][r]: fewest stages with j pipelines closed and the open one needing r more layers
    best = [[inf] * (num_layers + 1) for _ in range(k_max + 1)]
    best[0][num_layers] = 0
    back: list[dict[tuple[int, int], tuple[int, int]]] = []
    for node in nodes:
        k = caps[node.name]
        new = [row[:] for row in best]
        moves: dict[tuple[int, int], tuple[int, int]] = {}
        for j in range(k_max):
            for r in range(1, num_layers + 1):
                if best[j][r] == inf:
                    continue
                left = r - k
                state = (j + 1, num_layers) if left <= 0 else (j, left)
                if best[j][r] + 1 < new[state[0]][state[1]]:
                    new[state[0]][state[1]] = best[j][r] + 1
                    moves[state] = (j, r)
        back.append(moves)
        best = new
    scores = [(k * k / best[k][num_layers], k) for k in range(1, k_max + 1) if best[k][num_layers] < inf]
    if not scores:
        return []
    _, k = max(scores)
    return _rebuild(nodes, back, best, (k, num_layers), num_layers)


def _rebuild(nodes, back, best, state, num_layers) -> list[list[NodeSpec]]:
    """Walk the DP's choices back from `state`: which nodes joined which pipeline."""
    chosen: list[tuple[int, NodeSpec]] = []
    for i in range(len(nodes) - 1, -1, -1):
        if state in back[i]:
            prev = back[i][state]
            # the node was used only if skipping it could not have reached the same state as cheaply
            chosen.append((prev[0], nodes[i]))
            state = prev
            if state == (0, num_layers):
                break
    pipelines: dict[int, list[NodeSpec]] = {}
    for j, node in reversed(chosen):
        pipelines.setdefault(j, []).append(node)
    return [pipelines[j] for j in sorted(pipelines)]


def _assign(pipelines, caps, powers, num_layers) -> dict[str, LayerRange]:
    ranges = {}
    for pipeline in pipelines:
        layers = water_fill(num_layers, [caps[n.name] for n in pipeline], [powers[n.name] for n in pipeline])
        start = 0
        for node, k in zip(pipeline, layers, strict=True):
            ranges[node.name] = LayerRange(start, start + k)
            start += k
    return ranges


def _fill_leftovers(leftover, ranges, caps, kv_per_layer, num_layers) -> None:
    """Each leftover node replicates the K_i-layer window with the least hosting power."""
    power = [0.0] * num_layers
    for name, r in ranges.items():
        for layer in range(r.start, r.end):
            power[layer] += kv_per_layer(name, r.num_layers)
    for node in leftover:
        k = min(caps[node.name], num_layers)
        start = min(range(num_layers - k + 1), key=lambda s: (sum(power[s : s + k]), s))
        ranges[node.name] = LayerRange(start, start + k)
        for layer in range(start, start + k):
            power[layer] += kv_per_layer(node.name, k)


def parallax_placement(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    *,
    seed: int = 0,
    strategy: str = "dp",
) -> Placement:
    """Parallax-style allocation (module docstring); `strategy` is ``dp`` (Parallax's default) or
    ``greedy``."""
    del seed
    check_fits(cluster, model, capacity)
    num_layers = model.num_layers
    caps = {n.name: _max_layers(n, model, capacity) for n in cluster.nodes}
    powers = {n.name: _cap(n, 1, model, capacity) for n in cluster.nodes}
    nodes = sorted(cluster.nodes, key=lambda n: (-caps[n.name], -powers[n.name], n.name))
    k_max = sum(caps.values()) // num_layers
    dp_fits = len(nodes) * k_max * num_layers <= DP_MAX_WORK
    build = _dp_pipelines if strategy == "dp" and dp_fits else _greedy_pipelines
    pipelines = build(nodes, caps, num_layers)
    if not pipelines:  # no disjoint pipeline: every node replicates the least-served layers
        pipelines = _greedy_pipelines(nodes, caps, num_layers)
    ranges = _assign(pipelines, caps, powers, num_layers)
    used = set(ranges)
    leftover = [n for n in nodes if n.name not in used]

    def kv_per_layer(name: str, k: int) -> float:
        return float(capacity.kv_capacity_tokens(cluster.node(name).gpu.name, k))

    _fill_leftovers(leftover, ranges, caps, kv_per_layer, num_layers)
    return Placement(ranges)


def parallax_greedy_placement(
    cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, *, seed: int = 0
) -> Placement:
    return parallax_placement(cluster, model, capacity, seed=seed, strategy="greedy")
