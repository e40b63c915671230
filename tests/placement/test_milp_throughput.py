"""The throughput objective: KV / pipeline-depth estimate, KV-aware stage pipelines, option plumbing."""

from __future__ import annotations

import pytest

from helix.flow.maxflow import evaluate_placement
from helix.placement.milp import milp_plan
from helix.placement.milp.problem import build_problem
from helix.placement.milp.throughput import ThroughputModel, kv_latency_estimate, throughput_candidates
from helix.placement.result import PlannerOptions
from helix.specs.placement import Placement
from tests.placement.test_milp import TINY, TINY_MODEL, TableCapacity, tiny_cluster


class KVTableCapacity(TableCapacity):
    """TableCapacity with KV tokens per layer given per type and layer count."""

    def __init__(self, tables, kv):
        super().__init__(tables)
        self.kv = kv

    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int:
        return self.kv[gpu][num_layers - 1]


def test_rate_per_kv_token_follows_the_formula():
    model = ThroughputModel(hop_time_s=0.1, kv_utilisation=0.75, prompt_tokens=750, output_tokens=240)
    assert model.rate_per_kv_token == pytest.approx(0.75 * 990 / 240 / (870 * 0.1))


def test_estimate_scales_a_chain_by_its_depth():
    """A chain A100 [0,2) → T4 [2,3) → T4 [3,4) has max flow min(60, 50, 50) = 50; with γ·Q = 60 at
    every node and depth 3 the KV bound allows 60 / 3 = 20."""
    cluster = tiny_cluster()
    placement = Placement.from_pairs({"a": (0, 2), "t-0": (2, 3), "t-1": (3, 4)})
    flow = evaluate_placement(cluster, TINY_MODEL, placement, TINY)
    assert flow.value_tokens_per_s == pytest.approx(50.0)  # min(60, 50, 50)
    model = ThroughputModel()
    q = 60.0 / model.rate_per_kv_token  # γ·Q = 60
    estimate = kv_latency_estimate(placement, flow, lambda node, k: q, model)
    assert estimate == pytest.approx(20.0, rel=1e-6)
    roomy = kv_latency_estimate(placement, flow, lambda node, k: 1e9, model)
    assert roomy == pytest.approx(50.0)


# KV tokens per layer: plenty on the A100, almost none on the T4s. The max-flow optimum (A100 [0,2),
# both T4s [2,4): flow 60, depth 2) is KV-bound to γ·80 / 2 per T4, about 2.8 tokens/s; the A100 alone
# on [0,4) (flow 20, depth 1) keeps min(20, γ·1500 ≈ 53) = 20.
KV_POOR_T4 = KVTableCapacity(
    {"A100-40GB": [100.0, 60.0, 40.0, 20.0], "T4": [50.0, 30.0]},
    {"A100-40GB": [4000, 3000, 2000, 1500], "T4": [100, 80]},
)


def test_candidates_trade_depth_for_kv():
    problem = build_problem(tiny_cluster(), TINY_MODEL, KV_POOR_T4)
    found = {
        depth: (reached, placement)
        for depth, reached, placement in throughput_candidates(problem, KV_POOR_T4, ThroughputModel(), 60.0)
    }
    reached, placement = found[1]
    assert reached == pytest.approx(20.0, rel=1e-2)
    assert placement == Placement.from_pairs({"a": (0, 4)})


def test_throughput_objective_picks_the_shallow_pipeline_and_keeps_max_flow_reporting():
    cluster = tiny_cluster()
    result = milp_plan(cluster, TINY_MODEL, KV_POOR_T4, PlannerOptions(objective="throughput"))
    assert result.placement == Placement.from_pairs({"a": (0, 4)})
    value = evaluate_placement(cluster, TINY_MODEL, result.placement, KV_POOR_T4).value_tokens_per_s
    assert result.flow_tokens_per_s == pytest.approx(value) == pytest.approx(20.0)
    assert result.upper_bound_tokens_per_s == pytest.approx(60.0, rel=1e-6)  # the max-flow bound
    assert result.details["max_flow_optimum_tokens_per_s"] == pytest.approx(60.0)
    assert result.details["throughput_estimate_tokens_per_s"] == pytest.approx(20.0)
    assert any(c["source"] == "max-flow optimum" for c in result.details["candidates"])


def test_max_flow_objective_keeps_the_max_flow_optimum():
    result = milp_plan(tiny_cluster(), TINY_MODEL, KV_POOR_T4, PlannerOptions(objective="max-flow"))
    assert result.flow_tokens_per_s == pytest.approx(60.0)
    assert "candidates" not in result.details


def test_default_objective_is_served_throughput():
    result = milp_plan(tiny_cluster(), TINY_MODEL, KV_POOR_T4, PlannerOptions())
    assert result.details["objective"] == "served"
    assert result.details["served"]["decode_tokens_per_s"] > 0
    assert result.upper_bound_tokens_per_s == pytest.approx(60.0, rel=1e-6)  # the max-flow bound
