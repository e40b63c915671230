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
