from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helix.engine import BlockManager, KVCacheExhaustedError


def test_allocate_append_free():
    manager = BlockManager(num_blocks=4, block_size=4)
    assert manager.allocate(1, 5) == [0, 1]
    assert manager.slots(1, 3, 5) == [3, 4]
    assert manager.can_append(1, 3) and manager.append(1, 3) == []
    assert manager.append(1, 1) == [2]
    assert not manager.can_allocate(5)
    with pytest.raises(KVCacheExhaustedError):
        manager.allocate(2, 5)
    assert manager.num_free_blocks == 1  # the failed allocation changed nothing
    manager.free(1)
    manager.free(1)  # idempotent
    assert manager.num_free_blocks == 4


def test_grow_to_is_append_that_checks_first():
    manager = BlockManager(num_blocks=3, block_size=4)
    manager.allocate(1, 3)
    assert manager.grow_to(1, 4) and manager.block_table(1) == [0] and manager.num_tokens(1) == 4
    assert manager.grow_to(1, 2) and manager.num_tokens(1) == 4  # nothing to add
    assert manager.grow_to(1, 9) and manager.block_table(1) == [0, 1, 2]
    assert not manager.grow_to(1, 13)  # a fourth block: none free, nothing changes
    assert manager.num_tokens(1) == 9 and manager.block_table(1) == [0, 1, 2]
    assert not manager.grow_to(2, 1)  # unknown sequence
    manager.free(1)
    assert manager.num_free_blocks == 3


def test_duplicate_allocation_is_rejected():
    manager = BlockManager(num_blocks=4, block_size=4)
    manager.allocate(7, 1)
    with pytest.raises(ValueError):
        manager.allocate(7, 1)


@settings(max_examples=5, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_no_leak_after_1000_admit_finish_cancel_cycles(seed):
    rng = random.Random(seed)
    manager = BlockManager(num_blocks=64, block_size=4)
    live: set[int] = set()
    for seq_id in range(1000):
        if manager.can_allocate(n := rng.randint(1, 40)):
            manager.allocate(seq_id, n)
            live.add(seq_id)
        for other in list(live):
            action = rng.random()
            if action < 0.5 and manager.can_append(other, k := rng.randint(1, 6)):
                manager.append(other, k)
            elif action < 0.6:  # finish or cancel: both free
                manager.free(other)
                live.discard(other)
        held = [b for s in live for b in manager.block_table(s)]
        assert len(held) == len(set(held)) == manager.num_used_blocks
        assert all(len(manager.block_table(s)) == manager.num_blocks_for(manager.num_tokens(s)) for s in live)
    for seq_id in live:
        manager.free(seq_id)
    assert manager.num_free_blocks == 64


def test_prefix_blocks_are_shared_then_cached_then_evicted_lru():
    manager = BlockManager(num_blocks=6, block_size=4)
    prompt = list(range(10))  # two full blocks and a partial one
    manager.allocate(1, 10, prompt)
    manager.commit(1, prompt, 10)
    assert manager.num_cached_blocks == 2
    assert manager.match_prefix(prompt + [99]) == 2
    assert manager.match_prefix([0, 1, 2, 7] + prompt[4:]) == 0  # the first block differs
    shared = manager.allocate(2, 12, prompt + [5, 6], num_cached_blocks=2)
    assert shared[:2] == manager.block_table(1)[:2] and manager.ref_count(shared[0]) == 2
    manager.free(1)
    manager.free(2)
    assert manager.num_free_blocks == 6 and manager.num_cached_blocks == 2  # released, still cached
    assert manager.match_prefix(prompt) == 2
    manager.allocate(3, 16)  # takes the 4 blocks never hashed before any cached one
    assert manager.num_cached_blocks == 2
    manager.allocate(4, 4)  # now a cached block goes: the prefix's last, released before its first
    assert manager.num_cached_blocks == 1 and manager.match_prefix(prompt) == 1


def test_no_block_leaks_after_random_admit_finish_cancel_preempt_cycles():
    """1,000 random cycles over the scheduler (admission with prefix hits, growth, preemption)."""
    from helix.engine.config import EngineConfig
    from helix.engine.sampling_params import SamplingParams
    from helix.engine.scheduler import Scheduler
    from helix.engine.sequence import Sequence

    rng = random.Random(0)
    managers = [BlockManager(18, 4), BlockManager(15, 4)]
    scheduler = Scheduler(EngineConfig(max_num_batched_tokens=48, max_num_seqs=8), managers)
    system = [rng.randrange(50) for _ in range(12)]
    live: list[Sequence] = []
    next_id = 0
    for _ in range(1000):
        if rng.random() < 0.4:
            prompt = (system if rng.random() < 0.7 else []) + [
                rng.randrange(50) for _ in range(rng.randint(1, 9))
            ]
            seq = Sequence(next_id, prompt, SamplingParams(max_tokens=6))
            next_id += 1
            scheduler.add(seq)
            live.append(seq)
        seqs, batch = scheduler.schedule()
        for seq, chunk in zip(seqs, batch.chunks, strict=True):
            seq.num_computed_tokens += chunk.num_new_tokens
            for manager in managers:
                manager.commit(seq.seq_id, seq.prompt_token_ids, seq.num_computed_tokens)
            if seq.num_pending_tokens == 0:
                seq.output_token_ids.append(rng.randrange(50))
        for seq in list(live):
            if seq.num_tokens - len(seq.prompt_token_ids) >= 12 or rng.random() < 0.03:  # finish / cancel
                scheduler.remove(seq)
                live.remove(seq)
        for manager in managers:
            held = sum(len(manager.block_table(s)) for s in manager.seq_ids())
            assert manager.num_used_blocks <= held  # shared blocks count once
    for seq in live:
        scheduler.remove(seq)
    assert scheduler.num_preempted > 0
    for manager in managers:
        assert manager.num_free_blocks == manager.num_blocks
        assert all(manager.ref_count(b) == 0 for b in range(manager.num_blocks))
        assert manager.hit_tokens > 0
