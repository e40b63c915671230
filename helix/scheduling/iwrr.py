"""Interleaved weighted round-robin (serving.md §1.2): a virtual-finish-time stride scheduler.

Each candidate k has a capacity c_k (its max-flow value, tokens/s) and a virtual load L_k (initially 0).
``choose(w, mask)`` picks ``k* = argmin_k L_k + w / c_k`` over masked-in candidates (ties to the lowest
index) and adds ``w / c_k*`` to its load. In steady state each candidate receives token volume
proportional to its capacity. ``update`` charges a forced choice (decode tokens that follow a pinned
route) and ``restore`` undoes a choice (a route rejected further downstream).
"""

from __future__ import annotations

from collections.abc import Sequence


class IWRR:
    """Weighted round-robin over candidates with positive capacities."""

    __slots__ = ("inverse_capacity", "loads")

    def __init__(self, capacities: Sequence[float]) -> None:
        if any(c < 0 for c in capacities):
            raise ValueError(f"capacities must be >= 0, got {list(capacities)}")
        self.inverse_capacity = [1.0 / c if c > 0 else float("inf") for c in capacities]
        self.loads = [0.0] * len(capacities)

    def choose(self, weight: float, mask: Sequence[bool] | None = None) -> int:
        """The candidate with the least virtual finish time; raises ValueError if none is allowed."""
        best, best_finish = -1, float("inf")
        for k, inverse in enumerate(self.inverse_capacity):
            if mask is not None and not mask[k]:
                continue
            if inverse == float("inf"):
                raise ValueError(f"candidate {k} has zero capacity but is masked in")
            finish = self.loads[k] + weight * inverse
            if finish < best_finish:
                best, best_finish = k, finish
        if best < 0:
            raise ValueError("no candidate is allowed")
        self.loads[best] = best_finish
        return best

    def update(self, weight: float, k: int) -> None:
        self.loads[k] += weight * self.inverse_capacity[k]

    def restore(self, weight: float, k: int) -> None:
        self.loads[k] -= weight * self.inverse_capacity[k]
