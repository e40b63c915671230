"""`milp_plan`: the default placement method.

1. Aggregate interchangeable nodes into classes and zones (problem.py); reject infeasible inputs.
2. Warm start: every baseline, scored by the evaluator. Bound: the saturation bound (bounds.py).
3. Stage heuristic (stages.py): bisect on the target flow F with a tiny stage IP — milliseconds each.
   Then the layer-cover bound (cover_bound.py): bisect on F between the incumbent and the bound with a
   configuration LP in which every layer is covered by whole nodes (a fraction of a second each).
4. Boundary MILP (boundary_milp.py): bisect on F. An infeasible ``relax`` model at F proves that no
   placement reaches F (the bound drops to F); feasible models give placements, realised on concrete
   nodes and scored by the evaluator. When the model is exact one solve serves both purposes. With
   ``options.partial_overlap`` the model has entry flows (nodes entered past their first layer), so it
   plans overlapping ranges and its bounds hold for partial-overlap chaining.
   With several zones and none able to hold the model: hub chains (hub_chain.py), zone → one chain of
   hub-zone nodes → zone, each outer zone an exact boundary MILP with the crossing links as its
   coordinator links.
5. Local search (search.py) on the incumbent, until it stagnates.
6. With ``options.objective == "throughput"``: KV-aware stage pipelines (throughput.py) and the max-flow
   placement are scored by the KV / pipeline-depth estimate and the best is returned.

Every reported flow is the evaluator's; the bound is proven (the saturation bound or an infeasible
relaxation at F). Search stops when (bound − flow)/bound ≤ ``options.mip_gap`` or when the work budget
(`WorkBudget`: bisection probes, HiGHS branch-and-bound nodes, local-search evaluations) is spent, so a
run is deterministic for a seed. ``options.time_limit_s`` is only a safety cap; when it cuts a run the
result says so (``details["stopped_by"]``) and may then differ between runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from helix.errors import HelixInputError
from helix.flow.graph import FlowOptions
from helix.perf.base import CapacityModel
from helix.placement.milp.boundary_milp import FEASIBLE, INFEASIBLE, Column, entry_count, solve_at
from helix.placement.milp.bounds import class_tables, saturation_bound, static_upper_bound
from helix.placement.milp.cover_bound import cover_at
from helix.placement.milp.hub_chain import hub_applies, hub_chain
from helix.placement.milp.incumbent import Clock, Incumbent
from helix.placement.milp.objective import OBJECTIVES, choose_for_throughput
from helix.placement.milp.problem import Problem, build_problem, check_feasible
from helix.placement.milp.search import local_search
from helix.placement.milp.served_objective import choose_for_served
from helix.placement.milp.solver_log import solver_output_to
from helix.placement.milp.stages import solve_stages, stages_to_placement
from helix.placement.milp.zones import solve_zone_chain, zone_problem
from helix.placement.result import PlannerOptions, PlanResult
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

RELAX_BOUND = "boundary-graph MILP relaxation infeasible above this flow (HiGHS)"
COVER_BOUND = "layer-cover LP infeasible above this flow (whole nodes cover each layer)"


@dataclass(frozen=True)
class WorkBudget:
    """Deterministic work limits of one planning run (the wall clock is only a safety cap)."""

    bisection_steps: int = 30  # stage-IP bisection steps on F (2^-30 relative resolution)
    cover_probes: int = 16  # layer-cover LP bisection steps on F (each a column generation)
    milp_probes: int = 24  # boundary-MILP solves (exact model)
    inexact_probes: int = 4  # bound-only probes when links bind (geo clusters)
    milp_nodes: int = 2000  # HiGHS branch-and-bound nodes per boundary-MILP solve
    large_above_classes: int = 4  # with more node classes than this, each node costs far more
    large_milp_nodes: int = 10
    max_columns: int = 10_000  # skip the boundary MILP on larger aggregated models
    max_inexact_columns: int = 5_000  # bound-only probes above this cost tens of seconds each at the root
    max_entries: int = 60_000  # partial overlap: entry-flow variables of the boundary MILP, at most
    probe_time_s: float = 20.0  # safety cap per boundary-MILP probe (the root LP can take minutes)
    boundary_share: float = 0.6  # the boundary phase starts no probe past this share of the time limit
    undecided_probes: int = 4  # undecided probes before the boundary phase stops
    near_gap: float = 0.02  # below this relative gap, bisect (and first ask whether the incumbent is optimal)
    local_search_work: int = 40_000  # patience = this / nodes evaluations (an evaluation costs ~ nodes)
    local_search_patience: int = 3_000  # at most this many evaluations without improvement, then stop
    local_search_rounds: int = 10  # evaluation budget = rounds · patience
    hub_aims: tuple[float, ...] = (0.975, 0.985, 0.965)  # hub chains aim below a capacity level (slack)
    hub_share: float = 0.5  # no hub-chain target is started past this share of the time limit


WORK = WorkBudget()


def counts_to_placement(problem: Problem, counts: dict[Column, int]) -> Placement:
    """Give every (class, start, layers) slot of a MILP solution a concrete node of that class."""
    next_node = [0] * len(problem.classes)
    ranges = {}
    for col in sorted(counts, key=lambda c: (c.cls, c.start, c.layers)):
        for _ in range(counts[col]):
            cls = problem.classes[col.cls]
            ranges[cls.nodes[next_node[col.cls]]] = LayerRange(col.start, col.start + col.layers)
            next_node[col.cls] += 1
    return Placement(ranges)


def _warm_start(
    incumbent: Incumbent, cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, seed: int
) -> None:
    from helix.placement.baselines import BASELINES

    for name, baseline in sorted(BASELINES.items()):
        try:
            placement = baseline(cluster, model, capacity, seed=seed)
            incumbent.offer(placement, f"baseline {name}")
        except (HelixInputError, ValueError):
            continue  # a baseline that does not apply to this cluster


def _done(incumbent: Incumbent, options: PlannerOptions) -> bool:
    return incumbent.gap() <= options.mip_gap or incumbent.clock.elapsed() >= options.time_limit_s


def _stage_phase(problem: Problem, incumbent: Incumbent, options: PlannerOptions) -> None:
    lo, hi = incumbent.value, incumbent.bound
    for _ in range(WORK.bisection_steps):
        if hi - lo <= options.mip_gap * hi or _done(incumbent, options):
            break
        target = (lo + hi) / 2
        limit_s = incumbent.clock.left()
        stages = solve_stages(problem, target, time_limit_s=limit_s, seed=options.seed)
        if stages is None and problem.zones > 1:
            stages = solve_zone_chain(problem, target, time_limit_s=limit_s, seed=options.seed)
        value = incumbent.offer(stages_to_placement(problem, stages), "stage IP") if stages else 0.0
        if value >= target:
            lo = value
        else:
            hi = target


def _cover_phase(problem: Problem, incumbent: Incumbent, options: PlannerOptions) -> int:
    """Bisect on F between the incumbent (reachable, so feasible for the relaxation) and the bound with
    the layer-cover LP; an infeasible F is a proven bound. Returns the probes made."""
    tables = class_tables(problem)
    lo, probes = incumbent.value, 0
    while probes < WORK.cover_probes and not _done(incumbent, options):
        hi = incumbent.bound
        if hi - lo <= options.mip_gap * hi:
            break
        target = (lo + hi) / 2
        probes += 1
        if cover_at(tables, problem.num_layers, target).status == INFEASIBLE:
            incumbent.tighten(target, COVER_BOUND)
        else:
            lo = target
    return probes


def _parallel_zones_phase(problem: Problem, incumbent: Incumbent, options: PlannerOptions) -> None:
    """One stage pipeline per zone, side by side (coordinator links are fast): bisect each zone alone."""
    combined: dict[str, LayerRange] = {}
    for zone in range(problem.zones):
        sub = zone_problem(problem, zone)
        if sum(c.count * c.max_layers for c in sub.classes) < problem.num_layers:
            continue
        lo, hi, best = 0.0, saturation_bound(sub), None
        for _ in range(WORK.bisection_steps):
            if hi - lo <= options.mip_gap * hi or _done(incumbent, options):
                break
            target = (lo + hi) / 2
            stages = solve_stages(sub, target, time_limit_s=incumbent.clock.left(), seed=options.seed)
            if stages is None:
                hi = target
            else:
                lo, best = target, stages_to_placement(sub, stages)
        if best is not None:
            combined.update(best.ranges)
    if combined:
        incumbent.offer(Placement(combined), "stage IP, one pipeline set per zone")


def _hub_phase(
    problem: Problem, incumbent: Incumbent, options: PlannerOptions, cluster: ClusterSpec, model: ModelSpec
) -> int:
    """Hub chains (hub_chain.py) when no zone holds the model: aim a little below each node capacity
    level between the incumbent and the bound (`WorkBudget.hub_aims`; a hub chain carries at most such
    a level), highest first, until one is reached. Returns the targets tried."""
    if not hub_applies(problem):
        return 0
    act = model.activation_bytes_per_token

    def link(src: str, dst: str) -> float:
        found = cluster.link(src, dst)
        return 0.0 if found is None else found.bandwidth_bytes_per_s / act

    levels = {cap for c in problem.classes for cap in c.caps_tokens_per_s}
    tried = 0
    for level in sorted(levels, reverse=True):
        for aim in WORK.hub_aims:
            target = aim * level
            if level > incumbent.bound or target <= incumbent.value:
                continue
            if (
                _done(incumbent, options)
                or incumbent.clock.elapsed() >= WORK.hub_share * options.time_limit_s
            ):
                return tried
            tried += 1
            placement = hub_chain(problem, target, link, seed=options.seed)
            if placement is not None and incumbent.offer(placement, "hub chain") >= target:
                return tried
    return tried


def _patience(problem: Problem) -> int:
    nodes = sum(c.count for c in problem.classes)
    return max(50, min(WORK.local_search_patience, WORK.local_search_work // nodes))


def _max_skip(problem: Problem, options: PlannerOptions) -> int | None:
    """Partial overlap: every entry boundary (None) when the model stays small, else the largest skip
    that keeps it under `WorkBudget.max_entries` entry flows (a restriction: no longer a bound)."""
    if entry_count(problem) <= WORK.max_entries:
        return None
    skip = max(c.max_layers for c in problem.classes)
    while skip > 0 and entry_count(problem, skip) > WORK.max_entries:
        skip //= 2
    return skip


def _solve(
    problem: Problem,
    incumbent: Incumbent,
    options: PlannerOptions,
    target: float,
    mode: str,
    max_skip: int | None = None,
):
    return solve_at(
        problem,
        target,
        mode,
        time_limit_s=min(
            incumbent.clock.left(),
            WORK.probe_time_s,
            WORK.boundary_share * options.time_limit_s - incumbent.clock.elapsed(),
        ),
        threads=options.threads,
        seed=options.seed,
        max_nodes=WORK.milp_nodes
        if len(problem.classes) <= WORK.large_above_classes
        else WORK.large_milp_nodes,
        partial_overlap=options.partial_overlap,
        max_skip=max_skip,
    )


def _boundary_phase(problem: Problem, incumbent: Incumbent, options: PlannerOptions) -> dict[str, int]:
    """Bisect on F with the boundary MILP (work-limited, see `WorkBudget`).

    Exact model: each probe is primal and dual at once. Inexact model (slow links): only bound probes
    (``relax``), at most `WorkBudget.inexact_probes` — the ``restrict`` model's root alone costs tens of
    seconds there and has not beaten the stage heuristics. A probe that ends undecided (node budget or
    `WorkBudget.probe_time_s` spent) moves the next probe halfway up to the bound: near the bound HiGHS
    proves integer infeasibility at the root in seconds where probes near the optimum do not finish;
    after `WorkBudget.undecided_probes` undecided probes the phase stops.
    """
    # with partial overlap the model has entry flows; all of them keep it a relaxation (a bound)
    max_skip = _max_skip(problem, options) if options.partial_overlap else None
    bound_ok = max_skip is None
    stats = {"milp_solves": 0, "milp_undecided": 0}
    if options.partial_overlap:
        stats["partial_overlap_max_skip"] = max_skip
    budget = WORK.milp_probes if problem.exact else WORK.inexact_probes
    max_columns = WORK.max_columns if problem.exact else WORK.max_inexact_columns
    if not bound_ok and not problem.exact or problem.num_columns() > max_columns:
        return stats
    ceiling = incumbent.bound  # probes above this failed
    floor = incumbent.value  # below here the relaxation is feasible, or could not be decided
    first = True
    share_s = WORK.boundary_share * options.time_limit_s  # the local search keeps the rest
    while not _done(incumbent, options) and stats["milp_solves"] < budget:
        if incumbent.clock.elapsed() >= share_s:
            break
        low = max(floor, incumbent.value)
        if ceiling - low <= options.mip_gap * ceiling:
            break
        # the first probe asks "is the incumbent optimal?"; later ones bisect when the gap is small, else
        # go a quarter of the way down from the bound, where integer infeasibility is proven soonest
        near = ceiling - low <= WORK.near_gap * ceiling
        if first and problem.exact:
            target = incumbent.value * (1 + options.mip_gap)
        elif near:
            target = (low + ceiling) / 2
        else:
            target = ceiling - (ceiling - low) / 4
        first = False
        out = _solve(problem, incumbent, options, target, "relax", max_skip)
        stats["milp_solves"] += 1
        if out.status == FEASIBLE and problem.exact:
            incumbent.offer(counts_to_placement(problem, out.counts), "boundary MILP")
        if out.status == INFEASIBLE:
            if bound_ok:
                incumbent.tighten(target, RELAX_BOUND)
            ceiling = min(target, incumbent.bound)
        elif out.status == FEASIBLE:
            floor = target if not problem.exact else floor
            if problem.exact and incumbent.value < target:
                ceiling = target  # realised below the target: treat as a failed primal probe
        else:
            # undecided (node or time budget spent): probes nearer the optimum are harder, so the
            # next one is tried further up, where integer infeasibility shows sooner
            stats["milp_undecided"] += 1
            floor = target
            if stats["milp_undecided"] >= WORK.undecided_probes:
                break
    return stats


def milp_plan(
    cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, options: PlannerOptions
) -> PlanResult:
    """Plan a placement (module docstring); returns the best evaluated placement and a proven bound.

    The solver's console output goes to ``options.solver_log`` (or nowhere), never to the terminal."""
    with solver_output_to(options.solver_log):
        result = _milp_plan(cluster, model, capacity, options)
    if options.solver_log:
        result = replace(result, details={**result.details, "solver_log": str(options.solver_log)})
    return result


def _milp_plan(
    cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, options: PlannerOptions
) -> PlanResult:
    if options.objective not in OBJECTIVES:
        raise HelixInputError(
            f"unknown planner objective {options.objective!r}",
            field="objective",
            fix=f"use one of {OBJECTIVES}",
        )
    clock = Clock(options.time_limit_s)
    problem = build_problem(cluster, model, capacity)
    check_feasible(problem, cluster, model)
    incumbent = Incumbent(
        cluster, model, capacity, FlowOptions(options.partial_overlap), clock, options.progress
    )
    _warm_start(incumbent, cluster, model, capacity, options.seed)
    incumbent.tighten(*static_upper_bound(problem))
    baseline_value = incumbent.value
    _stage_phase(problem, incumbent, options)
    hub_targets = 0
    if problem.zones > 1:
        _parallel_zones_phase(problem, incumbent, options)
        hub_targets = _hub_phase(problem, incumbent, options, cluster, model)
    cover_probes = _cover_phase(problem, incumbent, options)
    # the served objective needs candidates, not a max-flow proof: the boundary MILP is skipped there
    stats = (
        _boundary_phase(problem, incumbent, options)
        if options.objective != "served"
        else {"milp_solves": 0, "milp_undecided": 0}
    )
    evals = 0
    if not _done(incumbent, options) and incumbent.placement is not None:
        evals = local_search(
            problem,
            incumbent,
            rng=random.Random(options.seed),
            max_evals=WORK.local_search_rounds * _patience(problem),
            patience=_patience(problem),
            deadline_s=options.time_limit_s,
        )
    stats = {**stats, "cover_probes": cover_probes, "hub_targets": hub_targets, "local_search_evals": evals}
    if incumbent.gap() <= options.mip_gap:
        stopped_by = "gap reached (proven optimal within mip_gap)"
    elif incumbent.clock.elapsed() >= options.time_limit_s:
        stopped_by = "time limit (safety cap: the run may differ between runs)"
    else:
        stopped_by = "work budget spent or search stagnated (deterministic)"
    result = _result(problem, incumbent, options, baseline_value, stats, stopped_by)
    if options.objective == "throughput":
        return choose_for_throughput(problem, result, incumbent, capacity)
    if options.objective == "served":
        return choose_for_served(problem, result, incumbent, capacity, options)
    return result


def _result(
    problem: Problem,
    incumbent: Incumbent,
    options: PlannerOptions,
    baseline_value: float,
    stats: dict[str, int],
    stopped_by: str,
) -> PlanResult:
    if incumbent.placement is None or incumbent.flow is None:
        raise HelixInputError(
            "no placement carries any flow: every chain of nodes from the coordinator "
            "back to it is missing a link or memory",
            field="cluster",
            fix="check the cluster's links and node memory",
        )
    warnings = []
    if incumbent.source.startswith("baseline") and incumbent.gap() > options.mip_gap:
        why = (
            f"the time limit ({options.time_limit_s:g} s) expired before the search improved"
            if stopped_by.startswith("time limit")
            else "the search, within its work budget, found nothing better than"
        )
        warnings.append(f"{why} the best baseline ({incumbent.source[len('baseline ') :]})")
    used = set(incumbent.placement)
    unused = sorted(n for c in problem.classes for n in c.nodes if n not in used)
    details = {
        "found_by": incumbent.source,
        "baseline_tokens_per_s": baseline_value,
        "unused_nodes": unused,
        "classes": len(problem.classes),
        "zones": problem.zones,
        "exact_model": problem.exact,
        "stopped_by": stopped_by,
        "objective": options.objective,
        "history": incumbent.history,
        **stats,
    }
    return PlanResult(
        placement=incumbent.placement,
        flow=incumbent.flow,
        method="milp",
        upper_bound_tokens_per_s=incumbent.bound,
        bound_source=incumbent.bound_source,
        elapsed_s=incumbent.clock.elapsed(),
        time_to_best_s=incumbent.found_at_s,
        warnings=tuple(warnings),
        details=details,
    )
