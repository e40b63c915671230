"""Hub chains across zones joined by slow links (a primal heuristic for geo clusters).

When no zone can hold the whole model, every token must cross a slow inter-zone link. A *hub chain*
crosses only twice, each time through one node: the pipeline runs

    coordinator → zone P on [0, a) → hub zone H on [a, a + K) → zone S on [a + K, L) → coordinator

where the hub zone's nodes form one chain h_1 → … → h_m, node h_i holding k_i layers with the largest
k_i such that cap_i(k_i) ≥ F (K = Σ k_i). All the flow enters H at h_1 and leaves at h_m, so a node
j of P ending at a sends at most λ(j, h_1) and a node j of S starting at a + K receives at most
λ(h_m, j): exactly a coordinator link of capacity λ. Zones P and S are then single clean zones (their
inner links never bind) whose coordinator links are these crossing links, i.e. exact boundary-graph
problems (boundary_milp.py) on a and L − a − K layers. For a target F::

    a*(F) = max {a : zone P's boundary MILP on a layers, exit caps λ(·, h_1), reaches F}
    feasible(F) ⇔ zone S's boundary MILP on L − a*(F) − K layers, entry caps λ(h_m, ·), reaches F

(more layers for P are never easier, so a* is found by bisection on a). Nodes of a class with
different crossing links are split into classes by λ rounded down to `LINK_STEP` tokens/s, each with
the smallest λ of its members, so every solution is realisable on the named nodes. Placements are
scored by the evaluator; the heuristic proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import permutations

from helix.placement.milp.boundary_milp import FEASIBLE, solve_at
from helix.placement.milp.problem import NodeClass, Problem
from helix.specs.placement import LayerRange, Placement

LINK_STEP = 50.0  # tokens/s: crossing links within one step share a class
Link = Callable[[str, str], float]  # link capacity src → dst in tokens/s (0 = no link)


@dataclass(frozen=True)
class HubLimits:
    """Work limits of one hub-chain search (deterministic: HiGHS node limits, not the clock)."""

    milp_nodes: int = 500
    probe_time_s: float = 2.0  # safety cap per zone MILP
    max_nodes: int = 64  # skip clusters with more nodes


def hub_applies(problem: Problem, limits: HubLimits = HubLimits()) -> bool:
    """Three or more zones, none able to hold the model alone (else one pipeline per zone is better)."""
    if problem.zones < 3 or sum(c.count for c in problem.classes) > limits.max_nodes:
        return False
    held = [0] * problem.zones
    for c in problem.classes:
        held[c.zone] += c.count * c.max_layers
    return max(held) < problem.num_layers


def hub_layers(problem: Problem, zone: int, target: float) -> dict[str, int] | None:
    """Layers per hub node: the most it holds at capacity ≥ target (None if some node cannot)."""
    out = {}
    for c in problem.classes:
        if c.zone != zone:
            continue
        able = [k for k, cap in enumerate(c.caps_tokens_per_s, start=1) if cap >= target]
        if not able:
            return None
        out.update({n: max(able) for n in c.nodes})
    return out


def crossing_problem(
    problem: Problem, zone: int, num_layers: int, link: Link, *, entry: str | None, exit: str | None
) -> Problem:
    """Zone `zone` alone on `num_layers` layers, its coordinator links replaced by the crossing links
    from `entry` / to `exit` (module docstring)."""
    big = problem.big_tokens_per_s
    groups: dict[tuple[int, float, float], list[tuple[str, float, float]]] = {}
    for ci, c in enumerate(problem.classes):
        if c.zone != zone:
            continue
        for n in c.nodes:
            src = min(big, link(entry, n)) if entry else c.source_cap[0]
            dst = min(big, link(n, exit)) if exit else c.sink_cap[0]
            key = (ci, src // LINK_STEP if entry else 0, dst // LINK_STEP if exit else 0)
            groups.setdefault(key, []).append((n, src, dst))
    classes = []
    for (ci, _, _), members in sorted(groups.items()):
        c = problem.classes[ci]
        src = min(s for _, s, _ in members)
        dst = min(d for _, _, d in members)
        names = tuple(n for n, _, _ in members)
        classes.append(
            NodeClass(f"{c.key}/{len(classes)}", c.gpu, 0, names, c.caps_tokens_per_s, (src, src), (dst, dst))
        )
    return Problem(num_layers, tuple(classes), 1, {(0, 0): (big, big)}, big, True)


def _solve(sub: Problem, target: float, limits: HubLimits, seed: int) -> dict[str, LayerRange] | None:
    if sub.num_layers == 0:
        return {}
    out = solve_at(
        sub,
        target,
        "relax",
        time_limit_s=limits.probe_time_s,
        threads=1,
        seed=seed,
        max_nodes=limits.milp_nodes,
    )
    if out.status != FEASIBLE:
        return None
    next_node = [0] * len(sub.classes)
    ranges = {}
    for col in sorted(out.counts, key=lambda c: (c.cls, c.start, c.layers)):
        for _ in range(out.counts[col]):
            ranges[sub.classes[col.cls].nodes[next_node[col.cls]]] = LayerRange(
                col.start, col.start + col.layers
            )
            next_node[col.cls] += 1
    return ranges


def hub_chain(
    problem: Problem, target: float, link: Link, *, seed: int = 0, limits: HubLimits = HubLimits()
) -> Placement | None:
    """A hub-chain placement reaching `target` in the exact zone models, or None (module docstring)."""
    L = problem.num_layers
    spans = {}
    for zone in range(problem.zones):
        layers = hub_layers(problem, zone, target)
        if layers is not None and sum(layers.values()) < L:
            spans[zone] = sum(layers.values())
    if not spans:
        return None
    hub = max(spans, key=lambda z: (spans[z], -z))  # the hub leaving the fewest layers to the others
    layers = hub_layers(problem, hub, target)
    assert layers is not None
    for pre, suf in permutations([z for z in range(problem.zones) if z != hub], 2):
        names = [n for c in problem.classes if c.zone == pre for n in c.nodes]
        after = [n for c in problem.classes if c.zone == suf for n in c.nodes]
        hubs = sorted(layers)
        first = max(hubs, key=lambda h: (sum(link(n, h) for n in names), h))
        rest = [h for h in hubs if h != first]
        last = max(rest, key=lambda h: (sum(link(h, n) for n in after), h)) if rest else first
        chain = [first] + [h for h in rest if h != last] + ([last] if last != first else [])
        span = sum(layers.values())
        lo, hi, head = 0, L - span, {}
        while lo < hi:  # a*: the longest prefix zone P reaches the target on
            mid = (lo + hi + 1) // 2
            found = _solve(
                crossing_problem(problem, pre, mid, link, entry=None, exit=first), target, limits, seed
            )
            if found is None:
                hi = mid - 1
            else:
                lo, head = mid, found
        a = lo
        tail = _solve(
            crossing_problem(problem, suf, L - a - span, link, entry=last, exit=None), target, limits, seed
        )
        if tail is None:
            continue
        ranges = dict(head)
        start = a
        for h in chain:
            ranges[h] = LayerRange(start, start + layers[h])
            start += layers[h]
        ranges.update({n: LayerRange(r.start + start, r.end + start) for n, r in tail.items()})
        return Placement(ranges)
    return None
