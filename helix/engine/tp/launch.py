"""Starting a tensor-parallel stage from its rank-0 process: spawn ranks 1..g-1, rendezvous, build.

`start_tp_runner(spec, devices)` is called by the process that will be rank 0 (a worker, a benchmark,
`helix profile`). It starts a `TCPStore`, spawns one `python -m helix.engine.tp.rank` process per
other rank (`devices[r]` pins rank r: ``cuda:<i>`` becomes ``CUDA_VISIBLE_DEVICES=<physical id>``
and ``cuda:0`` inside the child), waits for every rank's control address while watching the children
(a child that dies during start-up fails the start with its error), joins the process group, builds
its own shard, and waits until every rank has built its shard. Any failure kills the spawned
processes by PID before the error is raised.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import zmq

from helix.engine.tp.group import destroy_group, init_group
from helix.engine.tp.runner import RankProcess, TPRunner
from helix.engine.tp.stage import TPStageSpec, build_rank_runner

START_TIMEOUT_S = 600.0
COLLECTIVE_TIMEOUT_S = 300.0
HOST = "127.0.0.1"


def ctrl_key(rank: int) -> str:
    return f"helix/ctrl/{rank}"


def ready_key(rank: int) -> str:
    return f"helix/ready/{rank}"


def error_key(rank: int) -> str:
    return f"helix/error/{rank}"


@dataclass(frozen=True, slots=True)
class RankLaunch:
    """What a rank process reads from its stdin (a pipe to the child this process spawned, never a socket)."""

    spec: TPStageSpec
    rank: int
    world: int
    store_port: int
    parent_pid: int
    device: str
    collective_timeout_s: float


def child_environment(device: str, threads: int) -> dict[str, str]:
    """The environment of a rank process pinned to `device` (in this process's device numbering)."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",")] if visible else None
        if ids is not None and index >= len(ids):
            raise RuntimeError(f"{device} is not among this process's GPUs (CUDA_VISIBLE_DEVICES={visible})")
        env["CUDA_VISIBLE_DEVICES"] = ids[index] if ids is not None else str(index)
    return env


def start_tp_runner(
    spec: TPStageSpec,
    devices: list[str],
    *,
    start_timeout_s: float = START_TIMEOUT_S,
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
) -> TPRunner:
    """Rank 0 of `spec` over len(devices) ranks (see the module docstring)."""
    world = len(devices)
    device0 = torch.device(devices[0])
    store = dist.TCPStore(HOST, 0, world, True, timeout=_td(start_timeout_s), wait_for_workers=False)
    ranks: list[RankProcess] = []
    context = zmq.Context.instance()
    sockets: list[zmq.Socket] = []
    deadline = time.monotonic() + start_timeout_s

    def describe_exit(rank: RankProcess) -> str:
        text = _read_error(store, rank.rank)
        code = rank.proc.returncode
        return f"exited with code {code}" + (f": {text}" if text else "")

    try:
        for rank in range(1, world):
            launch = RankLaunch(
                spec, rank, world, store.port, os.getpid(), _child_device(devices[rank]), collective_timeout_s
            )
            proc = subprocess.Popen(
                [sys.executable, "-m", "helix.engine.tp.rank"],
                stdin=subprocess.PIPE,
                env=child_environment(devices[rank], spec.threads),
            )
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(launch))
            proc.stdin.close()
            ranks.append(RankProcess(rank, proc))
        for r in ranks:
            _wait_key(store, ctrl_key(r.rank), ranks, deadline, describe_exit)
            sock = context.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(store.get(ctrl_key(r.rank)).decode())
            sockets.append(sock)
        group = init_group(store, 0, world, device0, collective_timeout_s)
        local = build_rank_runner(spec, group)
        for r in ranks:
            _wait_key(store, ready_key(r.rank), ranks, deadline, describe_exit)
    except BaseException:
        for r in ranks:
            if r.proc.poll() is None:
                r.proc.kill()
            r.proc.wait(timeout=10)
        for sock in sockets:
            sock.close(0)
        destroy_group()
        raise
    return TPRunner(local, group, ranks, sockets, store=store, describe_exit=describe_exit)


def _child_device(device: str) -> str:
    return "cuda:0" if device.startswith("cuda") else device


def _td(seconds: float):
    import datetime

    return datetime.timedelta(seconds=seconds)


def _read_error(store, rank: int) -> str:
    try:
        if store.check([error_key(rank)]):
            return store.get(error_key(rank)).decode(errors="replace").strip().splitlines()[-1][:300]
    except Exception:  # the store itself is broken: no detail
        pass
    return ""


def _wait_key(store, key: str, ranks: list[RankProcess], deadline: float, describe_exit) -> None:
    """Wait for `key` in the store while every rank process is alive."""
    while not store.check([key]):
        for r in ranks:
            if r.proc.poll() is not None:
                raise RuntimeError(f"tensor-parallel rank {r.rank} failed to start: {describe_exit(r)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"tensor-parallel ranks did not start in time (waiting for {key})")
        time.sleep(0.02)
