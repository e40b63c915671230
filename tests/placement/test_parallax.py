"""Parallax-style allocation: water-filling, disjoint pipelines (greedy and DP), leftover replication."""

from __future__ import annotations

import pytest

from helix.perf.roofline import RooflineCapacityModel
from helix.placement.parallax import _dp_pipelines, _greedy_pipelines, parallax_placement, water_fill
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import builtin_model


def test_water_fill_is_proportional_to_power_under_the_caps():
    # λ·w with w = (3, 1, 1): 6, 2, 2 sums to 10; the first node is capped at 4, so λ rises: 4, 3, 3
    assert water_fill(10, [8, 8, 8], [3.0, 1.0, 1.0]) == [6, 2, 2]
    assert water_fill(10, [4, 8, 8], [3.0, 1.0, 1.0]) == [4, 3, 3]
    layers = water_fill(80, [12] * 4 + [7] * 4 + [4] * 4, [5.0] * 4 + [1.0] * 8)
    assert sum(layers) == 80 and layers[:4] == [12] * 4 and all(k >= 1 for k in layers)
    with pytest.raises(ValueError):
        water_fill(10, [3, 3], [1.0, 1.0])


class Node:
    def __init__(self, name):
        self.name = name


def test_dp_trades_pipelines_against_stages():
    """Capacities 6, 6, 6 and twelve 1s, L = 6: k pipelines cost s*(k) = 3 (k = 3), 3 + 6 (k = 4), 3 + 12
    (k = 5); k²/s* = 3, 16/9, 25/15: the DP builds 3 one-stage pipelines. Greedy builds all 5."""
    nodes = [Node(f"n{i}") for i in range(15)]
    caps = dict(zip([n.name for n in nodes], [6, 6, 6] + [1] * 12, strict=True))
    pipelines = _dp_pipelines(nodes, caps, 6)
    assert sorted(len(p) for p in pipelines) == [1, 1, 1]
    assert {p[0].name for p in pipelines} == {"n0", "n1", "n2"}
    assert sorted(len(p) for p in _greedy_pipelines(nodes, caps, 6)) == [1, 1, 1, 6, 6]


@pytest.mark.parametrize("strategy", ["dp", "greedy"])
def test_parallax_placement_covers_the_model_within_memory(helix_setup, strategy):
    cluster, model, capacity = helix_setup("cluster42")
    placement = parallax_placement(cluster, model, capacity, strategy=strategy)
    assert not placement.uncovered_layers(model.num_layers)
    for name, r in placement.items():
        assert r.num_layers <= capacity.max_layers(cluster.node(name).gpu.name)
    assert len(placement) == len(cluster.nodes)  # leftovers replicate the least-served layers


def test_parallax_on_a_small_yaml_cluster():
    cluster = cluster_from_dict(
        {"name": "s", "nodes": [{"name": "a", "gpu": "A100-80GB", "count": 3}]}, where="test"
    )
    model = builtin_model("llama-3-8b")
    capacity = RooflineCapacityModel(model, cluster.composition())
    placement = parallax_placement(cluster, model, capacity)
    assert not placement.uncovered_layers(model.num_layers)
