"""Stage pipelines across zones joined by slow links (geo clusters).

The pipeline visits the zones in a fixed order, each zone serving one contiguous block of layers with
stages (stages.py). Where the pipeline leaves zone z for zone z' the last stage of z and the first stage
of z' must carry F over their p·q slow links, so both are *wide* stages of w = ⌈√(F/λ_min(z,z'))⌉ nodes
whose capacity reaches F (λ_min = the slowest link from z to z'). For every zone order we solve::

    Σ_stages k·z = L,  Σ_stages m_c·z ≤ n_c,  exactly one wide entry/exit stage per crossing

with interior stages as in stages.py. A solution is laid out zone by zone and checked by the evaluator
(local search then picks better-linked nodes for the crossings).
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import chain, combinations_with_replacement, islice, permutations

import numpy as np

from helix.placement.milp.problem import Problem
from helix.placement.milp.stages import (
    STAGE_IP_MAX_NODES,
    Stage,
    add_class_count_rows,
    minimal_stages,
    stage_ip,
)

MAX_WIDE = 4
MAX_ORDERS = 24


def zone_problem(problem: Problem, zone: int) -> Problem:
    """The nodes of one zone as a problem of their own (one zone, its inner links)."""
    members = tuple(replace(c, zone=0) for c in problem.classes if c.zone == zone)
    return Problem(
        problem.num_layers,
        members,
        1,
        {(0, 0): problem.zone_links.get((zone, zone), (0.0, 0.0))},
        problem.big_tokens_per_s,
        False,
    )


def wide_stages(problem: Problem, target: float, zone: int, width: int) -> list[Stage]:
    """Multisets of exactly `width` nodes of `zone` whose capacity at k layers reaches `target`."""
    members = [ci for ci, c in enumerate(problem.classes) if c.zone == zone]
    out = []
    for k in range(1, problem.num_layers + 1):
        able = [ci for ci in members if problem.classes[ci].max_layers >= k]
        for combo in combinations_with_replacement(able, width):
            if any(combo.count(ci) > problem.classes[ci].count for ci in set(combo)):
                continue
            if sum(problem.classes[ci].caps_tokens_per_s[k - 1] for ci in combo) >= target:
                out.append((k, combo))
    return out


def _width(problem: Problem, za: int, zb: int, target: float) -> int | None:
    lam = problem.zone_links.get((za, zb), (0.0, 0.0))[0]
    if lam <= 0:
        return None
    width = max(1, math.ceil(math.sqrt(target / lam) - 1e-9))
    return width if width <= MAX_WIDE else None


def solve_zone_chain(
    problem: Problem, target: float, *, time_limit_s: float, seed: int, max_size: int = 3
) -> list[Stage] | None:
    """Stages in pipeline order across several zones reaching `target`, or None."""
    # lazily: with z zones there are Σ_r z!/(z-r)! orders (10^8 for 11 zones), only MAX_ORDERS are tried
    zones = range(problem.zones)
    orders = chain.from_iterable(permutations(zones, r) for r in range(2, problem.zones + 1))
    for order in islice(orders, MAX_ORDERS):
        groups = _groups(problem, target, order, max_size)
        if groups is not None:
            chosen = _solve(problem, groups, time_limit_s=time_limit_s, seed=seed)
            if chosen is not None:
                return chosen
    return None


def _groups(
    problem: Problem, target: float, order: tuple[int, ...], max_size: int
) -> list[tuple[str, list[Stage]]] | None:
    """[(role, candidate stages)] in layout order; role 'one' = exactly one, 'any' = any number."""
    groups = []
    for p, zone in enumerate(order):
        if p > 0:
            width = _width(problem, order[p - 1], zone, target)
            if width is None:
                return None
            groups.append(("one", wide_stages(problem, target, zone, width)))
        groups.append(("any", minimal_stages(problem, target, zone, max_size)))
        if p < len(order) - 1:
            width = _width(problem, zone, order[p + 1], target)
            if width is None:
                return None
            groups.append(("one", wide_stages(problem, target, zone, width)))
    if any(role == "one" and not stages for role, stages in groups):
        return None
    return groups


def _solve(
    problem: Problem, groups: list[tuple[str, list[Stage]]], *, time_limit_s: float, seed: int
) -> list[Stage] | None:
    flat = [(g, st) for g, (_, stages) in enumerate(groups) for st in stages]
    n = len(flat)
    flat_stages = [st for _, st in flat]
    h, idx = stage_ip(
        problem, flat_stages, time_limit_s=time_limit_s, max_nodes=STAGE_IP_MAX_NODES, seed=seed
    )
    add_class_count_rows(h, problem, flat_stages, idx)
    for g, (role, _) in enumerate(groups):
        if role == "one":
            h.addRow(1, 1, n, idx, np.array([1.0 if gg == g else 0.0 for gg, _ in flat]))
    h.run()
    if h.getInfo().primal_solution_status != 2:
        return None
    values = h.getSolution().col_value
    out: list[Stage] = []
    for g in range(len(groups)):
        picked = [st for j, (gg, st) in enumerate(flat) if gg == g for _ in range(round(values[j]))]
        out.extend(sorted(picked, key=lambda st: (-st[0], st[1])))
    return out
