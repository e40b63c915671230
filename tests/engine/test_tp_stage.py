"""A stage split over 2 and 4 tensor-parallel ranks (gloo, one process per rank) computes the logits of
the same stage on one rank: a ragged prompt batch, prompts joining running decodes, 20 decode steps."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaForCausalLM

from helix.engine import EngineConfig, LayerRange, ModelConfig, ModelRunner, SeqChunk, StepBatch, build_stage
from helix.engine.tp import TPStageSpec, start_tp_runner
from helix.engine.weights import SafetensorsSource

from .conftest import tiny_llama_config

PROMPTS = {0: [5, 17, 42, 99, 3, 7, 200, 31], 1: [1, 2, 3], 2: [250, 128, 64, 32, 16, 8, 4, 2, 1, 0, 9]}
LATE_PROMPT = (3, [11, 12, 13, 14, 15])  # joins the running decodes at step 4
NUM_DECODE_STEPS = 20


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=2, num_key_value_heads=2))
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path, ModelConfig.from_hf_dict(model.config.to_dict())


def _inputs(runner, ids: list[int], step: int) -> torch.Tensor:
    """Token ids for a first stage, else hidden states [T, H] that depend only on the step."""
    if runner.model.is_first:
        return torch.tensor(ids)
    hidden = runner.model.config.hidden_size
    return torch.randn(len(ids), hidden, generator=torch.Generator().manual_seed(step))


def _scenario(runner):
    """Logits of every step of the scenario (token ids derived deterministically, not from logits)."""
    lengths = {i: len(p) for i, p in PROMPTS.items()}
    batch = StepBatch(tuple(SeqChunk(i, 0, n) for i, n in lengths.items()))
    logits = [runner.execute(batch, _inputs(runner, [t for p in PROMPTS.values() for t in p], -1))]
    active = list(PROMPTS)
    for step in range(NUM_DECODE_STEPS):
        chunks, ids = [], []
        if step == 4:
            seq, prompt = LATE_PROMPT
            chunks.append(SeqChunk(seq, 0, len(prompt)))
            ids.extend(prompt)
            lengths[seq] = len(prompt)
        if step == 10:
            runner.free(1)  # a finished request: its blocks go back on every rank
            active.remove(1)
        for seq in active:
            chunks.append(SeqChunk(seq, lengths[seq], 1))
            ids.append((7 * seq + 13 * step) % 300)
            lengths[seq] += 1
        if step == 4:
            active.append(LATE_PROMPT[0])
        logits.append(runner.execute(StepBatch(tuple(chunks)), _inputs(runner, ids, step)))
    return logits


def _compare(config: ModelConfig, model_dir, world: int, layers: LayerRange, atol: float):
    engine_config = EngineConfig(num_kv_blocks=64, max_model_len=256)
    stage = build_stage(config, layers, source=SafetensorsSource(model_dir), max_positions=256)
    expected = _scenario(ModelRunner(stage, engine_config))
    spec = TPStageSpec(config, layers, engine_config, max_positions=256, model_dir=str(model_dir))
    runner = start_tp_runner(spec, ["cpu"] * world, start_timeout_s=120)
    pids = runner.rank_pids
    try:
        got = _scenario(runner)
        assert runner.failure is None
    finally:
        runner.close()
    assert all(not _alive(pid) for pid in pids)
    assert len(got) == len(expected) == NUM_DECODE_STEPS + 1
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.shape == b.shape, step
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-4, msg=lambda m, step=step: f"step {step}: {m}")
        top2 = b.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 10 * atol  # rows without a near-tie pick the same token
        assert torch.equal(a.argmax(-1)[clear], b.argmax(-1)[clear]), step


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("world", [2, 4])
def test_tiny_llama_stage_over_ranks_equals_one_rank(tiny_dir, world):
    path, config = tiny_dir
    _compare(config, path, world, LayerRange(0, config.num_layers), atol=1e-5)


@pytest.mark.parametrize("world", [2, 4])
def test_smollm2_stage_over_ranks_equals_one_rank(smollm2, world):
    config = smollm2.config  # 9 heads, 3 KV heads: uneven head split over 2 and 4 ranks
    last = LayerRange(config.num_layers - 2, config.num_layers)  # hidden states in, logits out
    _compare(config, smollm2.model_dir, world, last, atol=1e-3)
