"""Warm-started re-planning: a new placement for a changed cluster that moves few layers.

When a node fails, joins or is drained, the serving cluster already holds a placement P⁰ (node → layers).
A re-plan that ignores P⁰ may reshuffle every node's layers; loading them costs minutes of disk or
network time. The warm start maximises

    score(P) = flow(P) − w · F_ref · moved(P, P⁰)

where moved(P, P⁰) = Σ_n |P_n \\ P⁰_n| is the number of layers nodes must newly load (layers they
already hold are free), F_ref is the best flow among the candidates (so ``w`` is a fraction of the
flow: with w = 0.001, moving 10 more layers must buy 1 % more flow), and flow is the independent
evaluator's max flow.

Candidates, each scored:

1. *kept*: P⁰ on the surviving nodes (0 moves); when nothing changed (same members) it is returned as is.
2. *aligned fresh*: a from-scratch plan of the new cluster (the ``milp`` planner on part of the time
   budget), with its stages reordered along the layers and its nodes re-labelled within classes of
   interchangeable nodes so that as many layers as possible are already resident. In a cluster whose
   links never bind, reordering stages and swapping interchangeable nodes leaves the flow unchanged.
3. *repaired kept*: P⁰ with every uncovered layer range handed to a neighbour or a spare node.

then a local search on the score (grow / shrink / shift one node's range, revert a node to its old
range, give a spare node a copy of another's range), deterministic for a seed (an evaluation budget and
a patience; the wall clock is only a cap), and a trim sweep (`trim_sweep`: every node that loads layers,
in name order, reverted or trimmed by one newly loaded layer while that raises the score).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from helix.errors import HelixInputError
from helix.flow.graph import FlowOptions
from helix.flow.maxflow import compute_upper_bound, evaluate_placement
from helix.perf.base import CapacityModel
from helix.placement.milp.bounds import saturation_bound
from helix.placement.milp.problem import Problem, build_problem
from helix.placement.milp.stages import solve_stages, stages_to_placement
from helix.placement.result import PlannerOptions, PlanResult
from helix.placement.warm_stages import as_stages, lay_out, reuse_stages
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

FRESH_SHARE = 0.4  # share of the time limit given to the from-scratch candidate
ORDER_SWEEPS = 1  # passes of pairwise stage swaps when aligning a fresh plan
SEARCH_EVALS = 4000  # local-search evaluations (each one max flow) at most
SEARCH_PATIENCE = 400  # stop after this many evaluations without improvement
BISECTION_STEPS = 16  # stage-IP bisection steps of the fresh candidate (2^-16 relative resolution)
REUSE_MIN_SHARE = 0.25  # the reuse IP gets at least this share of the time limit
REUSE_TARGETS = (1.0, 0.98)  # targets of the stage-reuse IP, as shares of the fresh plan's flow


@dataclass(frozen=True)
class WarmStart:
    """Re-plan from `previous` (the placement being served).

    Attributes:
        previous: the current placement (nodes that left may still appear; they are ignored).
        previous_members: the nodes of the cluster `previous` was planned for; default: those of
            `previous`. When the new cluster has exactly these nodes, `previous` is returned unchanged.
        move_weight: flow given up per moved layer, as a fraction of the reference flow (see module).
        partial_reuse: a node whose range changes keeps the layers it holds (True), or reloads its whole
            new range (False: workers that load a range once, as the runtime's).
    """

    previous: Placement
    previous_members: tuple[str, ...] = ()
    move_weight: float = 1e-3
    partial_reuse: bool = True

    def __post_init__(self) -> None:
        if not self.move_weight >= 0:
            raise HelixInputError("must be >= 0", field="move_weight", fix="use a fraction such as 0.001")


def moved_layers(previous: Placement, new: Placement, partial: bool = True) -> int:
    """Σ_n |new_n \\ previous_n|: layers that nodes must load to go from `previous` to `new`. With
    `partial` False a node whose range changes loads all of it (a worker that cannot resize in place)."""
    total = 0
    for node, r in new.items():
        old = previous.get(node)
        overlap = 0 if old is None else max(0, min(r.end, old.end) - max(r.start, old.start))
        if not partial and old != r:
            overlap = 0
        total += r.num_layers - overlap
    return total


@dataclass
class _Scorer:
    cluster: ClusterSpec
    model: ModelSpec
    capacity: CapacityModel
    flow_options: FlowOptions
    previous: Placement
    weight: float
    partial: bool = True
    reference: float = 0.0
    evals: int = 0

    def flow(self, placement: Placement) -> float:
        self.evals += 1
        try:
            return evaluate_placement(
                self.cluster, self.model, placement, self.capacity, self.flow_options
            ).value_tokens_per_s
        except (HelixInputError, ValueError):
            return 0.0

    def score(self, placement: Placement, flow: float | None = None) -> float:
        flow = self.flow(placement) if flow is None else flow
        moved = moved_layers(self.previous, placement, self.partial)
        return flow - self.weight * self.reference * moved


def _classes(problem: Problem) -> dict[str, int]:
    """node → its class of interchangeable nodes (same GPU, capacity table, zone and links)."""
    return {n: ci for ci, c in enumerate(problem.classes) for n in c.nodes}


def _relabel(
    placement: Placement, previous: Placement, classes: dict[str, int], partial: bool = True
) -> tuple[Placement, int]:
    """Give the ranges of each class to that class's nodes so that the fewest layers move."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for node in sorted(classes):
        by_class[classes[node]].append(node)
    slots: dict[int, list[LayerRange]] = defaultdict(list)
    for node, r in placement.items():
        slots[classes[node]].append(r)
    ranges: dict[str, LayerRange] = {}
    total = 0
    for key, rs in slots.items():
        nodes = by_class[key]
        old = [previous.get(n) for n in nodes]
        os_ = np.array([o.start if o else 0 for o in old])[:, None]
        oe = np.array([o.end if o else 0 for o in old])[:, None]
        ns = np.array([r.start for r in rs])[None, :]
        ne = np.array([r.end for r in rs])[None, :]
        overlap = np.clip(np.minimum(ne, oe) - np.maximum(ns, os_), 0, None)
        if not partial:
            overlap = np.where((ns == os_) & (ne == oe), ne - ns, 0)
        cost = (ne - ns) - overlap
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols, strict=True):
            ranges[nodes[i]] = rs[j]
        total += int(cost[rows, cols].sum())
    return Placement(ranges), total


def _stages(placement: Placement, num_layers: int) -> list[tuple[LayerRange, list[str]]] | None:
    """The placement as a tiling of [0, L) by stages (nodes with one identical range), or None."""
    groups: dict[LayerRange, list[str]] = defaultdict(list)
    for node, r in placement.items():
        groups[r].append(node)
    ordered = sorted(groups.items())
    at = 0
    for r, _ in ordered:
        if r.start != at:
            return None
        at = r.end
    return ordered if at == num_layers else None


def _layout(stages: list[tuple[LayerRange, list[str]]], order: list[int]) -> Placement:
    ranges, at = {}, 0
    for j in order:
        r, nodes = stages[j]
        for node in nodes:
            ranges[node] = LayerRange(at, at + r.num_layers)
        at += r.num_layers
    return Placement(ranges)


def align(
    placement: Placement, previous: Placement, classes: dict[str, int], num_layers: int, partial: bool = True
) -> Placement:
    """Reorder the stages of `placement` and re-label interchangeable nodes to minimise moved layers."""
    best, best_cost = _relabel(placement, previous, classes, partial)
    stages = _stages(placement, num_layers)
    if stages is None:
        return best
    order = list(range(len(stages)))
    for _ in range(ORDER_SWEEPS):
        improved = False
        for a in range(len(order)):
            for b in range(a + 1, len(order)):
                trial = list(order)
                trial[a], trial[b] = trial[b], trial[a]
                cand, cost = _relabel(_layout(stages, trial), previous, classes, partial)
                if cost < best_cost:
                    order, best, best_cost, improved = trial, cand, cost, True
        if not improved:
            break
    return best


def _max_layers(cluster: ClusterSpec, capacity: CapacityModel) -> dict[str, int]:
    return {n.name: len(capacity.throughput_table(n.gpu.name)) for n in cluster.nodes}


def repair(previous: Placement, cluster: ClusterSpec, capacity: CapacityModel, num_layers: int) -> Placement:
    """`previous` on the live nodes, each uncovered layer range given to a node next to it that has room
    (grown towards the gap), else to a spare node."""
    limits = _max_layers(cluster, capacity)
    ranges = {n: r for n, r in previous.items() if n in limits}
    gaps = _gaps(Placement(ranges), num_layers)
    for s, e in gaps:
        spare = [n for n in limits if n not in ranges and limits[n] >= e - s]
        left = [n for n, r in ranges.items() if r.end == s and limits[n] >= e - r.start]
        right = [n for n, r in ranges.items() if r.start == e and limits[n] >= r.end - s]
        if spare:
            ranges[max(spare, key=lambda n: limits[n])] = LayerRange(s, e)
        elif left or right:
            for n in left:
                ranges[n] = LayerRange(ranges[n].start, e)
            for n in right:
                ranges[n] = LayerRange(s, ranges[n].end)
    return Placement(ranges)


def _gaps(placement: Placement, num_layers: int) -> list[tuple[int, int]]:
    missing = placement.uncovered_layers(num_layers)
    gaps: list[tuple[int, int]] = []
    for layer in missing:
        if gaps and gaps[-1][1] == layer:
            gaps[-1] = (gaps[-1][0], layer + 1)
        else:
            gaps.append((layer, layer + 1))
    return gaps


def _neighbour(
    ranges: dict[str, LayerRange],
    previous: Placement,
    limits: dict[str, int],
    num_layers: int,
    rng: random.Random,
) -> dict[str, LayerRange] | None:
    node = rng.choice(sorted(limits))
    cur = ranges.get(node)
    new = dict(ranges)
    move = rng.randrange(5)
    if move == 0:  # back to what the node holds now
        old = previous.get(node)
        if old is None or old == cur or old.num_layers > limits[node]:
            return None
        new[node] = old
        return new
    if cur is None or move == 1:  # a copy of another node's range
        used = [n for n in sorted(ranges) if n != node]
        if not used:
            return None
        other = ranges[rng.choice(used)]
        if other.num_layers > limits[node]:
            return None
        new[node] = other
        return new
    s, e = cur.start, cur.end
    d = rng.choice((-1, 1))
    if move == 2:
        s += d
    elif move == 3:
        e += d
    else:
        s, e = s + d, e + d
    if not (0 <= s < e <= num_layers) or e - s > limits[node]:
        return None
    new[node] = LayerRange(s, e)
    return new


def local_search(
    start: Placement,
    scorer: _Scorer,
    limits: dict[str, int],
    num_layers: int,
    rng: random.Random,
    deadline: float,
) -> tuple[Placement, float]:
    """First-improvement search on the score; plateau moves that keep it are accepted."""
    ranges = dict(start.ranges)
    flow = scorer.flow(start)
    score = scorer.score(start, flow)
    best, best_score = start, score
    stale = 0
    for _ in range(SEARCH_EVALS):
        if time.perf_counter() >= deadline or stale >= SEARCH_PATIENCE:
            break
        stale += 1
        cand = _neighbour(ranges, scorer.previous, limits, num_layers, rng)
        if cand is None:
            continue
        placement = Placement(cand)
        cand_score = scorer.score(placement)
        if cand_score >= score - 1e-9:
            ranges, score = cand, cand_score
            if score > best_score + 1e-9:
                best, best_score, stale = placement, score, 0
    return best, best_score


def trim_sweep(
    start: Placement, scorer: _Scorer, num_layers: int, deadline: float
) -> tuple[Placement, float]:
    """Deterministic passes over the nodes (in name order) that must load layers: revert the node to
    its old range, or trim one newly loaded layer off either end of its range; a change is kept when
    the score rises. Ends when a pass changes nothing (each change moves at least one layer less), or
    at `deadline` after the first pass."""
    best, score = start, scorer.score(start)
    improved, passes = True, 0
    while improved and (passes == 0 or time.perf_counter() < deadline):  # one pass past the deadline
        improved, passes = False, passes + 1
        for node in sorted(best.ranges):
            r, old = best.ranges[node], scorer.previous.get(node)
            if old == r:
                continue
            trials = [old] if old is not None and old.end <= num_layers else []
            if r.num_layers > 1 and (old is None or r.start < old.start or r.start >= old.end):
                trials.append(LayerRange(r.start + 1, r.end))
            if r.num_layers > 1 and (old is None or r.end > old.end or r.end <= old.start):
                trials.append(LayerRange(r.start, r.end - 1))
            for trial in trials:
                cand = Placement({**best.ranges, node: trial})
                cand_score = scorer.score(cand)
                if cand_score > score + 1e-9:
                    best, score, improved = cand, cand_score, True
                    break
    return best, score


def _plan(cluster, model, options, capacity):
    from helix.placement.planner import plan  # the planner imports this module

    return plan(cluster, model, options, capacity)


def _fresh(
    problem: Problem, cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, options: PlannerOptions
) -> Placement:
    """A from-scratch plan: in one zone, bisection on F with the stage IP (deterministic, milliseconds
    per step); elsewhere the configured method on part of the time limit."""
    if problem.zones == 1:
        lo, hi, best = 0.0, saturation_bound(problem), None
        stop_at = time.perf_counter() + FRESH_SHARE * options.time_limit_s
        for _ in range(BISECTION_STEPS):
            if best is not None and time.perf_counter() >= stop_at:
                break  # the wall clock is a cap (a loaded machine); the work budget is the steps
            target = (lo + hi) / 2
            stages = solve_stages(problem, target, time_limit_s=options.time_limit_s, seed=options.seed)
            if stages is None:
                hi = target
            else:
                lo, best = target, stages_to_placement(problem, stages)
        if best is not None:
            return best
    fresh_options = replace(options, time_limit_s=FRESH_SHARE * options.time_limit_s, warm_start=None)
    return _plan(cluster, model, fresh_options, capacity).placement


def warm_plan(
    cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, options: PlannerOptions, warm: WarmStart
) -> PlanResult:
    """Re-plan `cluster` from `warm.previous` (module docstring). `details` reports the moves."""
    started = time.perf_counter()
    deadline = started + options.time_limit_s
    flow_options = FlowOptions(options.partial_overlap)
    members = set(cluster.node_names)
    before = set(warm.previous_members or warm.previous)
    kept = Placement({n: r for n, r in warm.previous.items() if n in members})
    scorer = _Scorer(
        cluster, model, capacity, flow_options, warm.previous, warm.move_weight, warm.partial_reuse
    )
    if members == before and kept == warm.previous and scorer.flow(kept) > 0:
        return _result(
            cluster,
            model,
            capacity,
            flow_options,
            warm,
            kept,
            "kept (membership unchanged)",
            started,
            {"evaluations": scorer.evals},
        )
    phase_s = {}
    problem = build_problem(cluster, model, capacity)
    fresh = _fresh(problem, cluster, model, capacity, options)
    phase_s["fresh"] = time.perf_counter() - started
    classes = _classes(problem)
    candidates = {
        "kept": kept,
        "repaired": repair(warm.previous, cluster, capacity, model.num_layers),
        "fresh relabelled": _relabel(fresh, warm.previous, classes, warm.partial_reuse)[0],
    }
    phase_s["align"] = time.perf_counter() - started
    fresh_flow = scorer.flow(fresh)
    fresh_stages = as_stages(problem, candidates["fresh relabelled"])
    for share in REUSE_TARGETS:  # every target runs (a work budget), each solve under a time cap
        left_s = deadline - time.perf_counter()
        target = share * fresh_flow
        chosen = reuse_stages(
            problem,
            warm.previous,
            target,
            time_limit_s=max(left_s / 2, REUSE_MIN_SHARE * options.time_limit_s),
            start=fresh_stages,
            partial=warm.partial_reuse,
        )
        if chosen is not None:
            laid = lay_out(problem, chosen)
            candidates[f"reuse stages at {share:g} x fresh"] = align(
                laid, warm.previous, classes, model.num_layers, warm.partial_reuse
            )
    phase_s["reuse"] = time.perf_counter() - started
    flows = {name: scorer.flow(p) for name, p in candidates.items()}
    scorer.reference = max(flows.values())
    scores = {name: scorer.score(p, flows[name]) for name, p in candidates.items()}
    moves = {name: moved_layers(warm.previous, p, warm.partial_reuse) for name, p in candidates.items()}
    start_name = max(scores, key=lambda k: (round(scores[k], 9), -moves[k]))
    best, best_score = local_search(
        candidates[start_name],
        scorer,
        _max_layers(cluster, capacity),
        model.num_layers,
        random.Random(options.seed),
        deadline,
    )
    source = start_name if best_score <= scores[start_name] + 1e-9 else f"{start_name} + local search"
    trimmed, trimmed_score = trim_sweep(best, scorer, model.num_layers, deadline)
    if trimmed_score > best_score + 1e-9:
        best, best_score, source = trimmed, trimmed_score, f"{source} + trim"
    phase_s["search"] = time.perf_counter() - started
    details = {
        "evaluations": scorer.evals,
        "phase_end_s": phase_s,
        "candidates": {
            name: {
                "flow_tokens_per_s": flows[name],
                "moved_layers": moved_layers(warm.previous, p, warm.partial_reuse),
            }
            for name, p in candidates.items()
        },
        "fresh_flow_tokens_per_s": fresh_flow,
        "fresh_moved_layers": moved_layers(warm.previous, fresh, warm.partial_reuse),
    }
    return _result(cluster, model, capacity, flow_options, warm, best, source, started, details)


def _result(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    flow_options: FlowOptions,
    warm: WarmStart,
    placement: Placement,
    source: str,
    started: float,
    details: dict,
) -> PlanResult:
    flow = evaluate_placement(cluster, model, placement, capacity, flow_options)
    moved = moved_layers(warm.previous, placement, warm.partial_reuse)
    elapsed = time.perf_counter() - started
    return PlanResult(
        placement=placement,
        flow=flow,
        method="warm-start",
        upper_bound_tokens_per_s=compute_upper_bound(cluster, model, capacity),
        bound_source="compute upper bound (sum of node capacities / L)",
        elapsed_s=elapsed,
        time_to_best_s=elapsed,
        details={
            "found_by": source,
            "moved_layers": moved,
            "moved_bytes": moved * model.layer_weight_bytes,
            "move_weight": warm.move_weight,
            **details,
        },
    )
