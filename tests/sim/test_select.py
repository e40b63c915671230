"""Choosing among placements by short simulations."""

from __future__ import annotations

import numpy as np

from helix.flow.maxflow import evaluate_placement
from helix.placement.result import PlanResult
from helix.sim.config import SimConfig
from helix.sim.select import plan_candidates, rank_by_simulation
from helix.sim.workload import Lengths
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


def test_faster_pipeline_ranks_first(model):
    """Two nodes: splitting the model over both halves each pass; one node alone does all 80 layers."""
    cluster = make_cluster(["a", "b"])
    capacity = FlatCapacity(100.0)
    one = Placement.from_pairs({"a": (0, 80)})
    two = Placement.from_pairs({"a": (0, 40), "b": (40, 80)})
    lengths = Lengths(np.array([10]), np.array([400]), "test")
    config = SimConfig(model_loading=False, initial_requests=4, feed="population")
    rows = rank_by_simulation(
        cluster, model, capacity, [("one", one), ("two", two)], lengths, config, scheduler="random"
    )
    assert [r["source"] for r in rows] == ["two", "one"]
    assert rows[0]["decode_tokens_per_s"] > rows[1]["decode_tokens_per_s"] > 0


def test_plan_candidates_round_trip(model):
    cluster = make_cluster(["a", "b"])
    placement = Placement.from_pairs({"a": (0, 40), "b": (40, 80)})
    flow = evaluate_placement(cluster, model, placement, FlatCapacity(100.0))
    result = PlanResult(
        placement,
        flow,
        "milp",
        details={
            "candidates": [
                {"source": "x", "ranges": {"a": [0, 80]}},
                {"source": "y", "ranges": {"a": [0, 40], "b": [40, 80]}},
            ]
        },
    )
    got = plan_candidates(result)
    assert [s for s, _ in got] == ["x", "y"]
    assert got[1][1] == placement
    assert plan_candidates(PlanResult(placement, flow, "milp"))[0][1] == placement
