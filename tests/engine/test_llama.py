"""The layer-range model against Hugging Face transformers on the same weights (float32, CPU)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from helix.engine import SeqChunk, StepBatch
from helix.engine.model.layers import rope_inv_freq

from .conftest import TinyModel, run_chain

ATOL = 2e-5


def _reference_steps(hf, prompt: torch.Tensor, num_decode: int):
    """Logits of the prompt's last token, then of each greedy decode step (transformers with cache)."""
    with torch.no_grad():
        out = hf(prompt[None], use_cache=True)
        logits = [out.logits[0, -1]]
        cache = out.past_key_values
        for _ in range(num_decode):
            token = logits[-1].argmax().view(1, 1)
            out = hf(token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[0, -1])
    return logits


@pytest.mark.parametrize("ranges", [[(0, 6)], [(0, 2), (2, 4), (4, 6)], [(0, 1), (1, 5), (5, 6)]])
def test_stage_chain_matches_transformers_prefill_and_20_decodes(tiny_llama: TinyModel, ranges):
    prompt = torch.randint(0, 320, (29,), generator=torch.Generator().manual_seed(1))
    expected = _reference_steps(tiny_llama.hf, prompt, 20)
    runners = tiny_llama.runners(ranges)
    logits = run_chain(runners, StepBatch((SeqChunk(0, 0, len(prompt)),)), prompt)
    torch.testing.assert_close(logits[0], expected[0], atol=ATOL, rtol=0)
    for step, want in enumerate(expected[1:]):
        token = expected[step].argmax().view(1)
        batch = StepBatch((SeqChunk(0, len(prompt) + step, 1),))
        torch.testing.assert_close(run_chain(runners, batch, token)[0], want, atol=ATOL, rtol=0)


def test_middle_stage_has_no_embedding_or_head(tiny_llama: TinyModel):
    from helix.engine import LayerRange, build_stage

    stage = build_stage(tiny_llama.config, LayerRange(2, 4))
    assert stage.embed_tokens is None and stage.lm_head is None and len(stage.layers) == 2
    assert all(name.startswith("layers.") for name, _ in stage.named_parameters())


def test_qwen2_biases_match_transformers():
    torch.manual_seed(0)
    hf_config = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        architectures=["Qwen2ForCausalLM"],
        tie_word_embeddings=True,
    )
    hf = Qwen2ForCausalLM(hf_config)
    with torch.no_grad():  # random biases, so that a missing bias would show
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model = TinyModel(hf)
    assert model.config.attention_bias and model.config.tie_word_embeddings
    prompt = torch.randint(0, 256, (17,), generator=torch.Generator().manual_seed(2))
    expected = _reference_steps(model.hf, prompt, 3)
    runners = model.runners([(0, 2), (2, 3)])
    logits = run_chain(runners, StepBatch((SeqChunk(0, 0, 17),)), prompt)
    torch.testing.assert_close(logits[0], expected[0], atol=ATOL, rtol=0)


def test_llama3_rope_scaling_changes_only_low_frequencies():
    from helix.engine.config import RopeScaling

    plain = rope_inv_freq(128, 500000.0, None)
    scaled = rope_inv_freq(128, 500000.0, RopeScaling(8.0, 1.0, 4.0, 8192))
    assert torch.equal(plain[:10], scaled[:10])  # high frequencies untouched
    torch.testing.assert_close(scaled[-1], plain[-1] / 8.0)
