"""A rank process of a tensor-parallel stage (`python -m helix.engine.tp.rank`, started by rank 0).

Reads its `RankLaunch` from stdin, publishes a ZeroMQ control address in rank 0's store, joins the
process group, builds its shard, reports ready, then replays rank 0's `StepOp`s until a `StopOp`.
It exits by itself when rank 0's process is gone (checked every `PARENT_CHECK_S`, also while blocked
in a collective); any error is written to the store under its rank before it exits.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import traceback

import torch
import torch.distributed as dist
import zmq

from helix.engine.tp.group import destroy_group, init_group
from helix.engine.tp.launch import HOST, RankLaunch, _td, ctrl_key, error_key, ready_key
from helix.engine.tp.runner import CONTROL_CODEC, StepOp, StopOp
from helix.engine.tp.stage import build_rank_runner

PARENT_CHECK_S = 0.5


def _watch_parent(parent_pid: int) -> None:
    while True:
        threading.Event().wait(PARENT_CHECK_S)
        if os.getppid() != parent_pid:
            os._exit(3)


def serve(launch: RankLaunch, store: dist.Store) -> None:
    torch.set_num_threads(max(1, launch.spec.threads))
    context = zmq.Context.instance()
    inbox = context.socket(zmq.PULL)
    inbox.setsockopt(zmq.LINGER, 0)
    port = inbox.bind_to_random_port(f"tcp://{HOST}")
    store.set(ctrl_key(launch.rank), f"tcp://{HOST}:{port}")
    group = init_group(
        store, launch.rank, launch.world, torch.device(launch.device), launch.collective_timeout_s
    )
    runner = build_rank_runner(launch.spec, group)
    store.set(ready_key(launch.rank), str(runner.block_manager.num_blocks))
    while True:
        op = CONTROL_CODEC.decode(inbox.recv_multipart())  # a bad frame raises: the stage fails
        if isinstance(op, StopOp):
            break
        assert isinstance(op, StepOp)
        for call in op.calls:
            call.apply(runner)
        inputs = torch.empty(op.shape, dtype=op.torch_dtype, device=runner.device)
        group.broadcast(inputs)
        runner.execute(op.batch, inputs, op.skip_layers)
    inbox.close(0)
    destroy_group()


def main() -> None:
    launch: RankLaunch = pickle.loads(sys.stdin.buffer.read())
    threading.Thread(target=_watch_parent, args=(launch.parent_pid,), daemon=True).start()
    store = dist.TCPStore(HOST, launch.store_port, launch.world, False, timeout=_td(60))
    try:
        serve(launch, store)
    except BaseException:
        text = traceback.format_exc()
        sys.stderr.write(f"tensor-parallel rank {launch.rank}: {text}")
        try:
            store.set(error_key(launch.rank), text)
        finally:
            os._exit(1)


if __name__ == "__main__":
    main()
