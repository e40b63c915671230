"""What a placement method returns, and the options every method shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from helix.flow.graph import DEFAULT_PARTIAL_OVERLAP
from helix.flow.maxflow import FlowResult
from helix.placement.served import ServingSetup
from helix.specs.placement import Placement


@dataclass(frozen=True, slots=True)
class PlannerOptions:
    """Options of `helix.placement.plan`.

    Attributes:
        method: ``milp`` (default) or a baseline: ``petals``, ``swarm``, ``homogeneous``, ``separate``.
        time_limit_s: wall-clock limit for search-based methods.
        threads: solver threads.
        seed: RNG seed (baselines shuffle nodes; search is deterministic per seed and time limit).
        mip_gap: stop when (bound − incumbent) / bound falls below this.
        partial_overlap: allow links where the next node skips layers it already holds (s_j ≤ e_i < e_j).
        solver: MILP backend (``highs`` default; ``cpsat`` where supported).
        progress: called with a dict (incumbent, bound, gap, elapsed_s) as search improves.
        objective: ``served`` (default, milp only): the placement expected to serve the most decode
            tokens/s under the scheduler's KV admission (`helix.placement.served`), candidates checked
            by `checker` when given (docs/planner.md). ``max-flow``: the placement with the largest max
            flow (Helix's formulation and its proofs). ``throughput`` (milp only): among the max-flow
            optimum and KV-aware stage pipelines, the placement with the best estimated serving
            throughput (max flow under a KV-cache / pipeline-depth bound, docs/planner.md);
            the result still reports its max flow and the proven max-flow bound.
        serving: the workload's length statistics and the admission policy for ``served``.
        checker: for ``served``: called with the best candidate placements (by estimate), returns their
            decode tokens/s (e.g. short simulations, `helix.sim.select.simulation_checker`); the best
            checked one is chosen. checker_description says what it ran; check_candidates how many.
        confirm_checker: for ``served``: called with the best `confirm_candidates` placements by the
            first check (e.g. the same simulation on more seeds); the best confirmed one is chosen.
            Only candidates within `confirm_within` (a fraction) of the best first check are confirmed;
            when none but the best is, the confirmation is skipped (it could not change the choice).
        solver_log: file that receives the MILP solver's console output (milp; default: discarded).
        warm_start: a `helix.placement.warm_start.WarmStart` (the placement being served): re-plan
            from it, trading flow for moved layers by its ``move_weight``; ``method`` plans the fresh
            candidate.
    """

    method: str = "milp"
    time_limit_s: float = 60.0
    threads: int = 2
    seed: int = 0
    mip_gap: float = 1e-4
    partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP
    solver: str = "highs"
    progress: Callable[[dict[str, Any]], None] | None = None
    objective: str = "served"
    serving: ServingSetup | None = None
    checker: Callable[[Sequence[Placement]], Sequence[float]] | None = None
    checker_description: str = ""
    check_candidates: int = 4
    confirm_checker: Callable[[Sequence[Placement]], Sequence[float]] | None = None
    confirm_description: str = ""
    confirm_candidates: int = 2
    confirm_within: float = 0.1
    solver_log: str | None = None
    warm_start: Any = None


@dataclass(frozen=True)
class PlanResult:
    """A placement with its independently evaluated max flow and, when known, a proven upper bound.

    Attributes:
        placement: node → layer range (unused nodes absent).
        flow: the evaluator's max flow of `placement` (never the optimizer's own number).
        method: the method that produced it.
        upper_bound_tokens_per_s: best proven upper bound on any placement's max flow.
        bound_source: how the bound was obtained.
        elapsed_s: planning wall time; time_to_best_s: when the final placement was found.
        warnings: things the user should know (e.g. a fallback to a baseline).
        details: method-specific numbers (solver status, nodes explored, ...).
    """

    placement: Placement
    flow: FlowResult
    method: str
    upper_bound_tokens_per_s: float | None = None
    bound_source: str = ""
    elapsed_s: float = 0.0
    time_to_best_s: float = 0.0
    warnings: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def flow_tokens_per_s(self) -> float:
        return self.flow.value_tokens_per_s

    @property
    def gap(self) -> float | None:
        ub = self.upper_bound_tokens_per_s
        if ub is None or ub <= 0:
            return None
        return max(0.0, (ub - self.flow_tokens_per_s) / ub)
