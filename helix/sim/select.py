"""Choose among candidate placements by short simulations.

The planner's ``throughput`` objective ranks placements by an analytic KV / pipeline-depth estimate
(`helix.placement.milp.throughput`); where minutes are available, the few best candidates it returns
(``PlanResult.details["candidates"]``) can be re-ranked here by simulating each one offline for a short
window with the scheduler and settings that will serve it. The simulation is deterministic for a seed,
so the choice is too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from helix.perf.base import CapacityModel
from helix.placement.result import PlanResult
from helix.scheduling.kv import KVParameters
from helix.sim.config import SimConfig
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

SELECTION_WARMUP_S = 60.0
SELECTION_DURATION_S = 240.0


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
    scheduler: str = "maxflow",
    kv_params: KVParameters | None = None,
    partial_overlap: bool = False,
) -> list[dict[str, Any]]:
    """Simulate each candidate offline for a short window; rows best first.

    Each row: {"index", "source", "decode_tokens_per_s", "total_tokens_per_s"}. `config` gives the
    fidelity settings; its warm-up and duration are shortened to the selection window.
    """
    short = replace(config, warmup_s=SELECTION_WARMUP_S, duration_s=SELECTION_DURATION_S, mode="offline")
    rows = []
    for index, (source, placement) in enumerate(candidates):
        summary = simulate(
            cluster,
            model,
            placement,
            capacity,
            lengths,
            short,
            scheduler=scheduler,
            kv_params=kv_params,
            partial_overlap=partial_overlap,
        )["summary"]
        rows.append(
            {
                "index": index,
                "source": source,
                "decode_tokens_per_s": summary["decode_tokens_per_s"],
                "total_tokens_per_s": summary["total_tokens_per_s"],
            }
        )
    rows.sort(key=lambda row: (-row["decode_tokens_per_s"], row["index"]))
    return rows
