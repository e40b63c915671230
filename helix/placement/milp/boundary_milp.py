"""The boundary-graph feasibility MILP at a fixed target flow F (HiGHS).

A node holding [s, s+k) is an arc s → s+k on the line of layer boundaries 0..L. For a node class c
(problem.py) the integer x[c,s,k] ∈ [0, n_c] counts its nodes holding [s, s+k) and f[c,s,k] ≥ 0 is the
flow they carry. For a target F::

    Σ_{s,k} x[c,s,k] ≤ n_c                                       (nodes; unused nodes allowed)
    f[c,s,k] ≤ w[c,s,k]·x[c,s,k],  w = min(cap_c(k), F, coordinator link if s = 0 or s+k = L)
    Σ_{arcs of zone z ending at b} f + Σ_z' y[z',z,b] = Σ_{arcs of z starting at b} f + Σ_z' y[z,z',b]
    Σ_{c,k} f[c,0,k] ≥ F
    Σ_{arcs covering layer ℓ} w·x ≥ F  for every layer ℓ   (cover cuts, implied by the flows)

y[z,z',b] ≥ 0 is flow crossing from zone z to zone z' at boundary b. Capping capacities at F is what
makes the LP relaxation useful (an arc of one node can never carry more than the whole flow), and the
integer counts remove the symmetry between interchangeable nodes. Memory is in the column set (k ≤ K_c).

Two variants differ only in how crossings between zones are limited, with E_z[b] / S_z[b] the number
of zone-z nodes ending / starting at b and λ_min / λ_max the slowest / fastest link between the zones:

- ``relax``: y ≤ λ_max·n_z'·E_z[b] and y ≤ λ_max·n_z·S_z'[b]; coordinator arcs use the fastest link of
  the class. Every real placement and flow satisfies this, so *infeasible at F proves no placement
  reaches F* (a valid upper bound).
- ``restrict``: y ≤ λ_min·E_z[b] and y ≤ λ_min·S_z'[b] (each crossing node uses about one slow link);
  coordinator arcs use the slowest link. Its solutions are realised and checked by the evaluator.

With one zone and never-binding links both variants coincide with the exact problem (problem.py).

Partial overlap (``partial_overlap=True``: a node holding [s, e) may be entered at any boundary
b ∈ [s, e) and skip the layers before b, the chaining rule s_j ≤ e_i < e_j of `helix.flow.graph.chains`).
Each column gets entry flows g[c,s,k,b] ≥ 0, one per entry boundary b, and

    Σ_b g[c,s,k,b] = f[c,s,k]                                    (all its flow enters somewhere)
    Σ_{arcs of zone z ending at b} f + Σ_z' y[z',z,b] = Σ_{entries of zone z at b} g + Σ_z' y[z,z',b]
    Σ g[c,0,k,0] ≥ F,   g[c,0,k,0] ≤ (coordinator link)·x[c,0,k]

with the node capacity cap_c(k) on f (Helix's convention: a node's capacity is that of the layers it
holds, whichever it skips) and the crossing limits counting the nodes *entered* at b. Every flow on the
node graph maps onto this model and back when links never bind (one clean zone: the boundary is a hub
every node reaches), so with every entry boundary the model stays exact — its infeasibility at F proves
no partial-overlap placement reaches F. `max_skip` keeps only entries b ≤ s + max_skip (a smaller
restriction, not a bound). The layer cover cuts stay valid: every token is processed at layer ℓ by one
node holding ℓ.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from helix.placement.milp.problem import Problem

FEASIBLE, INFEASIBLE, UNKNOWN = "feasible", "infeasible", "unknown"


@dataclass(frozen=True)
class Column:
    cls: int
    start: int
    layers: int


@dataclass(frozen=True)
class SolveOutcome:
    """status: feasible / infeasible / unknown; counts: column → nodes (when feasible)."""

    status: str
    counts: dict[Column, int]
    seconds: float
    nodes: int


def columns(problem: Problem) -> list[Column]:
    L = problem.num_layers
    return [
        Column(ci, s, k)
        for ci, c in enumerate(problem.classes)
        for s in range(L)
        for k in range(1, min(c.max_layers, L - s) + 1)
    ]


class _Rows:
    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.starts: list[int] = []
        self.index: list[int] = []
        self.value: list[float] = []

    def add(self, lower: float, upper: float, terms: list[tuple[int, float]]) -> None:
        self.lower.append(lower)
        self.upper.append(upper)
        self.starts.append(len(self.index))
        for i, v in terms:
            self.index.append(i)
            self.value.append(v)


def _arc_weight(problem: Problem, col: Column, target: float, mode: str, with_source: bool = True) -> float:
    cls = problem.classes[col.cls]
    pick = 1 if mode == "relax" else 0
    w = min(cls.caps_tokens_per_s[col.layers - 1], target)
    if col.start == 0 and with_source:
        w = min(w, cls.source_cap[pick])
    if col.start + col.layers == problem.num_layers:
        w = min(w, cls.sink_cap[pick])
    return w


def _entry_boundaries(col: Column, max_skip: int | None) -> range:
    """Boundaries where a node holding the column's range may be entered (partial overlap)."""
    last = (
        col.start + col.layers if max_skip is None else min(col.start + col.layers, col.start + max_skip + 1)
    )
    return range(col.start, last)


def entry_count(problem: Problem, max_skip: int | None = None) -> int:
    """Entry-flow variables of the partial-overlap model."""
    return sum(len(_entry_boundaries(c, max_skip)) for c in columns(problem))


def _crossings(problem: Problem, mode: str) -> list[tuple[int, int, float]]:
    out = []
    for (za, zb), (lo, hi) in sorted(problem.zone_links.items()):
        lam = hi if mode == "relax" else lo
        if za != zb and lam > 0:
            out.append((za, zb, lam))
    return out


def solve_at(
    problem: Problem,
    target: float,
    mode: str,
    *,
    time_limit_s: float,
    threads: int,
    seed: int,
    max_nodes: int = 20000,
    partial_overlap: bool = False,
    max_skip: int | None = None,
    integer: bool = True,
) -> SolveOutcome:
    """Is there a placement with flow ≥ `target` in the `mode` model? (see the module docstring)

    ``integer=False`` solves the LP relaxation (node counts continuous): infeasible still proves that no
    placement reaches `target` (when the model is a relaxation), feasible proves nothing."""
    cols = columns(problem)
    n = len(cols)
    L = problem.num_layers
    cross = _crossings(problem, mode)
    crossing_vars = [(za, zb, lam, b) for za, zb, lam in cross for b in range(1, L)]
    counts = [problem.classes[c.cls].count for c in cols]
    src_caps = [_arc_weight(problem, c, target, mode) for c in cols]  # with the coordinator link
    if partial_overlap:  # the source link limits only the flow entering at 0
        weights = [_arc_weight(problem, c, target, mode, with_source=False) for c in cols]
        entries = [(j, b) for j, c in enumerate(cols) for b in _entry_boundaries(c, max_skip)]
    else:
        weights = src_caps
        entries = []
    base = 2 * n + len(crossing_vars)  # entry-flow variables follow the crossings
    num_vars = base + len(entries)
    upper = np.array(
        counts
        + [w * m for w, m in zip(weights, counts, strict=True)]
        + [target] * len(crossing_vars)
        + [weights[j] * counts[j] for j, _ in entries]
    )
    rows = _Rows()
    for ci, cls in enumerate(problem.classes):
        rows.add(-highspy.kHighsInf, cls.count, [(j, 1.0) for j, c in enumerate(cols) if c.cls == ci])
    for j, w in enumerate(weights):
        rows.add(-highspy.kHighsInf, 0.0, [(n + j, 1.0), (j, -w)])
    ends: dict[tuple[int, int], list[int]] = {}
    begins: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (zone, b) → [(column, flow variable)]
    for j, c in enumerate(cols):
        zone = problem.classes[c.cls].zone
        ends.setdefault((zone, c.start + c.layers), []).append(j)
        if not partial_overlap:
            begins.setdefault((zone, c.start), []).append((j, n + j))
    if partial_overlap:
        by_column: dict[int, list[int]] = {}
        for v, (j, b) in enumerate(entries):
            begins.setdefault((problem.classes[cols[j].cls].zone, b), []).append((j, base + v))
            by_column.setdefault(j, []).append(base + v)
        for j in range(n):
            rows.add(0.0, 0.0, [(n + j, 1.0)] + [(v, -1.0) for v in by_column.get(j, [])])
        for v, (j, b) in enumerate(entries):
            if b == 0 and src_caps[j] < weights[j]:
                rows.add(-highspy.kHighsInf, 0.0, [(base + v, 1.0), (j, -src_caps[j])])
    for zone in range(problem.zones):
        for b in range(1, L):
            terms = [(n + j, 1.0) for j in ends.get((zone, b), [])]
            terms += [(var, -1.0) for _, var in begins.get((zone, b), [])]
            for v, (za, zb, _, bb) in enumerate(crossing_vars):
                if bb == b and zb == zone:
                    terms.append((2 * n + v, 1.0))
                if bb == b and za == zone:
                    terms.append((2 * n + v, -1.0))
            rows.add(0.0, 0.0, terms)
    zone_size = [0] * problem.zones
    for cls in problem.classes:
        zone_size[cls.zone] += cls.count
    for v, (za, zb, lam, b) in enumerate(crossing_vars):
        mult_e, mult_s = (zone_size[zb], zone_size[za]) if mode == "relax" else (1, 1)
        rows.add(
            -highspy.kHighsInf, 0.0, [(2 * n + v, 1.0)] + [(j, -lam * mult_e) for j in ends.get((za, b), [])]
        )
        entered = sorted({j for j, _ in begins.get((zb, b), [])})
        rows.add(-highspy.kHighsInf, 0.0, [(2 * n + v, 1.0)] + [(j, -lam * mult_s) for j in entered])
    rows.add(
        target,
        highspy.kHighsInf,
        [(var, 1.0) for zone in range(problem.zones) for _, var in begins.get((zone, 0), [])],
    )
    for layer in range(L):  # layer cover cuts: implied by the flows, but they guide branching a lot
        rows.add(
            target,
            highspy.kHighsInf,
            [
                (j, w)
                for j, (c, w) in enumerate(zip(cols, weights, strict=True))
                if c.start <= layer < c.start + c.layers
            ],
        )
    return _run(
        cols,
        num_vars,
        upper,
        rows,
        time_limit_s=time_limit_s,
        threads=threads,
        seed=seed,
        max_nodes=max_nodes,
        integer=integer,
    )


def _run(
    cols: list[Column],
    num_vars: int,
    upper: np.ndarray,
    rows: _Rows,
    *,
    time_limit_s: float,
    threads: int,
    seed: int,
    max_nodes: int,
    integer: bool = True,
) -> SolveOutcome:
    n = len(cols)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", max(0.01, time_limit_s))
    h.setOptionValue("random_seed", seed)
    h.setOptionValue("mip_max_nodes", max_nodes)
    h.addVars(num_vars, np.zeros(num_vars), upper.astype(float))
    if integer:
        kinds = np.array([highspy.HighsVarType.kInteger] * n)
        h.changeColsIntegrality(n, np.arange(n, dtype=np.int32), kinds)
    h.addRows(
        len(rows.lower),
        np.array(rows.lower, float),
        np.array(rows.upper, float),
        len(rows.index),
        np.array(rows.starts, np.int32),
        np.array(rows.index, np.int32),
        np.array(rows.value, float),
    )
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    seconds = h.getRunTime()
    if status == highspy.HighsModelStatus.kInfeasible:
        return SolveOutcome(INFEASIBLE, {}, seconds, info.mip_node_count)
    if info.primal_solution_status != 2:  # 2 = feasible point available
        return SolveOutcome(UNKNOWN, {}, seconds, info.mip_node_count)
    if not integer:  # a fractional point: proves nothing, places nothing
        return SolveOutcome(FEASIBLE, {}, seconds, 0)
    values = h.getSolution().col_value
    counts = {c: round(values[j]) for j, c in enumerate(cols) if values[j] > 0.5}
    return SolveOutcome(FEASIBLE, counts, seconds, info.mip_node_count)
