"""Bounds: the saturation bound is valid (never below a real placement's flow) and beats Helix's."""

from __future__ import annotations

import pytest

from helix.flow.maxflow import compute_upper_bound, evaluate_placement
from helix.placement.milp.bounds import layer_work, saturation_bound
from helix.placement.milp.problem import build_problem
from helix.specs.helix_ini import load_helix_placement

PUBLISHED = {
    "single24": "single24_llama70b_helix_milp",
    "3cluster24": "3cluster24_llama70b_helix_milp",
    "cluster42": "cluster42_llama70b_swarm",
    "cluster10": "cluster10_llama30b_helix_milp",
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_saturation_bound_is_above_published_flows_and_below_the_compute_bound(ref, helix_setup, name):
    cluster, model, capacity = helix_setup(name)
    problem = build_problem(cluster, model, capacity)
    bound = saturation_bound(problem)
    placement = load_helix_placement(ref / "placements" / f"{PUBLISHED[name]}.ini")
    assert evaluate_placement(cluster, model, placement, capacity).value_tokens_per_s <= bound
    assert bound <= compute_upper_bound(cluster, model, capacity) + 1e-6


def test_layer_work_ratio_decreases_with_flow(helix_setup):
    problem = build_problem(*helix_setup("single24"))
    ratios = [layer_work(problem, f) / f for f in (100.0, 1000.0, 2000.0, 4000.0)]
    assert ratios == sorted(ratios, reverse=True)


def test_single_region_clusters_are_exact_and_geo_clusters_split_into_zones(helix_setup):
    assert build_problem(*helix_setup("single24")).exact
    geo = build_problem(*helix_setup("3cluster24"))
    assert not geo.exact and geo.zones == 3
