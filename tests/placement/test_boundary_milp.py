"""The boundary MILP with partial-overlap entry flows: a valid relaxation for overlapping plans, and the
planner plans and bounds with it (`helix plan --partial-overlap`)."""

from __future__ import annotations

import itertools

import pytest

from helix.flow.graph import FlowOptions
from helix.flow.maxflow import evaluate_placement
from helix.placement.milp import milp_plan
from helix.placement.milp.boundary_milp import FEASIBLE, INFEASIBLE, columns, entry_count, solve_at
from helix.placement.milp.problem import build_problem
from helix.placement.result import PlannerOptions
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import builtin_model, with_overrides
from helix.specs.placement import LayerRange, Placement

from .test_milp import TINY, TINY_MODEL, TableCapacity, tiny_cluster

MODEL3 = with_overrides(builtin_model("llama-2-70b"), num_layers=3)


def two_regions(inter_gbps: float):
    """a (A100) and t (T4) in r0, l and l2 (L4) in r1; the regions joined by a slow link."""
    fast = {"bandwidth_gbps": 10, "latency_ms": 1}
    return cluster_from_dict(
        {
            "name": "two-regions",
            "regions": {"r0": fast, "r1": fast},
            "inter_region": {"bandwidth_gbps": inter_gbps, "latency_ms": 50},
            "nodes": [
                {"name": "a", "gpu": "A100-40GB", "region": "r0"},
                {"name": "t", "gpu": "T4", "region": "r0"},
                {"name": "l", "gpu": "L4", "region": "r1"},
                {"name": "l2", "gpu": "L4", "region": "r1"},
            ],
        }
    )


def brute_force(cluster, model, capacity, partial_overlap: bool) -> float:
    """The best max flow over every placement (each node: unused or any range it can hold)."""
    L = model.num_layers
    names = [n.name for n in cluster.nodes]
    choices = [None] + [LayerRange(s, e) for s in range(L) for e in range(s + 1, L + 1)]
    best = 0.0
    for combo in itertools.product(choices, repeat=len(names)):
        ranges = {n: r for n, r in zip(names, combo, strict=True) if r is not None}
        if not ranges or any(
            r.num_layers > capacity.max_layers(cluster.node(n).gpu.name) for n, r in ranges.items()
        ):
            continue
        flow = evaluate_placement(cluster, model, Placement(ranges), capacity, FlowOptions(partial_overlap))
        best = max(best, flow.value_tokens_per_s)
    return best


# Found by a random search over tables: partial overlap serves 103 (a [0,1), l [0,2), l2 [1,3), t [2,3):
# l2 is entered at 1 from a and at 2 from l) where strict chaining serves at most 92.
OVERLAP_WINS = TableCapacity({"A100-40GB": [48.0], "T4": [44.0], "L4": [86.0, 59.0]})
# Here the planner finds the partial-overlap optimum (40.26 against 31 strict).
OVERLAP_FOUND = TableCapacity({"A100-40GB": [78.0, 25.0], "T4": [31.0], "L4": [45.0]})


def test_entry_flows_relax_every_overlapping_plan_where_the_strict_model_cannot():
    cluster = two_regions(0.01)
    strict = brute_force(cluster, MODEL3, OVERLAP_WINS, partial_overlap=False)
    partial = brute_force(cluster, MODEL3, OVERLAP_WINS, partial_overlap=True)
    assert strict == pytest.approx(92.0) and partial == pytest.approx(103.0)
    problem = build_problem(cluster, MODEL3, OVERLAP_WINS)
    target = partial * (1 - 1e-6)
    kwargs = {"time_limit_s": 30.0, "threads": 1, "seed": 0}
    # the strict relaxation cuts off the overlapping optimum: it cannot bound partial-overlap plans
    assert solve_at(problem, target, "relax", **kwargs).status == INFEASIBLE
    assert solve_at(problem, target, "relax", partial_overlap=True, **kwargs).status == FEASIBLE
    assert entry_count(problem, max_skip=0) == len(columns(problem)) < entry_count(problem)


def test_partial_overlap_planner_plans_overlaps_and_bounds_them():
    cluster = two_regions(0.002)
    strict = brute_force(cluster, MODEL3, OVERLAP_FOUND, partial_overlap=False)
    best = brute_force(cluster, MODEL3, OVERLAP_FOUND, partial_overlap=True)
    assert best > strict + 5
    options = PlannerOptions(objective="max-flow", partial_overlap=True, time_limit_s=30.0)
    result = milp_plan(cluster, MODEL3, OVERLAP_FOUND, options)
    flow = evaluate_placement(cluster, MODEL3, result.placement, OVERLAP_FOUND, FlowOptions(True))
    assert result.flow_tokens_per_s == pytest.approx(flow.value_tokens_per_s)
    assert result.flow_tokens_per_s == pytest.approx(best, rel=1e-6)
    assert result.upper_bound_tokens_per_s >= best - 1e-6
    as_strict = evaluate_placement(cluster, MODEL3, result.placement, OVERLAP_FOUND, FlowOptions(False))
    assert as_strict.value_tokens_per_s < result.flow_tokens_per_s - 5  # it relies on layer skips
    assert result.details["partial_overlap_max_skip"] is None  # every entry boundary: a bound


def test_partial_overlap_bound_is_valid_and_proves_the_tiny_optimum():
    for cluster, model, capacity in (
        (two_regions(0.01), MODEL3, OVERLAP_WINS),
        (tiny_cluster(), TINY_MODEL, TINY),
    ):
        best = brute_force(cluster, model, capacity, partial_overlap=True)
        options = PlannerOptions(objective="max-flow", partial_overlap=True, time_limit_s=30.0)
        result = milp_plan(cluster, model, capacity, options)
        assert result.upper_bound_tokens_per_s >= best - 1e-6
    assert result.flow_tokens_per_s == pytest.approx(60.0) and result.gap <= options.mip_gap
