"""The MILP planner: a hand-solved tiny instance, evaluator agreement, bad input, determinism, fallback."""

from __future__ import annotations

from dataclasses import replace

import pytest

from helix.errors import HelixInputError
from helix.flow.maxflow import evaluate_placement
from helix.perf.base import CapacityModel
from helix.perf.factory import capacity_model_for
from helix.placement.milp import milp_plan
from helix.placement.milp.bounds import saturation_bound
from helix.placement.milp.problem import build_problem
from helix.placement.result import PlannerOptions
from helix.specs.cluster import COORDINATOR, ClusterSpec, LinkSpec, NodeSpec
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.gpu import default_catalog
from helix.specs.loading import load_cluster
from helix.specs.model import builtin_model, with_overrides


class TableCapacity(CapacityModel):
    """Capacities given as explicit tables tp(type, k), k = 1..max layers."""

    def __init__(self, tables: dict[str, list[float]]) -> None:
        self.tables = tables

    def max_layers(self, gpu: str) -> int:
        return len(self.tables[gpu])

    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int:
        return 10_000

    def prompt_layer_time_s(self, gpu: str, num_tokens: int) -> float:
        return 1e-3

    def decode_layer_time_s(self, gpu: str, num_seqs: int) -> float:
        return 1e-3

    def throughput_tokens_per_s(self, gpu: str, num_layers: int) -> float:
        return self.tables[gpu][num_layers - 1]

    @property
    def description(self) -> str:
        return "test tables"


# Tiny instance: a 4-layer model, one A100 with tp = 100, 60, 40, 20 (k = 1..4) and two T4s with
# tp = 50, 30 (k = 1..2), one region with fast links. Hand optimum = 60:
# - two stages [0,2) and [2,4): the A100 on one (60) and both T4s on the other (30 + 30 = 60) → 60;
# - the A100 alone on [0,4) → 20; A100 [0,3) + T4 [3,4) → 40; A100 [1,3) between two T4s → 50;
#   every other layout has a stage carried by a single T4 holding 2 layers (30) → ≤ 50.
# The saturation bound proves it: at F = 60 the A100 contributes max_k k·min(tp, 60) = 120 and each T4
# 60, so h(60) = 240 = L·F, hence no placement exceeds 60.
TINY = TableCapacity({"A100-40GB": [100.0, 60.0, 40.0, 20.0], "T4": [50.0, 30.0]})
TINY_MODEL = with_overrides(builtin_model("llama-2-70b"), num_layers=4)


def tiny_cluster() -> ClusterSpec:
    return cluster_from_dict(
        {
            "name": "tiny",
            "nodes": [
                {"name": "a", "gpu": "A100-40GB", "region": "default"},
                {"name": "t", "gpu": "T4", "region": "default", "count": 2},
            ],
        }
    )


def check_reported_flow(cluster, model, capacity, result) -> None:
    value = evaluate_placement(cluster, model, result.placement, capacity).value_tokens_per_s
    assert result.flow_tokens_per_s == pytest.approx(value, abs=1e-6)
    assert result.upper_bound_tokens_per_s >= value - 1e-6


def test_tiny_instance_reaches_the_hand_computed_optimum_and_proves_it():
    cluster = tiny_cluster()
    result = milp_plan(cluster, TINY_MODEL, TINY, PlannerOptions(objective="max-flow", time_limit_s=10))
    assert result.flow_tokens_per_s == pytest.approx(60.0)
    assert result.upper_bound_tokens_per_s == pytest.approx(60.0, rel=1e-6)
    assert result.gap <= 1e-4
    check_reported_flow(cluster, TINY_MODEL, TINY, result)


def test_saturation_bound_of_the_tiny_instance_is_60():
    assert saturation_bound(build_problem(tiny_cluster(), TINY_MODEL, TINY)) == pytest.approx(60.0, rel=1e-6)


def test_model_too_big_for_total_memory_is_a_clear_input_error():
    big_model = with_overrides(TINY_MODEL, num_layers=20)  # 4 + 2 + 2 = 8 layers fit
    with pytest.raises(HelixInputError, match="can hold only 8"):
        milp_plan(tiny_cluster(), big_model, TINY, PlannerOptions(objective="max-flow", time_limit_s=5))


def test_no_chain_covering_the_model_is_a_clear_input_error():
    t4 = default_catalog().get("T4")
    nodes = tuple(NodeSpec(f"t{i}", t4, "default", 1.25e9) for i in range(3))
    links = [LinkSpec(COORDINATOR, n.name, 1e9, 0.0) for n in nodes] + [
        LinkSpec(n.name, COORDINATOR, 1e9, 0.0) for n in nodes
    ]  # no links between nodes
    cluster = ClusterSpec("islands", nodes, tuple(links))
    with pytest.raises(HelixInputError, match="no chain"):
        milp_plan(cluster, TINY_MODEL, TINY, PlannerOptions(objective="max-flow", time_limit_s=5))


def test_same_seed_gives_the_same_placement():
    runs = [
        milp_plan(
            tiny_cluster(), TINY_MODEL, TINY, PlannerOptions(objective="max-flow", time_limit_s=10, seed=3)
        )
        for _ in range(2)
    ]
    assert runs[0].placement == runs[1].placement


def test_progress_reports_incumbent_bound_gap_and_time():
    rows = []
    milp_plan(
        tiny_cluster(),
        TINY_MODEL,
        TINY,
        PlannerOptions(objective="max-flow", time_limit_s=10, progress=rows.append),
    )
    assert rows and {"incumbent", "bound", "gap", "elapsed_s"} <= set(rows[-1])
    assert rows[-1]["incumbent"] == pytest.approx(60.0)


def test_expired_time_limit_returns_the_best_baseline_with_a_warning(helix_setup):
    cluster, model, capacity = helix_setup("single24")
    result = milp_plan(cluster, model, capacity, PlannerOptions(objective="max-flow", time_limit_s=1e-6))
    assert result.details["found_by"].startswith("baseline")
    assert result.warnings and "baseline" in result.warnings[0]
    check_reported_flow(cluster, model, capacity, result)


@pytest.mark.parametrize(
    "name, at_least", [("single24", 2045.0), ("cluster10", 286.587), ("cluster42", 5500.0)]
)
def test_helix_clusters_beat_helix_and_agree_with_the_evaluator(helix_setup, name, at_least, monkeypatch):
    """A small deterministic work budget (stage IP and a short local search, no boundary MILP) instead of
    a short wall-clock limit, so the result does not depend on the machine's load."""
    import helix.placement.milp.plan as plan_module

    small = plan_module.WorkBudget(
        milp_probes=0, inexact_probes=0, local_search_rounds=1, local_search_patience=100
    )
    monkeypatch.setattr(plan_module, "WORK", small)
    cluster, model, capacity = helix_setup(name)
    result = milp_plan(cluster, model, capacity, PlannerOptions(objective="max-flow", time_limit_s=600))
    assert "time limit" not in result.details["stopped_by"]
    assert result.flow_tokens_per_s >= at_least
    check_reported_flow(cluster, model, capacity, result)


def test_cluster10_optimum_is_proven(helix_setup):
    cluster, model, capacity = helix_setup("cluster10")
    result = milp_plan(
        cluster, model, capacity, PlannerOptions(objective="max-flow", time_limit_s=10, mip_gap=1e-6)
    )
    assert result.flow_tokens_per_s == pytest.approx(286.587409, abs=1e-5)
    assert result.gap <= 1e-6
    assert "MILP" in result.bound_source


def test_geo_cluster_beats_helix_quickly(helix_setup, monkeypatch):
    """Quickly = a small deterministic work budget (no MILP, a short local search), not a wall clock."""
    import helix.placement.milp.plan as plan_module

    small = plan_module.WorkBudget(
        milp_probes=0, inexact_probes=0, local_search_rounds=1, local_search_patience=100
    )
    monkeypatch.setattr(plan_module, "WORK", small)
    cluster, model, capacity = helix_setup("3cluster24")
    result = milp_plan(cluster, model, capacity, PlannerOptions(objective="max-flow", time_limit_s=600))
    assert result.flow_tokens_per_s >= 1212.2
    check_reported_flow(cluster, model, capacity, result)


def small_geo_cluster() -> ClusterSpec:
    """Two regions joined by slow links: the aggregated model is inexact (geo path of the planner)."""
    return cluster_from_dict(
        {
            "name": "geo-small",
            "coordinator": {"region": "r0"},
            "regions": {"r0": {"bandwidth_gbps": 10, "latency_ms": 1}, "r1": {"bandwidth_gbps": 10}},
            "inter_region": {"bandwidth_gbps": 0.01, "latency_ms": 50},
            "nodes": [
                {"name": "a", "gpu": "A100-40GB", "region": "r0"},
                {"name": "t", "gpu": "T4", "region": "r0", "count": 2},
                {"name": "u", "gpu": "T4", "region": "r1", "count": 3},
            ],
        }
    )


def test_geo_runs_are_deterministic_and_stop_on_their_work_budget():
    cluster = small_geo_cluster()
    assert build_problem(cluster, TINY_MODEL, TINY).zones == 2
    runs = [
        milp_plan(
            cluster,
            TINY_MODEL,
            TINY,
            PlannerOptions(objective="max-flow", time_limit_s=60, seed=5, mip_gap=0.0),
        )
        for _ in range(2)
    ]
    assert runs[0].placement == runs[1].placement
    assert runs[0].details["history"][-1]["event"] == runs[1].details["history"][-1]["event"]
    for key in ("milp_solves", "local_search_evals", "stopped_by"):
        assert runs[0].details[key] == runs[1].details[key]
    assert "time limit" not in runs[0].details["stopped_by"]
    assert runs[0].elapsed_s < 30  # stopped by the work budget, far from the safety cap
    check_reported_flow(cluster, TINY_MODEL, TINY, runs[0])


def test_proven_optimum_stops_at_once():
    result = milp_plan(
        tiny_cluster(), TINY_MODEL, TINY, PlannerOptions(objective="max-flow", time_limit_s=60)
    )
    assert result.details["stopped_by"].startswith("gap reached")
    assert result.elapsed_s < 10


def test_unknown_objective_is_an_input_error():
    with pytest.raises(HelixInputError, match="objective"):
        milp_plan(tiny_cluster(), TINY_MODEL, TINY, PlannerOptions(objective="latency"))


def test_bundled_geo_cluster_beats_the_baselines_on_a_small_work_budget(monkeypatch):
    """geo-mixed: links faster than the saturation bound never bind, so the regions form one zone
    (not one zone per node, whose zone orders once exhausted memory) and the stage IP beats the baselines.
    The run is bounded by work (no boundary-MILP probe, one local-search round), not by the clock: two runs
    agree exactly and neither reaches the generous time limit."""
    import helix.placement.milp.plan as milp_module

    monkeypatch.setattr(milp_module, "WORK", replace(milp_module.WORK, milp_probes=0, local_search_rounds=1))
    cluster, model = load_cluster("geo-mixed"), builtin_model("llama-3-70b")
    capacity = capacity_model_for(cluster, model)
    assert build_problem(cluster, model, capacity).zones == 1
    options = PlannerOptions(objective="max-flow", time_limit_s=600.0)
    runs = [milp_plan(cluster, model, capacity, options) for _ in range(2)]
    result = runs[0]
    assert result.details["stopped_by"].startswith("work budget")
    assert result.details["milp_solves"] == 0
    assert runs[0].placement == runs[1].placement
    assert runs[0].details["local_search_evals"] == runs[1].details["local_search_evals"]
    assert result.flow_tokens_per_s > 1.2 * result.details["baseline_tokens_per_s"]
    assert not result.warnings
    check_reported_flow(cluster, model, capacity, result)
