"""The ``served`` planner objective (the default): the placement expected to serve the most decode
tokens/s with the scheduler's real admission policy, checked in the simulator where a checker is given.

1. Candidates: every distinct placement the max-flow search evaluated on its way (baselines, stage-IP
   placements at every bisection target, MILP solutions, the max-flow optimum), the KV-aware stage
   pipelines of every depth for γ/2, γ and 2γ (throughput.py), and the Parallax-style allocations. With
   several zones (regions joined by slow links) the KV-aware pipelines are built inside each zone and
   combined side by side: the best two of each zone by estimate, every combination.
2. Each is scored by the served estimate (`helix.placement.served`), computed from its evaluated max flow.
3. Local search on the estimate (the max-flow search's moves, `search._neighbour`) from the best few,
   a fixed number of evaluations (deterministic for a seed).
   Past ``options.time_limit_s`` (a safety cap) steps 1's pipelines and 3 are skipped: the estimate
   then ranks only the placements already evaluated, which include every baseline.
4. With ``options.checker`` (a callable that simulates placements and returns their decode tokens/s,
   e.g. `helix.sim.select.simulation_checker`), the best ``options.check_candidates`` by estimate are
   checked (at most two of one family: placements found the same way differ little, and the estimate
   ranks them alike) and the best checked one is returned; with ``options.confirm_checker`` too (e.g.
   more seeds), the best ``options.confirm_candidates`` by the first check are checked again by it and
   the best confirmed one is returned (only those within ``options.confirm_within`` of the best first
   check: when the best leads by more, it is returned unconfirmed). Without a checker, the best estimate.

The result's `flow` is the evaluator's max flow of the chosen placement and its bound the proven
max-flow bound; ``details["served"]`` holds the estimate (decode tokens/s, TTFT, TPOT, what binds) and
``details["candidates"]`` the ranked candidates (JSON-ready), with the checker's figures when checked.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import replace

from helix.perf.base import CapacityModel
from helix.placement.milp.incumbent import Incumbent
from helix.placement.milp.problem import Problem
from helix.placement.milp.search import _neighbour
from helix.placement.milp.throughput import ThroughputModel, throughput_candidates
from helix.placement.milp.zones import zone_problem
from helix.placement.result import PlannerOptions, PlanResult
from helix.placement.served import ServedEstimate, ServingSetup, estimate_served
from helix.specs.placement import Placement

KEEP_CANDIDATES = 8
MAX_DEPTH = 16  # deeper KV-aware pipelines lose on time per token (measured on the Helix clusters)
GAMMA_SCALES = (0.5, 1.0, 2.0)  # KV-aware pipelines for the throughput model's γ/2, γ and 2γ
PER_FAMILY = 2  # at most this many checked candidates found the same way
ZONE_CHOICES = 2  # per-zone KV-aware pipelines kept for the side-by-side combinations
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


def _kv_pipelines(problem, capacity, flow_hint) -> dict[Placement, str]:
    """KV-aware stage pipelines of every depth ≤ MAX_DEPTH for every γ scale (one zone)."""
    out: dict[Placement, str] = {}
    for gamma_scale in GAMMA_SCALES:
        model = ThroughputModel(hop_time_s=ThroughputModel().hop_time_s / gamma_scale)
        for depth, _, placement in throughput_candidates(
            problem, capacity, model, flow_hint, max_depth=MAX_DEPTH
        ):
            out.setdefault(placement, f"KV-aware stage pipelines, depth {depth}, γ×{gamma_scale:g}")
    return out


def _zone_pipelines(problem, incumbent, capacity, setup, flow_hint) -> dict[Placement, str]:
    """Per-zone KV-aware pipelines side by side: the best ZONE_CHOICES of each zone by estimate, every
    combination (zones that cannot hold the model alone take no part)."""
    per_zone = []
    for zone in range(problem.zones):
        sub = zone_problem(problem, zone)
        if sum(c.count * c.max_layers for c in sub.classes) < problem.num_layers:
            continue
        rows = []
        for placement, source in _kv_pipelines(sub, capacity, flow_hint).items():
            est, _ = _score(incumbent, placement, setup)
            if est is not None:
                rows.append((est.decode_tokens_per_s, placement, source))
        rows.sort(key=lambda row: -row[0])
        if rows:
            per_zone.append(rows[:ZONE_CHOICES])
    out: dict[Placement, str] = {}
    for combo in itertools.product(*per_zone):
        ranges = {n: r for _, placement, _ in combo for n, r in placement.items()}
        depths = "+".join(source.split("depth ")[1].split(",")[0] for _, _, source in combo)
        out.setdefault(Placement(ranges), f"KV-aware stage pipelines per zone, depths {depths}")
    return out


def _pool(problem, result, incumbent, capacity, setup) -> list[tuple[str, Placement]]:
    pool: dict[Placement, str] = {}
    for placement, source in incumbent.seen:
        pool.setdefault(placement, source)
    pool.setdefault(result.placement, "max-flow optimum")
    if incumbent.clock.left() > 0:  # stage pipelines assume links inside a zone never bind
        flow_hint = result.flow_tokens_per_s
        if problem.zones == 1:
            extra = _kv_pipelines(problem, capacity, flow_hint)
        else:
            extra = _zone_pipelines(problem, incumbent, capacity, setup, flow_hint)
        for placement, source in extra.items():
            pool.setdefault(placement, source)
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
    for source, placement in _pool(problem, result, incumbent, capacity, setup):
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
    kept = _diverse(_distinct(scored), max(KEEP_CANDIDATES, options.check_candidates))
    phase_s["served_search"] = clock.elapsed() - sum(phase_s.values())
    checked = _check(kept, options)
    confirmed = _confirm(checked, options)
    phase_s["check"] = clock.elapsed() - sum(phase_s.values())
    if confirmed:
        best = max(confirmed, key=lambda row: row[6])
    elif checked:
        best = max(checked, key=lambda row: row[5])
    else:
        best = kept[0]
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
        "confirmed_by": None if not confirmed else options.confirm_description or "confirm checker",
        "candidates": [_candidate(row) for row in kept],
    }
    if checked:
        details["served"]["checked_decode_tokens_per_s"] = best[5]
    if confirmed:
        details["served"]["confirmed_decode_tokens_per_s"] = best[6]
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


def family(source: str) -> str:
    """How a candidate was found, without its tuning: "KV-aware stage pipelines, depth 11" (any γ),
    "local search" (with or without the served search on top), "baseline parallax"…"""
    return re.sub(r", γ×[0-9.]+", "", source.split(" + ")[0]).strip()


def _diverse(rows, count: int):
    """The best `count` rows by estimate, at most PER_FAMILY of one family while others remain."""
    first, rest, per = [], [], {}
    for row in rows:
        fam = family(row[1])
        per[fam] = per.get(fam, 0) + 1
        (first if per[fam] <= PER_FAMILY else rest).append(row)
    return (first + rest)[:count]


def _check(kept, options: PlannerOptions):
    if options.checker is None or options.check_candidates <= 0:
        return []
    top = kept[: options.check_candidates]
    values = options.checker([row[2] for row in top])
    for row, value in zip(top, values, strict=True):
        row.append(float(value))
    return top


def _confirm(checked, options: PlannerOptions):
    """The best `confirm_candidates` checked rows within `options.confirm_within` of the best check, each
    with the confirm checker's value appended; none when only the best is that close (an early stop: the
    seed-to-seed spread of a simulated plan is 1-5 %, so a lead of 10 % on the first check stands)."""
    if not checked or options.confirm_checker is None or options.confirm_candidates <= 0:
        return []
    top = sorted(checked, key=lambda row: -row[5])[: options.confirm_candidates]
    close = [row for row in top if row[5] >= (1.0 - options.confirm_within) * top[0][5]]
    if len(close) == 1 < len(top):
        return []  # the others are too far behind to overtake the best
    top = close
    values = options.confirm_checker([row[2] for row in top])
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
    if len(row) > 6:
        out["confirmed_decode_tokens_per_s"] = row[6]
    return out
