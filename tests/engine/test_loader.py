"""Model resolution and range loading; SmolLM2 (GGUF) end to end against transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from helix.engine import (
    EngineConfig,
    LayerRange,
    LLMEngine,
    SamplingParams,
    load_hf_config,
    resolve_model,
)
from helix.engine.weights import SafetensorsSource
from helix.errors import HelixInputError

from .conftest import TinyModel


@pytest.fixture()
def tiny_dir(tiny_llama: TinyModel, tmp_path):
    tiny_llama.hf.save_pretrained(tmp_path)
    return tmp_path


def test_stage_reads_only_its_own_tensors(tiny_dir, monkeypatch):
    read: list[str] = []
    original = SafetensorsSource.get
    monkeypatch.setattr(
        SafetensorsSource, "get", lambda self, name: read.append(name) or original(self, name)
    )
    stage = resolve_model(tiny_dir).load_stage(LayerRange(2, 4))
    assert read and all(name.startswith(("model.layers.2.", "model.layers.3.")) for name in read)
    assert stage.embed_tokens is None


def test_loaded_stage_equals_source_weights(tiny_dir, tiny_llama: TinyModel):
    stage = resolve_model(tiny_dir).load_stage(LayerRange(4, 6))
    hf_layer = tiny_llama.hf.model.layers[5]
    torch.testing.assert_close(stage.layers[1].mlp.down_proj.weight, hf_layer.mlp.down_proj.weight)
    torch.testing.assert_close(stage.lm_head.weight, tiny_llama.hf.lm_head.weight)


def test_checkpoint_missing_tensors_for_the_range(tiny_dir, tiny_llama: TinyModel):
    state = {k: v.contiguous() for k, v in tiny_llama.hf.state_dict().items() if ".layers.3." not in k}
    (tiny_dir / "model.safetensors").unlink()
    save_file(state, tiny_dir / "model.safetensors")
    model = resolve_model(tiny_dir)
    model.load_stage(LayerRange(0, 3))  # fine: layer 3 is not needed
    with pytest.raises(HelixInputError, match=r"lacks 9 tensors of layers \[2, 4\)"):
        model.load_stage(LayerRange(2, 4))


def test_bad_model_specs(tmp_path, tiny_dir):
    with pytest.raises(HelixInputError, match="not a model"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(HelixInputError, match="not found"):
        resolve_model(tmp_path / "missing.gguf")
    hf = json.loads((tiny_dir / "config.json").read_text())
    (tiny_dir / "config.json").write_text(json.dumps(hf | {"architectures": ["BertModel"]}))
    with pytest.raises(HelixInputError, match="unsupported architecture"):
        resolve_model(tiny_dir)


def test_layer_range_outside_the_model(tiny_dir):
    with pytest.raises(HelixInputError, match="outside the model"):
        resolve_model(tiny_dir).load_stage(LayerRange(4, 7))


def test_hf_config_for_specs(tiny_dir):
    hf = load_hf_config(tiny_dir)
    assert hf["num_hidden_layers"] == 6 and hf["num_key_value_heads"] == 2


CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for learning to program.",
]


@pytest.mark.slow
def test_smollm2_three_stages_match_transformers_greedy(smollm2):
    from transformers import AutoModelForCausalLM

    assert smollm2.config.num_layers == 30 and smollm2.config.tie_word_embeddings
    tokenizer = smollm2.tokenizer()
    prompts = [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
        for p in CHAT_PROMPTS
    ]
    config = EngineConfig(num_kv_blocks=64, max_model_len=1024)
    engine = LLMEngine.from_model(smollm2, 3, engine_config=config)
    assert [r.model.layer_range for r in engine.runners] == [
        LayerRange(0, 10),
        LayerRange(10, 20),
        LayerRange(20, 30),
    ]
    outputs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=32))
    reference = AutoModelForCausalLM.from_pretrained(smollm2.model_dir, dtype=torch.float32).eval()
    for prompt, out in zip(prompts, outputs, strict=True):
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
        expected = expected[0, len(prompt) :].tolist()
        assert out.output_token_ids == expected
    assert tokenizer.decode(outputs[0].output_token_ids, skip_special_tokens=True).strip() == (
        "The capital of France is Paris."
    )


def test_each_safetensors_file_is_opened_once(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from helix.engine import weights

    save_file({"a": torch.ones(2), "b": torch.zeros(3)}, tmp_path / "one.safetensors")
    save_file({"c": torch.ones(4)}, tmp_path / "two.safetensors")
    opened = []
    real = weights.safe_open
    source = weights.SafetensorsSource(tmp_path)
    monkeypatch.setattr(weights, "safe_open", lambda path, **kw: opened.append(path) or real(path, **kw))
    assert [source.get(n).numel() for n in ("a", "b", "c", "a")] == [2, 3, 4, 2]
    assert sorted(p.name for p in opened) == ["one.safetensors", "two.safetensors"]
    source.close()
