"""Which heads, KV heads, MLP columns and vocabulary rows each tensor-parallel rank holds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helix.engine.config import LLAMA3_8B_HF_CONFIG, LayerRange, ModelConfig
from helix.engine.tp.plan import local_config, shard_plan, split_evenly
from helix.engine.tp.shard import build_rank_stage, split_invariant_tensors
from helix.engine.tp.stage import tp_kv_blocks
from helix.errors import HelixInputError

LLAMA3_8B = ModelConfig.from_hf_dict(LLAMA3_8B_HF_CONFIG)


def _config(heads: int, kv: int, **kw) -> ModelConfig:
    return dataclasses.replace(LLAMA3_8B, num_heads=heads, num_kv_heads=kv, head_dim=64, **kw)


def test_split_evenly_covers_the_range():
    assert split_evenly(9, 4) == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert split_evenly(8, 2) == [(0, 4), (4, 8)]


def test_llama3_8b_over_two_ranks_is_the_even_split():
    shards = shard_plan(LLAMA3_8B, 2)
    assert [s.q_heads for s in shards] == [(0, 16), (16, 32)]
    assert [s.kv_heads for s in shards] == [(0, 4), (4, 8)]
    assert [s.mlp for s in shards] == [(0, 7168), (7168, 14336)]
    assert [s.vocab for s in shards] == [(0, 64128), (64128, 128256)]
    local = local_config(LLAMA3_8B, shards[1])
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (16, 4, 7168)


def test_fewer_kv_heads_than_ranks_replicates_them_like_vllm():
    shards = shard_plan(_config(8, 2), 4)  # each KV head serves two ranks
    assert [s.q_heads for s in shards] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [s.kv_heads for s in shards] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    # every rank's query heads belong to its KV head's group
    for s in shards:
        assert all(q // 4 == s.kv_heads[0] for q in range(*s.q_heads))


def test_smollm2_shape_splits_unevenly_by_kv_group():
    config = _config(9, 3, intermediate_size=1536, vocab_size=49152)
    assert [s.q_heads for s in shard_plan(config, 2)] == [(0, 6), (6, 9)]
    four = shard_plan(config, 4)
    assert [s.q_heads for s in four] == [(0, 2), (2, 3), (3, 6), (6, 9)]
    assert [s.kv_heads for s in four] == [(0, 1), (0, 1), (1, 2), (2, 3)]


def test_impossible_splits_say_why():
    with pytest.raises(HelixInputError, match="query heads"):
        shard_plan(_config(2, 1), 4)
    with pytest.raises(HelixInputError, match="tensor_parallel|>= 1"):
        shard_plan(LLAMA3_8B, 0)


def test_uneven_vocabulary_keeps_a_replicated_head():
    assert all(s.vocab is None for s in shard_plan(_config(8, 8, vocab_size=1001), 2))


def test_summed_kv_capacity():
    one = tp_kv_blocks(LLAMA3_8B, 1, 32, 1 << 30, torch.bfloat16)
    assert tp_kv_blocks(LLAMA3_8B, 2, 32, 1 << 30, torch.bfloat16) == 2 * one
    # 8 KV heads over 16 ranks: one replicated head each, so only 8 times one device's tokens
    assert tp_kv_blocks(_config(32, 8), 16, 32, 1 << 30, torch.bfloat16) == 8 * tp_kv_blocks(
        _config(32, 8), 1, 32, 1 << 30, torch.bfloat16
    )


def test_one_rank_stage_holds_the_whole_weights():
    tiny = dataclasses.replace(
        _config(8, 2, intermediate_size=96, vocab_size=128, hidden_size=64), head_dim=8, num_layers=2
    )
    tensors = split_invariant_tensors(1, torch.device("cpu"), torch.float32)
    shard = shard_plan(tiny, 1)[0]
    whole = build_rank_stage(tiny, LayerRange(0, 2), shard, None, tensors, device="cpu", dtype=torch.float32)
    assert whole.layers[0].self_attn.qkv_proj.weight.shape == (8 * 8 + 2 * 2 * 8, 64)
    assert whole.lm_head.weight.shape == (128, 64)
