from __future__ import annotations

import pytest
from transformers import MistralConfig, Qwen2Config

from helix.engine import EngineConfig, LayerRange, ModelConfig
from helix.errors import HelixInputError

from .conftest import tiny_llama_config


def test_llama_config_reads_gqa_and_llama3_rope():
    config = ModelConfig.from_hf_dict(tiny_llama_config().to_dict())
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (8, 2, 16)
    assert config.rope_scaling is not None and config.rope_scaling.factor == 8.0
    assert config.family == "llama" and not config.attention_bias


def test_qwen2_has_biases_and_mistral_without_window_is_accepted():
    qwen = ModelConfig.from_hf_dict(Qwen2Config(architectures=["Qwen2ForCausalLM"]).to_dict())
    assert qwen.attention_bias
    mistral = MistralConfig(architectures=["MistralForCausalLM"], sliding_window=None)
    assert ModelConfig.from_hf_dict(mistral.to_dict()).family == "mistral"


def test_round_trip_through_hf_dict():
    config = ModelConfig.from_hf_dict(tiny_llama_config().to_dict())
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"architectures": ["MistralForCausalLM"], "sliding_window": 128}, "sliding_window"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ],
)
def test_unsupported_configs_raise_input_errors(change, field):
    hf = tiny_llama_config().to_dict() | change
    with pytest.raises(HelixInputError) as info:
        ModelConfig.from_hf_dict(hf)
    assert info.value.field == field


@pytest.mark.parametrize(("start", "end"), [(-1, 2), (2, 2), (3, 7), (0, 99)])
def test_layer_range_outside_model(start, end):
    with pytest.raises(HelixInputError, match="layer range"):
        LayerRange(start, end).validate(6)


def test_engine_config_validation():
    with pytest.raises(HelixInputError):
        EngineConfig(block_size=0)
    with pytest.raises(HelixInputError):
        EngineConfig(attention_backend="flash")
