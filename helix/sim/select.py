"""Choose among candidate placements by short simulations.

The planner's ``throughput`` objective ranks placements by an analytic KV / pipeline-depth estimate
(`helix.placement.milp.throughput`); where minutes are available, the few best candidates it returns
(``PlanResult.details["candidates"]``) can be re-ranked here by simulating each one offline for a short
window with the scheduler and settings that will serve it. The simulation is deterministic for a seed,
so the choice is too. Short windows mislead: a KV-limited plan can look best over the first minutes and
fall behind once contexts grow, so use the window the result will be judged on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from helix.flow.graph import DEFAULT_PARTIAL_OVERLAP
from helix.perf.base import CapacityModel
from helix.placement.result import PlanResult
from helix.scheduling.kv import KVParameters
from helix.sim.config import SimConfig
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement


def plan_candidates(result: PlanResult) -> list[tuple[str, Placement]]:
    """The planner's candidates (source, placement), best estimate first; the result's own placement
    when it has none."""
    rows: Sequence[Mapping[str, Any]] = result.details.get("candidates") or ()
    out = [
        (
            str(row["source"]),
            Placement({n: LayerRange(int(s), int(e)) for n, (s, e) in row["ranges"].items()}),
        )
        for row in rows
    ]
    return out or [(str(result.details.get("found_by", result.method)), result.placement)]


def rank_by_simulation(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    candidates: Sequence[tuple[str, Placement]],
    lengths: Lengths,
    config: SimConfig,
    *,
    settings: Sequence[Mapping[str, Any]] = ({},),
    scheduler: str = "maxflow",
    kv_params: KVParameters | None = None,
    partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP,
) -> list[dict[str, Any]]:
    """Simulate every candidate under every `settings` variant of `config` (offline); rows best first.

    Each row: {"index", "source", "settings", "decode_tokens_per_s", "total_tokens_per_s", "summary"}.
    """
    rows = []
    for index, (source, placement) in enumerate(candidates):
        for variant in settings:
            result = simulate(
                cluster,
                model,
                placement,
                capacity,
                lengths,
                replace(config, mode="offline", **variant),
                scheduler=scheduler,
                kv_params=kv_params,
                partial_overlap=partial_overlap,
            )
            summary = result["summary"]
            rows.append(
                {
                    "index": index,
                    "source": source,
                    "settings": dict(variant),
                    "decode_tokens_per_s": summary["decode_tokens_per_s"],
                    "total_tokens_per_s": summary["total_tokens_per_s"],
                    "summary": summary,
                    "wall_s": result["wall_s"],
                }
            )
    rows.sort(key=lambda row: -row["decode_tokens_per_s"])  # stable: ties keep candidate order
    return rows
