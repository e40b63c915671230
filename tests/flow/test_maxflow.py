"""Max-flow evaluation: a hand-solved graph and Helix's ten published placements."""

import pytest

from helix.flow import FlowOptions, build_flow_graph, evaluate_placement
from helix.perf.roofline import RooflineCapacityModel
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.helix_ini import load_helix_placement
from helix.specs.model import builtin_model
from helix.specs.placement import Placement

PUBLISHED = [
    ("single24_llama70b_helix_milp", "single24", 1289.556, 1289.556),
    ("single24_llama70b_petals", "single24", 531.703, 952.107),
    ("single24_llama70b_swarm", "single24", 757.853, 757.853),
    ("3cluster24_llama70b_helix_milp", "3cluster24", 1212.177, 1212.177),
    ("3cluster24_llama70b_swarm", "3cluster24", 616.455, 616.455),
    ("3cluster24_llama70b_petals", "3cluster24", 0.0, 952.107),
    ("cluster42_llama70b_helix_milp", "cluster42", 4137.548, 4137.548),
    ("cluster42_llama70b_swarm", "cluster42", 4892.242, 4892.242),
    ("cluster42_llama70b_petals", "cluster42", 655.730, 3292.244),
    ("cluster10_llama30b_helix_milp", "cluster10", 286.587, 286.587),
]


@pytest.mark.parametrize("placement_file, cluster_name, strict, partial", PUBLISHED)
def test_published_placements(ref, helix_setup, placement_file, cluster_name, strict, partial):
    cluster, model, capacity = helix_setup(cluster_name)
    placement = load_helix_placement(ref / "placements" / f"{placement_file}.ini")
    assert evaluate_placement(cluster, model, placement, capacity).value_tokens_per_s == pytest.approx(
        strict, abs=1e-3
    )
    assert evaluate_placement(
        cluster, model, placement, capacity, FlowOptions(partial_overlap=True)
    ).value_tokens_per_s == pytest.approx(partial, abs=1e-3)


def tiny_cluster(link_gbps: float):
    return cluster_from_dict(
        {
            "regions": {"r": {"bandwidth_gbps": link_gbps, "latency_ms": 1}},
            "nodes": [
                {"name": "a", "gpu": "A100-80GB"},
                {"name": "b", "gpu": "L4"},
                {"name": "c", "gpu": "L4"},
            ],
        }
    )


def test_hand_solved_two_branches():
    """a holds [0,16); b and c each hold [16,32). Flow = min(cap_a, cap_b + cap_c)."""
    cluster, model = tiny_cluster(100.0), builtin_model("llama-3-8b")
    capacity = RooflineCapacityModel(model, cluster.composition())
    placement = Placement.from_pairs({"a": (0, 16), "b": (16, 32), "c": (16, 32)})
    result = evaluate_placement(cluster, model, placement, capacity)
    cap_a = capacity.throughput_tokens_per_s("A100-80GB", 16)
    cap_b = capacity.throughput_tokens_per_s("L4", 16)
    assert result.value_tokens_per_s == pytest.approx(min(cap_a, 2 * cap_b), abs=1e-5)
    assert result.node_inflow["b"] + result.node_inflow["c"] == pytest.approx(
        result.value_tokens_per_s, abs=1e-5
    )


def test_slow_link_is_the_bottleneck():
    cluster, model = tiny_cluster(0.001), builtin_model("llama-3-8b")  # 1 Mbit/s links
    capacity = RooflineCapacityModel(model, cluster.composition())
    placement = Placement.from_pairs({"a": (0, 16), "b": (16, 32)})
    result = evaluate_placement(cluster, model, placement, capacity)
    link_tokens = 1e6 / 8 / model.activation_bytes_per_token
    assert result.value_tokens_per_s == pytest.approx(link_tokens, abs=1e-5)
    assert any(e.kind == "link" for e in result.bottleneck)


def test_gap_in_layers_gives_zero_flow_and_partial_links():
    cluster, model = tiny_cluster(100.0), builtin_model("llama-3-8b")
    capacity = RooflineCapacityModel(model, cluster.composition())
    overlap = Placement.from_pairs({"a": (0, 20), "b": (16, 32)})
    assert evaluate_placement(cluster, model, overlap, capacity).value_tokens_per_s == 0
    assert evaluate_placement(cluster, model, overlap, capacity, FlowOptions(True)).value_tokens_per_s > 0
    graph = build_flow_graph(cluster, model, overlap, capacity, FlowOptions(True))
    assert any(e.kind == "link" and e.src_node == "a" and e.dst_node == "b" for e in graph.edges)


def test_over_memory_placement_is_rejected():
    from helix.errors import HelixInputError

    cluster, model = tiny_cluster(100.0), builtin_model("llama-2-70b")
    capacity = RooflineCapacityModel(model, cluster.composition())
    with pytest.raises(HelixInputError, match="at most"):
        evaluate_placement(cluster, model, Placement.from_pairs({"b": (0, 40)}), capacity)
