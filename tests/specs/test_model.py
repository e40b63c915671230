import json

import pytest

from helix.errors import HelixInputError
from helix.specs.model import BUILTIN_MODELS, builtin_model, load_model_spec


def test_builtins_present():
    for name in ("llama-2-70b", "llama-1-30b", "llama-3-8b", "llama-3-70b", "smollm2-135m"):
        assert name in BUILTIN_MODELS


def test_llama3_8b_sizes():
    m = builtin_model("llama-3-8b")
    # q,o: 4096²; k,v: 4096·1024; mlp: 3·4096·14336; norms 2·4096 → 218,112,000 params per layer.
    assert m.layer_params == 218_112_000
    assert m.layer_weight_bytes == 2 * 218_112_000
    assert m.activation_bytes_per_token == 8192
    assert m.kv_bytes_per_token_per_layer == 2 * 8 * 128 * 2


def test_helix_70b_uses_its_layer_size():
    m = builtin_model("llama-2-70b")
    assert m.layer_weight_bytes == 1.53e9 and m.activation_bytes_per_token == 16384


def test_from_hf_config(tmp_path):
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "num_hidden_layers": 24,
        "hidden_size": 896,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "torch_dtype": "bfloat16",
        "max_position_embeddings": 32768,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    m = load_model_spec(tmp_path)
    assert m.num_layers == 24 and m.kv_dim == 128 and m.max_context_tokens == 32768


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(HelixInputError, match="unsupported architecture"):
        load_model_spec(tmp_path / "config.json")


def test_missing_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(HelixInputError, match="missing field"):
        load_model_spec(tmp_path)


def test_unknown_model_name():
    with pytest.raises(HelixInputError, match="unknown model"):
        load_model_spec("gpt-17")
