"""Continuous-batching steps: ragged batches, mixed prompt and decode, chunked prompts, errors."""

from __future__ import annotations

import pytest
import torch

from helix.engine import KVCacheExhaustedError, SeqChunk, StepBatch
from helix.errors import HelixInputError

from .conftest import TinyModel, run_chain

RANGES = [(0, 3), (3, 6)]


def _prompts(lengths, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 320, (n,), generator=generator) for n in lengths]


def _greedy_alone(model: TinyModel, prompt: torch.Tensor, num_decode: int) -> list[torch.Tensor]:
    runners = model.runners(RANGES)
    logits = [run_chain(runners, StepBatch((SeqChunk(0, 0, len(prompt)),)), prompt)[0]]
    for step in range(num_decode):
        batch = StepBatch((SeqChunk(0, len(prompt) + step, 1),))
        logits.append(run_chain(runners, batch, logits[-1].argmax().view(1))[0])
    return logits


def test_ragged_batch_equals_one_at_a_time(tiny_llama: TinyModel):
    prompts = _prompts([5, 23, 1, 40])
    alone = [_greedy_alone(tiny_llama, p, 6) for p in prompts]
    runners = tiny_llama.runners(RANGES)
    batch = StepBatch(tuple(SeqChunk(i, 0, len(p)) for i, p in enumerate(prompts)))
    logits = run_chain(runners, batch, torch.cat(prompts))
    for step in range(6):
        for i in range(len(prompts)):
            torch.testing.assert_close(logits[i], alone[i][step], atol=2e-5, rtol=0)
        tokens = logits.argmax(dim=-1)
        batch = StepBatch(tuple(SeqChunk(i, len(p) + step, 1) for i, p in enumerate(prompts)))
        logits = run_chain(runners, batch, tokens)


def test_prompt_and_decode_in_one_step(tiny_llama: TinyModel):
    first, second = _prompts([12, 9], seed=4)
    alone_first = _greedy_alone(tiny_llama, first, 1)
    alone_second = _greedy_alone(tiny_llama, second, 0)
    runners = tiny_llama.runners(RANGES)
    run_chain(runners, StepBatch((SeqChunk(0, 0, 12),)), first)
    token = alone_first[0].argmax().view(1)
    mixed = StepBatch((SeqChunk(1, 0, 9), SeqChunk(0, 12, 1)))
    logits = run_chain(runners, mixed, torch.cat([second, token]))
    torch.testing.assert_close(logits[0], alone_second[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(logits[1], alone_first[1], atol=2e-5, rtol=0)


def test_chunked_prompt_equals_whole_prompt(tiny_llama: TinyModel):
    (prompt,) = _prompts([37], seed=5)
    whole = _greedy_alone(tiny_llama, prompt, 0)[0]
    runners = tiny_llama.runners(RANGES, block_size=8)
    run_chain(runners, StepBatch((SeqChunk(0, 0, 20),)), prompt[:20])
    logits = run_chain(runners, StepBatch((SeqChunk(0, 20, 17),)), prompt[20:])
    torch.testing.assert_close(logits[0], whole, atol=2e-5, rtol=0)


def test_kv_exhaustion_raises_and_changes_nothing(tiny_llama: TinyModel):
    (runner,) = tiny_llama.runners([(0, 6)], num_kv_blocks=4, block_size=8)
    runner.execute(StepBatch((SeqChunk(0, 0, 20),)), torch.zeros(20, dtype=torch.long))
    free = runner.block_manager.num_free_blocks
    batch = StepBatch((SeqChunk(1, 0, 16),))
    assert not runner.can_reserve(batch)
    with pytest.raises(KVCacheExhaustedError, match="2 blocks needed, 1 free"):
        runner.execute(batch, torch.zeros(16, dtype=torch.long))
    assert runner.block_manager.num_free_blocks == free and not runner.block_manager.has(1)
    runner.free(0)
    assert runner.block_manager.num_free_blocks == 4


def test_prompt_longer_than_context_is_an_input_error(tiny_llama: TinyModel):
    (runner,) = tiny_llama.runners([(0, 6)], max_model_len=32)
    with pytest.raises(HelixInputError, match="context window of 32"):
        runner.execute(StepBatch((SeqChunk(0, 0, 40),)), torch.zeros(40, dtype=torch.long))


def test_bad_batches_are_rejected(tiny_llama: TinyModel):
    with pytest.raises(ValueError, match="before decode"):
        StepBatch((SeqChunk(0, 5, 1), SeqChunk(1, 0, 4)))
    with pytest.raises(ValueError, match="twice"):
        StepBatch((SeqChunk(0, 0, 4), SeqChunk(0, 0, 4)))
    (runner,) = tiny_llama.runners([(0, 6)])
    with pytest.raises(ValueError, match="no cached tokens"):
        runner.execute(StepBatch((SeqChunk(9, 5, 1),)), torch.zeros(1, dtype=torch.long))


def test_capacity_from_memory_on_cpu(tiny_llama: TinyModel):
    from helix.engine import EngineConfig, LayerRange, ModelRunner, build_stage

    stage = build_stage(tiny_llama.config, LayerRange(0, 6), max_positions=512)
    runner = ModelRunner(stage, EngineConfig())
    assert runner.block_manager.num_blocks > 1000  # 256 MiB budget, ~12 KiB per block here
    assert runner.kv_cache.shape[2] == runner.block_manager.num_blocks + 1
