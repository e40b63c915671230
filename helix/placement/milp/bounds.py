"""Upper bounds on the max flow of any placement that need no search.

Saturation bound. Let φ_i be the flow through node i holding k_i layers. Each unit of flow passes every
layer exactly once (at least once per layer it needs, with partial overlap), so Σ_i φ_i·k_i ≥ L·F, and
φ_i ≤ min(cap_i(k_i), F) because a node carries at most its capacity and at most the whole flow. Hence

    L·F ≤ h(F) = Σ_i max_k k·min(cap_i(k), F).

h(F)/F is non-increasing (each term k·min(cap/F, 1) is), so {F : h(F) ≥ L·F} is an interval [0, F*]
and F* is found by bisection. F* never exceeds Helix's compute bound Σ_i max_k k·cap_i(k) / L and is
usually much tighter. It holds with or without partial overlap and whatever the links are.

Coordinator cut bounds: F ≤ Σ_i (coordinator → i link capacity, capped by i's best capacity), and the
same for the links back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from helix.placement.milp.problem import Problem

# (capacity table cap(1..K), number of nodes with that table)
Tables = Sequence[tuple[Sequence[float], int]]


def class_tables(problem: Problem) -> Tables:
    """Each node class's capacity table and node count (what the bounds need of a problem)."""
    return [(c.caps_tokens_per_s, c.count) for c in problem.classes]


def tables_layer_work(tables: Tables, flow: float) -> float:
    """h(F) = Σ_i max_k k·min(cap_i(k), F) over (table, count) pairs."""
    total = 0.0
    for caps, count in tables:
        if caps:
            total += count * max(k * min(cap, flow) for k, cap in enumerate(caps, start=1))
    return total


def layer_work(problem: Problem, flow: float) -> float:
    """h(F) = Σ_i max_k k·min(cap_i(k), F)."""
    return tables_layer_work(class_tables(problem), flow)


def tables_saturation_bound(tables: Tables, num_layers: int, rel_tol: float = 1e-9) -> float:
    """The largest F with h(F) ≥ L·F over (table, count) pairs (see the module docstring)."""
    tables = [(caps, count) for caps, count in tables if caps]
    if sum(len(caps) * count for caps, count in tables) < num_layers:
        return 0.0  # the model does not fit: no placement carries any flow
    lo = 0.0
    hi = max(max(caps) for caps, _ in tables) * len(tables) * max(count for _, count in tables)
    if tables_layer_work(tables, hi) >= num_layers * hi:
        return hi
    for _ in range(200):  # ≥ 2^-200 relative resolution; F* > 0 whenever the model fits
        if hi - lo <= rel_tol * hi:
            break
        mid = (lo + hi) / 2
        if tables_layer_work(tables, mid) >= num_layers * mid:
            lo = mid
        else:
            hi = mid
    return hi * (1 + 1e-7)  # margin for float rounding at the fixed point: the bound stays valid


def saturation_bound(problem: Problem, rel_tol: float = 1e-9) -> float:
    """The largest F with h(F) ≥ L·F (see the module docstring)."""
    return tables_saturation_bound(class_tables(problem), problem.num_layers, rel_tol)


def coordinator_cut_bound(problem: Problem) -> float:
    """min(Σ source-link capacities, Σ sink-link capacities), each link capped by its node's best cap."""
    out = sum(c.count * min(c.source_cap[1], max(c.caps_tokens_per_s)) for c in problem.classes)
    back = sum(c.count * min(c.sink_cap[1], max(c.caps_tokens_per_s)) for c in problem.classes)
    return min(out, back)


def static_upper_bound(problem: Problem) -> tuple[float, str]:
    """The better of the saturation and coordinator-cut bounds, and which it was."""
    sat = saturation_bound(problem)
    cut = coordinator_cut_bound(problem)
    if cut < sat:
        return cut, "coordinator cut bound (capacity of the coordinator's links)"
    return sat, "saturation bound: L·F ≤ Σ_i max_k k·min(cap_i(k), F)"
