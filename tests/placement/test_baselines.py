import pytest

from helix.errors import HelixInputError
from helix.flow import FlowOptions, evaluate_placement
from helix.perf.roofline import RooflineCapacityModel
from helix.placement.baselines import BASELINES, petals_placement, stage_bounds, swarm_placement
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import builtin_model

HELIX_VALUES = {  # (cluster, method) → max flow Helix reports for the same baseline (placement.md §9)
    ("single24", "swarm"): 757.853,
    ("3cluster24", "swarm"): 616.455,
    ("cluster42", "swarm"): 4892.242,
}


@pytest.mark.parametrize("cluster_name", ["single24", "3cluster24", "cluster42", "cluster10"])
@pytest.mark.parametrize("method", sorted(BASELINES))
def test_baselines_respect_memory_and_cover_layers(helix_setup, cluster_name, method):
    cluster, model, capacity = helix_setup(cluster_name)
    placement = BASELINES[method](cluster, model, capacity, seed=0)
    for name, r in placement.items():
        assert r.num_layers <= capacity.max_layers(cluster.node(name).gpu.name)
        assert r.end <= model.num_layers
    assert placement.uncovered_layers(model.num_layers) == []
    flow = evaluate_placement(cluster, model, placement, capacity, FlowOptions(partial_overlap=True))
    assert flow.value_tokens_per_s > 0


@pytest.mark.parametrize("key, value", sorted(HELIX_VALUES.items()))
def test_swarm_matches_helix(helix_setup, key, value):
    cluster, model, capacity = helix_setup(key[0])
    placement = swarm_placement(cluster, model, capacity)
    assert evaluate_placement(cluster, model, placement, capacity).value_tokens_per_s == pytest.approx(
        value, abs=1e-3
    )


def test_petals_takes_max_layers_and_is_seeded(helix_setup):
    cluster, model, capacity = helix_setup("single24")
    a = petals_placement(cluster, model, capacity, seed=1)
    assert all(r.num_layers == capacity.max_layers(cluster.node(n).gpu.name) for n, r in a.items())
    assert a == petals_placement(cluster, model, capacity, seed=1)
    assert evaluate_placement(cluster, model, a, capacity, FlowOptions(True)).value_tokens_per_s > 0


def test_stage_bounds():
    assert [(r.start, r.end) for r in stage_bounds(10, 3)] == [(0, 4), (4, 7), (7, 10)]


def test_model_that_does_not_fit():
    cluster = cluster_from_dict({"nodes": [{"name": "t", "gpu": "T4", "count": 2}]})
    model = builtin_model("llama-2-70b")
    capacity = RooflineCapacityModel(model, cluster.composition())
    with pytest.raises(HelixInputError, match="can hold only 8"):
        petals_placement(cluster, model, capacity)
