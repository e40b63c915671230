"""Stage-structured placements from a small integer program (a fast primal heuristic).

A stage is a set of nodes of one zone that all hold the same layers [b, b+k); consecutive stages are
fully linked, so in a zone whose links never bind a pipeline of stages carries min over stages of
Σ_{i in stage} cap_i(k). For a target F we enumerate *minimal* node multisets (at most `max_size`
nodes, interchangeable nodes counted per class) whose capacity at k layers reaches F, and solve::

    z[k, m] ∈ ℕ   (number of stages of length k using multiset m)
    Σ z[k,m]·k = L,   Σ z[k,m]·m_c ≤ n_c for every class c

A feasible z is a placement with flow ≥ F (checked by the evaluator). The model is tiny (one row per
class plus one) and HiGHS answers in milliseconds, which lets the planner bisect on F.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations_with_replacement

import highspy
import numpy as np

from helix.placement.milp.problem import Problem
from helix.specs.placement import LayerRange, Placement

Stage = tuple[int, tuple[int, ...]]  # (layers, class indices with repetition)
STAGE_IP_MAX_NODES = 2000  # branch-and-bound nodes per stage IP: the work budget (deterministic)


def candidate_stages(problem: Problem, zone: int, max_size: int) -> Iterator[Stage]:
    """Every (k, multiset of ≤ max_size classes of `zone`) whose members can hold k layers and whose
    class counts suffice, in order of k then size."""
    members = [ci for ci, c in enumerate(problem.classes) if c.zone == zone]
    for k in range(1, problem.num_layers + 1):
        able = [ci for ci in members if problem.classes[ci].max_layers >= k]
        for size in range(1, max_size + 1):
            for combo in combinations_with_replacement(able, size):
                if all(combo.count(ci) <= problem.classes[ci].count for ci in set(combo)):
                    yield k, combo


def minimal_stages(problem: Problem, target: float, zone: int, max_size: int) -> list[Stage]:
    """Every minimal multiset of ≤ max_size nodes of `zone` whose capacity at k layers reaches `target`."""
    out: list[Stage] = []
    for k, combo in candidate_stages(problem, zone, max_size):
        caps = [problem.classes[ci].caps_tokens_per_s[k - 1] for ci in combo]
        if sum(caps) >= target and sum(caps) - min(caps) < target:
            out.append((k, combo))
    return out


def solve_stages(
    problem: Problem, target: float, *, time_limit_s: float, seed: int, max_size: int = 3
) -> list[Stage] | None:
    """Stages (in pipeline order) reaching `target` in one zone, or None if none found."""
    for zone in range(problem.zones):
        stages = minimal_stages(problem, target, zone, max_size)
        if stages:
            chosen = _solve(problem, stages, time_limit_s=time_limit_s, seed=seed)
            if chosen is not None:
                return chosen
    return None


def stage_ip(
    problem: Problem, stages: list[Stage], *, time_limit_s: float, max_nodes: int, seed: int | None = None
) -> tuple[highspy.Highs, np.ndarray]:
    """The stage integer program's core: z_j ∈ ℤ≥0 copies of stage j, Σ_j k_j·z_j = L, minimising the
    nodes used (fewer nodes are cheaper to run and leave spares). Returns the model and column indices;
    callers add their own rows (e.g. `add_class_count_rows`) and run it."""
    n = len(stages)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", max(0.01, time_limit_s))  # a safety cap; the node limit is the budget
    h.setOptionValue("mip_max_nodes", max_nodes)
    if seed is not None:
        h.setOptionValue("random_seed", seed)
    idx = np.arange(n, dtype=np.int32)
    h.addVars(n, np.zeros(n), np.full(n, float(problem.num_layers)))
    h.changeColsIntegrality(n, idx, np.array([highspy.HighsVarType.kInteger] * n))
    h.changeColsCost(n, idx, np.array([len(m) for _, m in stages], float))
    h.addRow(problem.num_layers, problem.num_layers, n, idx, np.array([k for k, _ in stages], float))
    return h, idx


def add_class_count_rows(h: highspy.Highs, problem: Problem, stages: list[Stage], idx: np.ndarray) -> None:
    """Σ_j (members of class c in stage j)·z_j ≤ count(c) for every class."""
    for ci, cls in enumerate(problem.classes):
        use = np.array([m.count(ci) for _, m in stages], float)
        if use.any():
            h.addRow(0, cls.count, len(stages), idx, use)


def _solve(problem: Problem, stages: list[Stage], *, time_limit_s: float, seed: int) -> list[Stage] | None:
    h, idx = stage_ip(problem, stages, time_limit_s=time_limit_s, max_nodes=STAGE_IP_MAX_NODES, seed=seed)
    add_class_count_rows(h, problem, stages, idx)
    h.run()
    if h.getInfo().primal_solution_status != 2:
        return None
    values = h.getSolution().col_value
    chosen = []
    for j, (k, combo) in enumerate(stages):
        chosen.extend([(k, combo)] * round(values[j]))
    chosen.sort(key=lambda st: (-st[0], st[1]))
    return chosen


def stages_to_placement(problem: Problem, stages: list[Stage]) -> Placement:
    """Lay the stages out along the layers and give each class slot a concrete node."""
    next_node = [0] * len(problem.classes)
    ranges = {}
    start = 0
    for k, combo in stages:
        for ci in combo:
            ranges[problem.classes[ci].nodes[next_node[ci]]] = LayerRange(start, start + k)
            next_node[ci] += 1
        start += k
    return Placement(ranges)
