"""The single-process engine: continuous batching, stopping, cancelling, preemption, errors."""

from __future__ import annotations

import pytest
import torch

from helix.engine import FinishReason, KVCacheExhaustedError, LLMEngine, SamplingParams, even_split
from helix.errors import HelixInputError

from .conftest import TinyModel

GREEDY = SamplingParams(temperature=0, max_tokens=8)


def _engine(model: TinyModel, ranges=((0, 2), (2, 6)), **kwargs) -> LLMEngine:
    return LLMEngine(model.runners(list(ranges), **kwargs), eos_token_ids=())


def _prompts(lengths, seed=11):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 320, (n,), generator=generator).tolist() for n in lengths]


def _reference_greedy(model: TinyModel, prompt: list[int], num_tokens: int) -> list[int]:
    out = model.hf.generate(
        torch.tensor([prompt]), max_new_tokens=num_tokens, min_new_tokens=num_tokens, do_sample=False
    )
    return out[0, len(prompt) :].tolist()


def test_generate_matches_transformers_with_continuous_batching(tiny_llama: TinyModel):
    prompts = _prompts([7, 30, 3, 18])
    engine = _engine(tiny_llama, max_num_batched_tokens=32, max_num_seqs=3)  # forces chunking, queueing
    outputs = engine.generate(prompts, GREEDY)
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.output_token_ids == _reference_greedy(tiny_llama, prompt, 8)
        assert out.finish_reason is FinishReason.LENGTH
    assert all(r.block_manager.num_free_blocks == r.block_manager.num_blocks for r in engine.runners)


def test_preemption_under_kv_pressure_keeps_results(tiny_llama: TinyModel):
    prompts = _prompts([14, 14, 14], seed=12)
    params = SamplingParams(temperature=0, max_tokens=12)
    engine = _engine(tiny_llama, num_kv_blocks=7, block_size=8)  # 56 slots: not all three fit
    outputs = engine.generate(prompts, params)
    for prompt, out in zip(prompts, outputs, strict=True):
        assert out.output_token_ids == _reference_greedy(tiny_llama, prompt, 12)
    assert all(r.block_manager.num_free_blocks == 7 for r in engine.runners)


def test_stop_tokens_and_cancel_free_blocks(tiny_llama: TinyModel):
    (prompt,) = _prompts([10], seed=13)
    expected = _reference_greedy(tiny_llama, prompt, 8)
    engine = _engine(tiny_llama)
    stop = SamplingParams(temperature=0, max_tokens=8, stop_token_ids=(expected[2],))
    (out,) = engine.generate([prompt], stop)
    assert out.output_token_ids == expected[: expected.index(expected[2]) + 1]
    assert out.finish_reason is FinishReason.STOP
    seq_id = engine.add_request(prompt, GREEDY)
    engine.step()
    assert any(r.block_manager.has(seq_id) for r in engine.runners)
    engine.cancel(seq_id)
    assert not engine.has_unfinished()
    assert all(r.block_manager.num_used_blocks == 0 for r in engine.runners)


def test_seeded_sampling_with_logprobs(tiny_llama: TinyModel):
    (prompt,) = _prompts([6], seed=14)
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=5, max_tokens=6, logprobs=1)
    first = _engine(tiny_llama).generate([prompt], params)[0]
    second = _engine(tiny_llama).generate([prompt], params)[0]
    assert first.output_token_ids == second.output_token_ids
    assert len(first.output_logprobs) == 6 and all(lp for lp in first.output_logprobs)


def test_bad_requests(tiny_llama: TinyModel):
    engine = _engine(tiny_llama, max_model_len=64, num_kv_blocks=2, block_size=16)
    with pytest.raises(HelixInputError, match="context window"):
        engine.add_request(list(range(64)), GREEDY)
    with pytest.raises(HelixInputError, match="empty prompt"):
        engine.add_request([], GREEDY)
    with pytest.raises(KVCacheExhaustedError):
        engine.add_request(list(range(40)), GREEDY)  # needs 3 blocks, the cache has 2
    with pytest.raises(HelixInputError, match="not contiguous"):
        LLMEngine(tiny_llama.runners([(0, 2), (3, 6)]))


def test_even_split():
    assert [(r.start, r.end) for r in even_split(30, 3)] == [(0, 10), (10, 20), (20, 30)]
    assert [r.num_layers for r in even_split(7, 3)] == [2, 3, 2]


def test_prefix_cache_hits_give_the_same_tokens_as_misses_and_transformers(tiny_llama: TinyModel):
    system = _prompts([37], seed=21)[0]  # two full blocks of 16 and a partial one
    prompts = [system + tail for tail in _prompts([5, 1, 9], seed=22)]
    engine = _engine(tiny_llama)
    first = engine.generate(prompts[:1], GREEDY)
    rest = engine.generate(prompts[1:], GREEDY)  # admitted after the first: hit its prompt blocks
    managers = [r.block_manager for r in engine.runners]
    assert all(m.hit_tokens == 2 * 32 for m in managers)
    for prompt, out in zip(prompts, first + rest, strict=True):
        assert out.output_token_ids == _reference_greedy(tiny_llama, prompt, 8)
    cold = _engine(tiny_llama, enable_prefix_caching=False).generate(prompts, GREEDY)
    assert [o.output_token_ids for o in cold] == [o.output_token_ids for o in first + rest]
    assert all(m.num_free_blocks == m.num_blocks for m in managers)


def test_async_and_sync_scheduling_agree_with_sampling(tiny_llama: TinyModel):
    prompts = _prompts([6, 20, 3], seed=23)
    params = SamplingParams(temperature=0.9, top_k=30, seed=3, max_tokens=7)
    outs = [
        [o.output_token_ids for o in _engine(tiny_llama, async_scheduling=mode).generate(prompts, params)]
        for mode in (True, False)
    ]
    assert outs[0] == outs[1]


def test_fp16_engine_matches_float32(tiny_llama: TinyModel):
    """fp16 weights and KV on CPU (the T4 / V100 dtype) give the float32 engine's greedy tokens."""
    from helix.engine import LayerRange, ModelRunner, build_stage
    from helix.engine.config import EngineConfig

    prompts = _prompts([12, 30], seed=24)
    config = EngineConfig(num_kv_blocks=64)
    runners = [
        ModelRunner(
            build_stage(tiny_llama.config, LayerRange(a, b), dtype=torch.float16, source=tiny_llama.source),
            config,
        )
        for a, b in ((0, 2), (2, 6))
    ]
    assert runners[0].kv_cache.dtype == torch.float16
    half = LLMEngine(runners).generate(prompts, GREEDY)
    full = _engine(tiny_llama).generate(prompts, GREEDY)
    same = sum(
        a == b
        for h, f in zip(half, full, strict=True)
        for a, b in zip(h.output_token_ids, f.output_token_ids, strict=True)
    )
    assert same >= 14  # of 16: fp16 rounding may flip a near-tie late in a sequence
