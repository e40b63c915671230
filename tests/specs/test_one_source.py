"""One home per concept: the HF config reader, the architectures, the layer range, the chaining rule."""

from __future__ import annotations

import pytest

from helix.engine import config as engine_config
from helix.errors import HelixInputError
from helix.flow import graph
from helix.scheduling import topology
from helix.sim import run
from helix.specs import hf_config, model, placement

LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 6,
    "hidden_size": 128,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
    "torch_dtype": "float32",
}


def test_one_architecture_table_and_one_layer_range():
    assert model.SUPPORTED_ARCHITECTURES is hf_config.SUPPORTED_ARCHITECTURES
    assert engine_config.SUPPORTED_ARCHITECTURES is hf_config.SUPPORTED_ARCHITECTURES
    assert engine_config.LayerRange is placement.LayerRange
    assert engine_config.RopeScaling is hf_config.RopeScaling


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"architectures": ["Qwen2ForCausalLM"]},
        {"architectures": ["MistralForCausalLM"], "sliding_window": None},
        {"architectures": None, "model_type": "mistral"},
        {"num_key_value_heads": None},
    ],
)
def test_planning_spec_and_engine_config_read_the_same_shape(change):
    hf = LLAMA | change
    spec = model.model_from_hf_config(hf, name="m")
    config = engine_config.ModelConfig.from_hf_dict(hf)
    assert spec.architecture == config.architecture
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads) == (
        config.num_layers,
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
    )
    assert spec.max_context_tokens == config.max_position_embeddings
    assert spec.dtype_bytes == 4


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
        ({"architectures": ["MistralForCausalLM"], "sliding_window": 128}, "sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"num_hidden_layers": None}, "num_hidden_layers"),
        ({"hidden_size": "big"}, "hidden_size"),
    ],
)
def test_both_readers_reject_the_same_configs(change, field):
    hf = LLAMA | change
    for read in (
        lambda: model.model_from_hf_config(hf, name="m"),
        lambda: engine_config.ModelConfig.from_hf_dict(hf),
    ):
        with pytest.raises(HelixInputError) as info:
            read()
        assert info.value.field == field


def test_layer_range_rules():
    with pytest.raises(HelixInputError, match="invalid layer range"):
        placement.LayerRange(3, 3)
    with pytest.raises(HelixInputError, match="outside the model"):
        placement.LayerRange(2, 7).validate(6)
    r = placement.LayerRange(0, 6).validate(6)
    assert r.is_first() and r.is_last(6) and r.num_layers == 6


def test_one_chaining_default():
    default = graph.DEFAULT_PARTIAL_OVERLAP
    assert graph.FlowOptions().partial_overlap is default
    assert topology.Topology.build.__kwdefaults__["partial_overlap"] is default
    assert run.simulate.__kwdefaults__["partial_overlap"] is default
    from helix.placement.plan_io import Plan
    from helix.placement.result import PlannerOptions

    assert PlannerOptions().partial_overlap is default
    assert Plan.__dataclass_fields__["partial_overlap"].default is default


def test_topology_chains_exactly_where_the_flow_graph_does():
    from helix.specs.placement import Placement
    from tests.scheduling.conftest import FlatCapacity, make_cluster

    spec = model.builtin_model("llama-2-70b")
    cluster = make_cluster(["a", "b", "c", "d"])
    plan = Placement.from_pairs({"a": (0, 50), "b": (40, 80), "c": (50, 80), "d": (30, 60)})
    for partial in (False, True):
        topo = topology.Topology.build(cluster, spec, plan, FlatCapacity(100.0), partial_overlap=partial)
        for sender, hops in topo.next_hops.items():
            if sender == "coordinator":
                continue
            for hop in hops:
                if hop.dst != "coordinator":
                    assert graph.chains(plan[sender], plan[hop.dst], partial)
        links = {
            (s, h.dst) for s, hops in topo.next_hops.items() for h in hops if "coordinator" not in (s, h.dst)
        }
        expected = {
            (a, b)
            for a in topo.ranges
            for b in topo.ranges
            if a != b and graph.chains(plan[a], plan[b], partial)
        }
        assert links == expected
