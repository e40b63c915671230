"""The ``throughput`` planner objective: pick, among the max-flow placement and KV-aware stage
pipelines, the one with the best estimated serving throughput (throughput.py).

The result keeps the max-flow guarantees: its `flow` is the evaluator's max flow of the chosen
placement and its bound is the proven bound on any placement's max flow. `details` adds the estimate,
the max-flow optimum it departs from, and the best candidates (``details["candidates"]``, JSON-ready,
best first) for callers that re-rank them by simulation (`helix.sim.select`).
"""

from __future__ import annotations

from dataclasses import replace

from helix.perf.base import CapacityModel
from helix.placement.milp.incumbent import Incumbent
from helix.placement.milp.problem import Problem
from helix.placement.milp.throughput import ThroughputModel, kv_latency_estimate, throughput_candidates
from helix.placement.result import PlanResult
from helix.specs.placement import Placement

OBJECTIVES = ("served", "max-flow", "throughput")
KEEP_CANDIDATES = 6


def choose_for_throughput(
    problem: Problem,
    result: PlanResult,
    incumbent: Incumbent,
    capacity: CapacityModel,
    model: ThroughputModel | None = None,
) -> PlanResult:
    """Re-choose `result`'s placement for the KV / pipeline-depth throughput estimate."""
    model = model or ThroughputModel()
    cluster = incumbent.cluster

    def kv_tokens(node: str, layers: int) -> float:
        return float(capacity.kv_capacity_tokens(cluster.node(node).gpu.name, layers))

    scored = [
        (
            kv_latency_estimate(result.placement, result.flow, kv_tokens, model),
            "max-flow optimum",
            0,
            result.placement,
            result.flow,
        )
    ]
    if problem.zones == 1:  # stage pipelines assume links inside a zone never bind
        for depth, _, placement in throughput_candidates(problem, capacity, model, result.flow_tokens_per_s):
            flow = incumbent.evaluate(placement)
            if flow.value_tokens_per_s > 0:
                estimate = kv_latency_estimate(placement, flow, kv_tokens, model)
                scored.append((estimate, f"KV-aware stage pipelines, depth {depth}", depth, placement, flow))
    optimum = scored[0]
    scored.sort(key=lambda row: -row[0])
    kept = scored[: KEEP_CANDIDATES - 1]
    if not any(row is optimum for row in kept):
        kept.append(optimum)  # always offer the max-flow optimum for comparison
    best_estimate, source, _, placement, flow = scored[0]
    details = {
        **result.details,
        "throughput_estimate_tokens_per_s": best_estimate,
        "max_flow_optimum_tokens_per_s": result.flow_tokens_per_s,
        "found_by": source if placement is not result.placement else result.details["found_by"],
        "candidates": [_candidate(p, f.value_tokens_per_s, e, s) for e, s, _, p, f in kept],
    }
    if placement is not result.placement:
        details["max_flow_optimum_time_to_best_s"] = result.time_to_best_s
    return replace(
        result, placement=placement, flow=flow, details=details, elapsed_s=incumbent.clock.elapsed()
    )


def _candidate(placement: Placement, flow: float, estimate: float, source: str) -> dict:
    return {
        "source": source,
        "max_flow_tokens_per_s": flow,
        "throughput_estimate_tokens_per_s": estimate,
        "ranges": {n: [r.start, r.end] for n, r in placement.items()},
    }
