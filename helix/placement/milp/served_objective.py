"""The ``served`` planner objective (the default): the placement expected to serve the most decode
tokens/s with the scheduler's real admission policy, checked in the simulator where a checker is given.

1. Candidates: every distinct placement the max-flow search evaluated on its way (baselines, stage-IP
   placements at every bisection target, MILP solutions, the max-flow optimum), the KV-aware stage
   pipelines of every depth (throughput.py), and the Parallax-style allocations.
2. Each is scored by the served estimate (`helix.placement.served`), computed from its evaluated max flow.
3. Local search on the estimate (the max-flow search's moves, `search._neighbour`) from the best few,
   a fixed number of evaluations (deterministic for a seed).
   Past ``options.time_limit_s`` (a safety cap) steps 1's pipelines and 3 are skipped: the estimate
   then ranks only the placements already evaluated, which include every baseline.
4. With ``options.checker`` (a callable that simulates placements and returns their decode tokens/s,
   e.g. `helix.sim.select.simulation_checker`), the best ``options.check_candidates`` by estimate are
   checked and the best checked one is returned; without it, the best estimate.

The result's `flow` is the evaluator's max flow of the chosen placement and its bound the proven
max-flow bound; ``details["served"]`` holds the estimate (decode tokens/s, TTFT, TPOT, what binds) and
``details["candidates"]`` the ranked candidates (JSON-ready), with the checker's figures when checked.
"""

from __future__ import annotations

import random
from dataclasses import replace

from helix.perf.base import CapacityModel
from helix.placement.milp.incumbent import Incumbent
from helix.placement.milp.problem import Problem
from helix.placement.milp.search import _neighbour
from helix.placement.milp.throughput import ThroughputModel, throughput_candidates
from helix.placement.result import PlannerOptions, PlanResult
from helix.placement.served import ServedEstimate, ServingSetup, estimate_served
from helix.specs.placement import Placement

KEEP_CANDIDATES = 8
MAX_DEPTH = 16  # deeper KV-aware pipelines lose on time per token (measured on the Helix clusters)
GAMMA_SCALES = (1.0, 2.0)  # KV-aware pipelines for the throughput model's γ and 2γ
SEARCH_STARTS = 3
SEARCH_WORK = 12_000  # served-search evaluations per start = min(300, this / nodes) (cost ∝ nodes)


def _score(incumbent: Incumbent, placement: Placement, setup: ServingSetup):
    flow = incumbent.evaluate(placement)
    if flow.value_tokens_per_s <= 0:
        return None, flow
    est = estimate_served(incumbent.cluster, incumbent.model, incumbent.capacity, placement, flow, setup)
    return est, flow


def _search(problem, incumbent, start, est, setup, rng, evals):
    """Hill-climb the estimate from `start` (accepting ties), `evals` evaluations."""
    max_layers = {n: c.max_layers for c in problem.classes for n in c.nodes}
    names = sorted(max_layers)
    ranges, best, best_flow = dict(start.ranges), est, None
    for _ in range(evals):  # a move that does not apply counts too: the budget stays finite
        cand = _neighbour(problem, ranges, rng, max_layers, names)
        if cand is None:
            continue
        got, flow = _score(incumbent, Placement(cand), setup)
        if got is not None and got.decode_tokens_per_s >= best.decode_tokens_per_s - 1e-9:
            ranges, best, best_flow = cand, got, flow
    return Placement(ranges), best, best_flow


def _pool(problem, result, incumbent, capacity) -> list[tuple[str, Placement]]:
    pool: dict[Placement, str] = {}
    for placement, source in incumbent.seen:
        pool.setdefault(placement, source)
    pool.setdefault(result.placement, "max-flow optimum")
    if (
        problem.zones == 1 and incumbent.clock.left() > 0
    ):  # stage pipelines assume links inside a zone never bind
        for gamma_scale in GAMMA_SCALES:
            model = ThroughputModel(hop_time_s=ThroughputModel().hop_time_s / gamma_scale)
            for depth, _, placement in throughput_candidates(
                problem, capacity, model, result.flow_tokens_per_s, max_depth=MAX_DEPTH
            ):
                pool.setdefault(placement, f"KV-aware stage pipelines, depth {depth}, γ×{gamma_scale:g}")
    return [(source, placement) for placement, source in pool.items()]


def choose_for_served(
    problem: Problem,
    result: PlanResult,
    incumbent: Incumbent,
    capacity: CapacityModel,
    options: PlannerOptions,
) -> PlanResult:
    """Re-choose `result`'s placement for served throughput (module docstring)."""
    setup = options.serving or ServingSetup()
    clock = incumbent.clock
    phase_s = {"max_flow_search": clock.elapsed()}
    scored = []
    for source, placement in _pool(problem, result, incumbent, capacity):
        est, flow = _score(incumbent, placement, setup)
        if est is not None:
            scored.append([est.decode_tokens_per_s, source, placement, flow, est])
    scored.sort(key=lambda row: -row[0])
    phase_s["candidates"] = clock.elapsed() - sum(phase_s.values())
    rng = random.Random(options.seed)
    evals = min(300, SEARCH_WORK // max(1, sum(c.count for c in problem.classes)))
    searched = []
    starts = scored[:SEARCH_STARTS] if clock.left() > 0 else []  # past the time limit: no search
    for row in starts:
        placement, est, flow = _search(problem, incumbent, row[2], row[4], setup, rng, evals)
        if flow is not None and placement != row[2]:
            searched.append(
                [est.decode_tokens_per_s, f"{row[1]} + served local search", placement, flow, est]
            )
    scored = sorted(scored + searched, key=lambda row: -row[0])
    kept = _distinct(scored)[:KEEP_CANDIDATES]
    phase_s["served_search"] = clock.elapsed() - sum(phase_s.values())
    checked = _check(kept, options)
    phase_s["check"] = clock.elapsed() - sum(phase_s.values())
    best = max(checked, key=lambda row: row[5]) if checked else kept[0]
    _, source, placement, flow, est = best[:5]
    details = {
        **result.details,
        "objective": "served",
        "found_by": source,
        "served": _estimate_dict(est),
        "served_setup": _setup_dict(setup),
        "max_flow_optimum_tokens_per_s": result.flow_tokens_per_s,
        "served_candidates_scored": len(scored),
        "phase_s": {k: round(v, 2) for k, v in phase_s.items()},
        "checked_by": None if not checked else options.checker_description or "checker",
        "candidates": [_candidate(row) for row in kept],
    }
    if checked:
        details["served"]["checked_decode_tokens_per_s"] = best[5]
    return replace(
        result, placement=placement, flow=flow, details=details, elapsed_s=incumbent.clock.elapsed()
    )


def _distinct(rows):
    """Rows with distinct placements and distinct (estimate, max flow): tie moves add nothing."""
    seen, out = set(), []
    for row in rows:
        key = (round(row[0], 6), round(row[3].value_tokens_per_s, 6))
        if row[2] not in seen and key not in seen:
            seen.update((row[2], key))
            out.append(row)
    return out


def _check(kept, options: PlannerOptions):
    if options.checker is None or options.check_candidates <= 0:
        return []
    top = kept[: options.check_candidates]
    values = options.checker([row[2] for row in top])
    for row, value in zip(top, values, strict=True):
        row.append(float(value))
    return top


def _estimate_dict(est: ServedEstimate) -> dict:
    return {
        "decode_tokens_per_s": round(est.decode_tokens_per_s, 3),
        "requests_in_flight": round(est.requests_in_flight, 1),
        "ttft_s": round(est.ttft_s, 4),
        "tpot_s": round(est.tpot_s, 4),
        "binding": est.binding,
    }


def _setup_dict(setup: ServingSetup) -> dict:
    return {name: getattr(setup, name) for name in setup.__slots__}


def _candidate(row) -> dict:
    estimate, source, placement, flow, est = row[:5]
    out = {
        "source": source,
        "max_flow_tokens_per_s": flow.value_tokens_per_s,
        "served_estimate_tokens_per_s": estimate,
        "ttft_estimate_s": est.ttft_s,
        "tpot_estimate_s": est.tpot_s,
        "ranges": {n: [r.start, r.end] for n, r in placement.items()},
    }
    if len(row) > 5:
        out["checked_decode_tokens_per_s"] = row[5]
    return out
