"""The tensor-parallel control channel: typed frames (no pickle) that round-trip, and a rank that replays
only the block-state calls rank 0 makes."""

from __future__ import annotations

import pickle

import pytest

from helix.engine.batch import SeqChunk, StepBatch
from helix.engine.block_manager import BlockManager
from helix.engine.tp.runner import (
    CONTROL_CODEC,
    REPLAYED_CALLS,
    MirroredBlockManager,
    StateCall,
    StepOp,
    StopOp,
)
from helix.engine.wire import WireError

BATCH = StepBatch((SeqChunk(7, 0, 5), SeqChunk(3, 9, 1)))


def test_step_op_round_trips_with_every_recorded_call() -> None:
    calls = (
        StateCall("runner", "reserve", batch=BATCH),
        StateCall("runner", "free", 4),
        StateCall("blocks", "allocate", 7, num_tokens=5, token_ids=(1, 2, 3, 4, 5), num_cached_blocks=0),
        StateCall("blocks", "append", 3, num_tokens=1),
        StateCall("blocks", "free", 2),
    )
    op = StepOp(calls, BATCH, (6, 64), "bfloat16", skip_layers=2)
    back = CONTROL_CODEC.decode(CONTROL_CODEC.encode(op))
    assert back == op
    assert {(c.target, c.method) for c in back.calls} == REPLAYED_CALLS
    assert isinstance(CONTROL_CODEC.decode(CONTROL_CODEC.encode(StopOp())), StopOp)


def test_a_pickle_payload_is_not_a_control_frame(tmp_path) -> None:
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with pytest.raises(WireError):
        CONTROL_CODEC.decode([pickle.dumps(Boom())])
    assert not (tmp_path / "pwned").exists()


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.block_manager = self

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


def test_a_rank_replays_only_block_state_calls() -> None:
    runner = _Recorder()
    StateCall("blocks", "allocate", 7, num_tokens=5, token_ids=(1, 2), num_cached_blocks=1).apply(runner)
    StateCall("runner", "reserve", batch=BATCH).apply(runner)
    assert runner.calls == [("allocate", (7, 5, [1, 2], 1)), ("reserve", (BATCH,))]
    for target, method in [("runner", "execute"), ("blocks", "__init__"), ("runner", "close")]:
        with pytest.raises(WireError, match=f"{target}.{method}"):
            StateCall(target, method, 1).apply(runner)
    assert len(runner.calls) == 2


def test_rank_zero_records_a_grow_as_the_append_a_rank_replays() -> None:
    """`grow_to` (a decode row's KV growth) reaches the other ranks as one `append` of what it added, so
    their block tables stay the same as rank 0's."""
    record: list[StateCall] = []
    mirrored = MirroredBlockManager(BlockManager(4, 4), record)
    mirrored.allocate(7, 3)
    assert mirrored.grow_to(7, 6) and mirrored.grow_to(7, 6)  # the second adds nothing
    assert not mirrored.grow_to(7, 20)  # too few blocks: nothing changes, nothing recorded
    replica = BlockManager(4, 4)
    for call in record:
        StateCall.apply(call, _Replica(replica))
    assert [(c.method, c.num_tokens) for c in record] == [("allocate", 3), ("append", 3)]
    assert replica.block_table(7) == mirrored.block_table(7) and replica.num_tokens(7) == 6


class _Replica:
    def __init__(self, blocks: BlockManager) -> None:
        self.block_manager = blocks
