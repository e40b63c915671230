"""Throughput-aware placement: max flow subject to a KV-cache / pipeline-depth bound.

Max flow counts tokens/s through compute and links, but a serving system also needs enough requests
in flight to use that capacity, and every request in flight holds KV cache on every node of its route
for its whole life. By Little's law a route of H nodes carrying f tokens/s keeps

    N = f · (O / (I + O)) / O · (lifetime) ≈ f · H · t_hop / ((I + O) / O)   requests in flight

(one decode iteration crosses the H nodes, t_hop each, O decodes per request of I + O tokens), and each
holds about I + O/2 tokens of context per layer. A node i holding Q_i tokens of KV per layer, usable up
to a fraction u, can therefore serve routes with

    Σ_{routes p through i} f_p · H_p  ≤  γ · Q_i,     γ = u · (I + O) / O / ((I + O/2) · t_hop)     (KV)

Long chains (large H) and nodes with little KV per layer (many layers each) make the bound bind; this
is why a 24-stage chain that saturates every node (the max-flow optimum on single24) serves fewer
tokens than a 16-stage pipeline with less max flow. The defaults (u = 0.75, t_hop = 0.1 s, I = 750,
O = 240: γ ≈ 0.036 per s) are calibrated on simulations of 1 Gbps clusters (docs/planner.md).

`kv_latency_estimate` scores any placement: decompose its max flow into routes, compute each node's
load Σ f_p·H_p, and scale the flow down until (KV) holds everywhere. `throughput_candidates` builds
stage pipelines (stages.py) for a grid of depths H: for each H it bisects on F for stages whose
capacity reaches F and whose KV per layer reaches F·H/γ, at most H stages in all — each solve is a tiny
integer program. Candidates are ranked by the estimate; the caller may re-rank the best few by
simulation (`helix.sim.select`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import highspy
import numpy as np

from helix.flow.maxflow import FlowResult
from helix.perf.base import AVG_OUTPUT_TOKENS, AVG_PROMPT_TOKENS, CapacityModel
from helix.placement.milp.problem import Problem
from helix.placement.milp.stages import (
    Stage,
    add_class_count_rows,
    candidate_stages,
    stage_ip,
    stages_to_placement,
)
from helix.placement.served import routes
from helix.specs.placement import Placement


@dataclass(frozen=True)
class ThroughputModel:
    """Constants of the KV bound (module docstring)."""

    hop_time_s: float = 0.1
    kv_utilisation: float = 0.75
    prompt_tokens: int = AVG_PROMPT_TOKENS
    output_tokens: int = AVG_OUTPUT_TOKENS

    @property
    def rate_per_kv_token(self) -> float:
        """γ: tokens/s·node-hops a node can serve per token of KV per layer."""
        i, o = self.prompt_tokens, self.output_tokens
        return self.kv_utilisation * (i + o) / o / ((i + o / 2) * self.hop_time_s)


def kv_latency_estimate(
    placement: Placement,
    flow: FlowResult,
    kv_tokens: Callable[[str, int], float],
    model: ThroughputModel,
) -> float:
    """Max flow scaled down until the KV bound holds at every node (tokens/s, an estimate).

    `kv_tokens(node, layers)` = KV tokens per layer of `node` holding `layers` layers.
    """
    load: dict[str, float] = {}
    for path, f in routes(flow):
        for node in path:
            load[node] = load.get(node, 0.0) + f * len(path)
    gamma = model.rate_per_kv_token
    scale = 1.0
    for node, value in load.items():
        if value > 0:
            scale = min(scale, gamma * kv_tokens(node, placement[node].num_layers) / value)
    return flow.value_tokens_per_s * scale


def class_kv_tables(problem: Problem, capacity: CapacityModel) -> list[tuple[float, ...]]:
    """KV tokens per layer for every class and layer count 1..K."""
    return [
        tuple(float(capacity.kv_capacity_tokens(c.gpu, k)) for k in range(1, c.max_layers + 1))
        for c in problem.classes
    ]


@dataclass(frozen=True)
class StageTable:
    """Every multiset of ≤ max_size nodes of one zone per layer count, with its capacity and KV sums."""

    stages: list[Stage]
    caps: np.ndarray  # Σ cap at k layers
    kvs: np.ndarray  # Σ KV tokens per layer at k layers
    caps_without_weakest: np.ndarray
    kvs_without_weakest: np.ndarray

    @classmethod
    def build(cls, problem: Problem, kv: list[tuple[float, ...]], zone: int, max_size: int) -> StageTable:
        rows: list[tuple[Stage, float, float, float, float]] = []
        for k, combo in candidate_stages(problem, zone, max_size):
            caps = [problem.classes[ci].caps_tokens_per_s[k - 1] for ci in combo]
            kvs = [kv[ci][k - 1] for ci in combo]
            weak = min(range(len(combo)), key=lambda j: (caps[j], kvs[j]))
            rest = (sum(caps) - caps[weak], sum(kvs) - kvs[weak]) if len(combo) > 1 else (-1.0, -1.0)
            rows.append(((k, combo), sum(caps), sum(kvs), *rest))
        cols = list(zip(*rows, strict=True)) if rows else [[], [], [], [], []]
        return cls(list(cols[0]), *(np.array(c, float) for c in cols[1:]))

    def reaching(self, target: float, kv_target: float) -> list[Stage]:
        """Minimal multisets (dropping the weakest member breaks a target) reaching both targets."""
        ok = (self.caps >= target) & (self.kvs >= kv_target)
        ok &= (self.caps_without_weakest < target) | (self.kvs_without_weakest < kv_target)
        return [self.stages[j] for j in np.flatnonzero(ok)]


def _solve_depth(problem: Problem, stages: list[Stage], max_stages: int) -> list[Stage] | None:
    """Σ k·z = L, Σ z ≤ max_stages, node counts; fewest nodes. None if infeasible."""
    n = len(stages)
    if n == 0:
        return None
    # safety cap of 10 s: these models solve in milliseconds
    h, idx = stage_ip(problem, stages, time_limit_s=10.0, max_nodes=5000)
    h.addRow(0, max_stages, n, idx, np.ones(n))
    add_class_count_rows(h, problem, stages, idx)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    values = h.getSolution().col_value
    chosen = [st for j, st in enumerate(stages) for _ in range(round(values[j]))]
    return sorted(chosen, key=lambda st: (-st[0], st[1]))


def _best_pipeline(
    problem: Problem,
    kv: list[tuple[float, ...]],
    gamma: float,
    depth: int,
    flow_hint: float,
    steps: int,
    max_size: int,
    tables: list[StageTable] | None = None,
) -> tuple[float, list[Stage]] | None:
    """Bisect on F for a pipeline of ≤ `depth` stages meeting capacity F and KV F·depth/γ per stage."""
    if tables is None:
        tables = [StageTable.build(problem, kv, zone, max_size) for zone in range(problem.zones)]
    lo, hi, best = 0.0, flow_hint, None
    for _ in range(steps):
        target = (lo + hi) / 2
        stages = None
        for table in tables:  # a pipeline inside one zone
            stages = _solve_depth(problem, table.reaching(target, target * depth / gamma), depth)
            if stages is not None:
                break
        if stages is None:
            hi = target
        else:
            lo, best = target, stages
    return None if best is None else (lo, best)


def _residual(problem: Problem, placement: Placement) -> Problem:
    """`problem` without the nodes `placement` uses."""
    classes = tuple(
        replace(c, nodes=tuple(n for n in c.nodes if n not in placement)) for c in problem.classes
    )
    return replace(problem, classes=tuple(c for c in classes if c.count > 0))


def _best_residual_pipeline(
    rest: Problem,
    capacity: CapacityModel,
    gamma: float,
    depth: int,
    flow_hint: float,
    steps: int,
    max_size: int,
) -> Placement | None:
    """The pipeline with the largest F over depths depth, depth + 4, …, 3·depth on `rest`'s nodes."""
    if not rest.classes or sum(c.count * c.max_layers for c in rest.classes) < rest.num_layers:
        return None
    kv = class_kv_tables(rest, capacity)
    tables = [StageTable.build(rest, kv, zone, max_size) for zone in range(rest.zones)]
    best = None
    for d in range(depth, 3 * depth + 1, 4):
        found = _best_pipeline(rest, kv, gamma, d, flow_hint, steps, max_size, tables)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    return None if best is None else stages_to_placement(rest, best[1])


def throughput_candidates(
    problem: Problem,
    capacity: CapacityModel,
    model: ThroughputModel,
    flow_hint: float,
    *,
    max_size: int = 4,
    bisection_steps: int = 10,
    max_pipelines: int = 3,
    max_depth: int | None = None,
) -> list[tuple[int, float, Placement]]:
    """For each depth H, the stage pipeline with the largest F meeting the KV bound at depth H, plus up to
    `max_pipelines` − 1 more side by side on the nodes left (each at its own best depth ≥ H).

    Returns (H, F of the first pipeline in the stage model, placement) per depth that has any;
    `flow_hint` (the best max flow known) bounds the bisection from above. Deterministic: a fixed number
    of tiny integer programs.
    """
    gamma = model.rate_per_kv_token
    nodes = sum(c.count for c in problem.classes)
    shallowest = -(-problem.num_layers // max(c.max_layers for c in problem.classes))
    out = []
    kv = class_kv_tables(problem, capacity)
    tables = [StageTable.build(problem, kv, zone, max_size) for zone in range(problem.zones)]
    deepest = min(nodes, problem.num_layers, max_depth or problem.num_layers)
    for depth in range(shallowest, deepest + 1):
        first = _best_pipeline(problem, kv, gamma, depth, flow_hint, bisection_steps, max_size, tables)
        if first is None:
            continue
        pipeline = stages_to_placement(problem, first[1])
        ranges = dict(pipeline.ranges)
        rest = _residual(problem, pipeline)
        for _ in range(max_pipelines - 1):  # more pipelines on the nodes left, each at its best depth
            extra = _best_residual_pipeline(
                rest, capacity, gamma, depth, flow_hint, bisection_steps, max_size
            )
            if extra is None:
                break
            ranges.update(extra.ranges)
            rest = _residual(rest, extra)
        out.append((depth, first[0], Placement(ranges)))
    return out
