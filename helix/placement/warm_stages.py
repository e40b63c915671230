"""A stage-path integer program that reuses the layers already resident (the warm start's main candidate).

Where the cluster is one zone of never-binding links (`Problem.exact`), a stage placement (stages of
nodes holding one identical range, tiling [0, L)) carries min over stages of the stage's capacity.
For a target flow F the stages are the minimal node multisets m of
`helix.placement.milp.stages.minimal_stages` whose capacity at k layers reaches F; a column is such a
stage laid at layers [a, a + k). Its cost is the layers its nodes must load: for each class c, the
m[c] smallest values of |[a, a+k) \\ P⁰_n| over the nodes n of class c (P⁰ = the placement served)::

    y[a, s] ∈ {0, 1}   stage s laid at [a, a + k_s)
    minimise Σ cost(a, s)·y[a, s]
    (1) Σ_{s} y[0, s] = 1;   Σ_{columns ending at b} y = Σ_{columns starting at b} y   for 0 < b < L
    (2) Σ m_s[c]·y[a, s] ≤ n_c                                                        for every class c

(1) makes the columns one path of stages from layer 0 to L, (2) keeps within the nodes of each class.
The cost counts each node's resident layers once per column, so it is a lower bound until
`warm_start.align` gives concrete nodes; the caller re-evaluates the flow.
"""

from __future__ import annotations

import time
from collections import Counter

import highspy
import numpy as np

from helix.placement.milp.problem import Problem
from helix.placement.milp.stages import Stage, minimal_stages
from helix.specs.placement import LayerRange, Placement

MAX_DIVES = 200  # LP re-solves per dive (the work budget)


def _load_tables(problem: Problem, previous: Placement, partial: bool = True) -> list[np.ndarray]:
    """Per class: table[a, k-1, i] = sum of the i smallest loads of [a, a+k) over the class's nodes."""
    L = problem.num_layers
    tables = []
    for cls in problem.classes:
        olds = [previous.get(n) for n in cls.nodes]
        os_ = np.array([o.start if o else 0 for o in olds])
        oe = np.array([o.end if o else 0 for o in olds])
        K = cls.max_layers
        table = np.zeros((L, K, cls.count + 1))
        for k in range(1, K + 1):
            a = np.arange(L)[:, None]
            b = a + k
            if partial:
                load = k - np.clip(np.minimum(b, oe[None, :]) - np.maximum(a, os_[None, :]), 0, None)
            else:
                load = np.where((a == os_[None, :]) & (b == oe[None, :]), 0, k)
            table[:, k - 1, 1:] = np.cumsum(np.sort(load, axis=1), axis=1)
        tables.append(table)
    return tables


def as_stages(problem: Problem, placement: Placement) -> list[tuple[int, Stage]] | None:
    """`placement` as (start, stage) pairs if it is a tiling of [0, L) by stages, else None."""
    cls_of = {n: ci for ci, c in enumerate(problem.classes) for n in c.nodes}
    groups: dict[LayerRange, list[int]] = {}
    for node, r in placement.items():
        groups.setdefault(r, []).append(cls_of[node])
    at, out = 0, []
    for r, members in sorted(groups.items()):
        if r.start != at:
            return None
        out.append((r.start, (r.num_layers, tuple(sorted(members)))))
        at = r.end
    return out if at == problem.num_layers else None


def reuse_stages(
    problem: Problem,
    previous: Placement,
    target: float,
    *,
    time_limit_s: float,
    start: list[tuple[int, Stage]] | None = None,
    max_size: int = 3,
    partial: bool = True,
) -> list[tuple[int, Stage]] | None:
    """(start layer, stage) pairs tiling [0, L) that reach `target` with the fewest layers to load.
    `start`, a known tiling reaching `target` (e.g. a fresh plan), is added as columns."""
    if problem.zones != 1:
        return None
    cands = minimal_stages(problem, target, 0, max_size)
    extra = [] if start is None else [st for _, st in start if st not in set(cands)]
    cands = cands + sorted(set(extra))
    if not cands:
        return None
    L = problem.num_layers
    tables = _load_tables(problem, previous, partial)
    cols: list[tuple[int, int]] = []
    cost: list[float] = []
    for s, (k, m) in enumerate(cands):
        counts = Counter(m)
        for a in range(L - k + 1):
            cols.append((a, s))
            cost.append(sum(tables[c][a, k - 1, cnt] for c, cnt in counts.items()))
    n = len(cols)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    idx = np.arange(n, dtype=np.int32)
    h.addVars(n, np.zeros(n), np.ones(n))  # the LP relaxation; `_dive` makes it integral
    h.changeColsCost(n, idx, np.array(cost, float))
    starts = np.array([a for a, _ in cols])
    ends = np.array([a + cands[s][0] for a, s in cols])
    # Constraint (1): one path of stages from 0 to L
    first = np.flatnonzero(starts == 0).astype(np.int32)
    h.addRow(1, 1, len(first), first, np.ones(len(first)))
    for b in range(1, L):
        into, out = np.flatnonzero(ends == b), np.flatnonzero(starts == b)
        both = np.concatenate([into, out]).astype(np.int32)
        if len(both):
            h.addRow(0, 0, len(both), both, np.concatenate([np.ones(len(into)), -np.ones(len(out))]))
    # Constraint (2): class counts
    for ci, cls in enumerate(problem.classes):
        use = np.array([cands[s][1].count(ci) for _, s in cols], float)
        nz = np.flatnonzero(use).astype(np.int32)
        if len(nz):
            h.addRow(0, cls.count, len(nz), nz, use[nz])
    values = _dive(h, n, time_limit_s)
    if values is None:
        return None
    return sorted((cols[i][0], cands[cols[i][1]]) for i in range(n) if values[i] > 0.5)


def _dive(h: highspy.Highs, n: int, time_limit_s: float) -> np.ndarray | None:
    """LP diving: solve the relaxation, fix the most nearly integral fractional column at 1 (or, if
    that makes the LP infeasible, at 0), repeat until the LP solution is integral."""
    deadline = time.perf_counter() + time_limit_s
    fixed_one: list[int] = []
    for _ in range(MAX_DIVES):
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            if not fixed_one:
                return None
            last = fixed_one.pop()
            h.changeColBounds(last, 0.0, 0.0)  # backtrack: forbid the last fixed column
            continue
        values = np.array(h.getSolution().col_value)
        frac = np.flatnonzero((values > 1e-6) & (values < 1 - 1e-6))
        if len(frac) == 0:
            return values
        if time.perf_counter() >= deadline:
            return None
        pick = int(frac[np.argmax(values[frac])])
        h.changeColBounds(pick, 1.0, 1.0)
        fixed_one.append(pick)
    return None


def lay_out(problem: Problem, chosen: list[tuple[int, Stage]]) -> Placement:
    """Each class slot of each stage gets a concrete node (`warm_start.align` then re-labels them)."""
    next_node = [0] * len(problem.classes)
    ranges = {}
    for a, (k, combo) in chosen:
        for ci in combo:
            ranges[problem.classes[ci].nodes[next_node[ci]]] = LayerRange(a, a + k)
            next_node[ci] += 1
    return Placement(ranges)
