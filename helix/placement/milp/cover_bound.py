"""Layer-cover bound: a configuration LP over the node sets that cover one layer, solved by column
generation at a fixed target flow F and bisected on F.

Derivation. Take any placement with max flow F' ≥ F; node i holds k_i layers and carries φ_i. Every
token is processed at every layer ℓ by exactly one node holding ℓ (with or without partial overlap), so
Σ_{i holds ℓ} φ_i ≥ F', and φ_i ≤ cap_i(k_i). With the contribution a_i = min(cap_i(k_i), F) this gives
Σ_{i holds ℓ} a_i ≥ F for every layer ℓ (if some cap_i(k_i) ≥ F that one term is F; otherwise every
a_i = cap_i(k_i) ≥ φ_i). The saturation bound (bounds.py) only sums this over the layers; here each layer
must be covered on its own by whole nodes, so lumpy contributions waste what overshoots F.

Data: node tables (cap_c(1..K_c), n_c) (nodes with the same table are one class, whatever their zone);
items (c, k) with contribution a_ck = min(cap_c(k), F). Rounded to units δ = F / U: â_ck = ⌈a_ck / δ⌉,
target U (rounding items up only enlarges the feasible set: still a relaxation).

Patterns p: item counts x_p ∈ ℕ^items with Σ â·x_p ≥ U and x_p,ck ≤ n_c (the node sets a layer may have).

Variables: y_p ≥ 0 (layers covered by pattern p), n_ck ≥ 0 (nodes of class c holding k layers).

Objective: maximise Σ_p y_p (layers covered).

Constraints:
    (1) Σ_p x_p,ck·y_p − k·n_ck ≤ 0   for every item (a node holding k layers covers at most k layers)
    (2) Σ_k n_ck ≤ n_c                for every class
    (3) Σ_p y_p ≤ L

A placement reaching F gives a solution of value L (y_p = the layers whose covering set is p). So if the
LP optimum is below L, no placement reaches F. The LP is solved by column generation: the restricted
master over the patterns found so far gives duals (π, σ, μ); the pricing problem, min Σ π·x over the
patterns (a bounded covering knapsack, solved exactly by dynamic programming over the U units), gives
the most attractive pattern. Whatever the duals, π ≥ 0, σ'_c = max(σ_c, max_k k·π_ck) and
μ' = max(0, 1 − min pattern cost) are dual feasible, so D = Σ_c n_c·σ'_c + L·μ' bounds the LP; D < L
proves F infeasible before column generation converges. Feasibility in F is monotone (a cover at F is
one at any F'' < F), so the largest feasible F is found by bisection; it never exceeds the saturation
bound (summing (1)–(3) weighted by a gives L·F ≤ h(F)). Links and the coordinator are ignored: a bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from helix.placement.milp.boundary_milp import FEASIBLE, INFEASIBLE, UNKNOWN
from helix.placement.milp.bounds import Tables


@dataclass(frozen=True)
class CoverOutcome:
    """status at F, the restricted master's value, the best dual bound D and the pricing rounds used."""

    status: str
    layers_lp: float
    dual_bound: float
    rounds: int


def merge_tables(tables: Tables) -> list[tuple[tuple[float, ...], int]]:
    """Nodes with equal capacity tables are interchangeable here (zones and links play no part)."""
    merged: dict[tuple[float, ...], int] = {}
    for caps, count in tables:
        if caps and count > 0:
            merged[tuple(caps)] = merged.get(tuple(caps), 0) + count
    return sorted(merged.items())


def _price(units: list[int], cost: np.ndarray, copies: list[int], target: int) -> tuple[float, list[int]]:
    """min Σ cost·x s.t. Σ units·x ≥ target, 0 ≤ x ≤ copies (x integer): 0/1 knapsack DP over
    binary-split copies; dp[u] = cheapest cost of at least u units."""
    dp = np.full(target + 1, np.inf)
    dp[0] = 0.0
    steps: list[tuple[int, int, np.ndarray]] = []  # (item, multiplicity, taken-at-u mask)
    for i, (size, price, limit) in enumerate(zip(units, cost, copies, strict=True)):
        left, chunk = limit, 1
        while left > 0:
            m = min(chunk, left)
            reach = np.minimum(np.arange(target + 1) - size * m, target)
            cand = dp[np.maximum(reach, 0)] + price * m
            take = cand < dp - 1e-15
            dp = np.where(take, cand, dp)
            steps.append((i, m, take))
            left -= m
            chunk *= 2
    x = [0] * len(units)
    u = target
    for i, m, take in reversed(steps):
        if u > 0 and take[u]:
            x[i] += m
            u = max(0, u - units[i] * m)
    return float(dp[target]), x


def cover_at(tables: Tables, num_layers: int, target: float, *, units: int = 4000, max_rounds: int = 400):
    """Can a layer cover reach flow `target`? (module docstring). INFEASIBLE proves no placement does."""
    tables = merge_tables(tables)
    items = [(c, k) for c, (caps, _) in enumerate(tables) for k in range(1, len(caps) + 1)]
    delta = target / units
    size = [max(1, int(np.ceil(min(tables[c][0][k - 1], target) / delta - 1e-9))) for c, k in items]
    counts = [n for _, n in tables]
    copies = [counts[c] for c, _ in items]
    m, nc, L = len(items), len(tables), num_layers
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.changeObjectiveSense(highspy.ObjSense.kMaximize)
    none_i, none_f = np.array([], np.int32), np.array([], float)
    h.addRows(m, np.full(m, -highspy.kHighsInf), np.zeros(m), 0, none_i, none_i, none_f)  # (1)
    h.addRows(nc, np.full(nc, -highspy.kHighsInf), np.array(counts, float), 0, none_i, none_i, none_f)  # (2)
    h.addRow(-highspy.kHighsInf, L, 0, none_i, none_f)  # (3)
    for i, (c, k) in enumerate(items):  # n_ck
        h.addCol(0.0, 0.0, highspy.kHighsInf, 2, np.array([i, m + c], np.int32), np.array([-float(k), 1.0]))

    def add_pattern(x: list[int]) -> None:  # y_p
        rows = [i for i in range(m) if x[i] > 0]
        values = [float(x[i]) for i in rows] + [1.0]
        h.addCol(
            1.0, 0.0, highspy.kHighsInf, len(rows) + 1, np.array(rows + [m + nc], np.int32), np.array(values)
        )

    for i in range(m):  # start: copies of one item
        q = -(-units // size[i])
        if q <= copies[i]:
            add_pattern([q if j == i else 0 for j in range(m)])
    best = float("inf")
    for rounds in range(max_rounds):
        h.run()
        value = h.getInfo().objective_function_value
        if value >= L - 1e-6:
            return CoverOutcome(FEASIBLE, value, best, rounds)
        duals = h.getSolution().row_dual
        pi = np.maximum(0.0, np.array(duals[:m]))
        sigma = np.maximum(0.0, np.array(duals[m : m + nc]))
        for i, (c, k) in enumerate(items):
            sigma[c] = max(sigma[c], k * pi[i])
        cost, x = _price(size, pi, copies, units)
        best = min(best, float(np.dot(sigma, counts)) + L * max(0.0, 1.0 - cost))
        if best < L * (1 - 1e-9):
            return CoverOutcome(INFEASIBLE, value, best, rounds)
        if cost >= 1.0 - 1e-9:  # converged with value < L, but D did not prove it: undecided
            return CoverOutcome(UNKNOWN, value, best, rounds)
        add_pattern(x)
    return CoverOutcome(UNKNOWN, value, best, max_rounds)


def layer_cover_bound(
    tables: Tables, num_layers: int, low: float, high: float, *, rel_tol: float = 1e-4, max_probes: int = 16
) -> float:
    """Bisect on F in [low, high] (`low` reachable by the relaxation, e.g. a placement's flow; `high` a
    valid bound): returns the smallest F proven infeasible (module docstring), or `high`."""
    for _ in range(max_probes):
        if high - low <= rel_tol * high:
            break
        mid = (low + high) / 2
        if cover_at(tables, num_layers, mid).status == INFEASIBLE:
            high = mid
        else:
            low = mid
    return high
