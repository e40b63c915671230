"""Local search on concrete placements, every candidate scored by exact max flow.

Moves (one node at a time, or a pair): shift a node's range by ±d, grow or shrink either end by one,
drop a node, give an unused node a copy of a used node's range, swap the ranges of two nodes of
different classes. Moves that keep the value are accepted (plateau walk); the best placement is
kept in the `Incumbent`. The budget is a number of evaluations, and the walk stops early after
`patience` evaluations without a strict improvement (both deterministic for a seed); the wall clock
is only a safety cap.
"""

from __future__ import annotations

import random

from helix.placement.milp.incumbent import Incumbent
from helix.placement.milp.problem import Problem
from helix.specs.placement import LayerRange, Placement


def _neighbour(
    problem: Problem,
    ranges: dict[str, LayerRange],
    rng: random.Random,
    max_layers: dict[str, int],
    names: list[str],
) -> dict[str, LayerRange] | None:
    L = problem.num_layers
    node = rng.choice(names)
    new = dict(ranges)
    move = rng.randrange(6)
    current = ranges.get(node)
    if current is None or move == 4:
        used = [n for n in names if n in ranges and n != node]
        if not used:
            return None
        other = ranges[rng.choice(used)]
        k = min(other.num_layers, max_layers[node])
        new[node] = (
            LayerRange(other.start, other.start + k)
            if rng.random() < 0.5
            else LayerRange(other.end - k, other.end)
        )
        return new
    s, e = current.start, current.end
    if move == 0:
        d = rng.choice((-2, -1, 1, 2))
        s, e = s + d, e + d
    elif move == 1:
        s += rng.choice((-1, 1))
    elif move == 2:
        e += rng.choice((-1, 1))
    elif move == 3:
        del new[node]
        return new
    else:
        other = rng.choice(names)
        if other == node or other not in ranges:
            return None
        a, b = ranges[other], current
        if a.num_layers > max_layers[node] or b.num_layers > max_layers[other]:
            return None
        new[node], new[other] = a, b
        return new
    if not (0 <= s < e <= L) or e - s > max_layers[node]:
        return None
    new[node] = LayerRange(s, e)
    return new


def local_search(
    problem: Problem,
    incumbent: Incumbent,
    *,
    rng: random.Random,
    max_evals: int,
    deadline_s: float,
    patience: int | None = None,
) -> int:
    """Improve `incumbent` in place; returns the number of evaluations made."""
    if incumbent.placement is None:
        return 0
    max_layers = {n: c.max_layers for c in problem.classes for n in c.nodes}
    names = sorted(max_layers)
    ranges = dict(incumbent.placement.ranges)
    value = incumbent.value
    evals = last_gain = 0
    patience = max_evals if patience is None else patience
    while evals < max_evals and evals - last_gain < patience and incumbent.clock.elapsed() < deadline_s:
        cand = _neighbour(problem, ranges, rng, max_layers, names)
        if cand is None:
            continue
        evals += 1
        placement = Placement(cand)
        flow = incumbent.evaluate(placement)
        if flow.value_tokens_per_s >= value - 1e-9:
            if flow.value_tokens_per_s > value + 1e-9:
                last_gain = evals
            ranges, value = cand, flow.value_tokens_per_s
            incumbent.offer(placement, "local search", flow)
    return evals
