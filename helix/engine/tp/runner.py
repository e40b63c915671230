"""Rank 0's view of a tensor-parallel stage: a `ModelRunner` look-alike that keeps every rank in step.

Every rank owns a full `ModelRunner` of its shard (its own KV cache and block manager). The ranks'
block managers are replicas: rank 0 records every call that changes its block state — `reserve`,
`free`, and direct `block_manager.allocate / append / free` (the single-process engine's scheduler
and the profiler make those) — and ships the record with the next `execute`, so all ranks apply the
same calls in the same order and hold the same block tables. `execute` sends one `StepOp` (the
record, the `StepBatch`, the inputs' shape) to each rank over ZeroMQ, broadcasts the inputs through
the process group, then all ranks run the step together (their collectives meet inside the layers);
rank 0's output is the stage's output.

A rank process that exits, or a failure after a step was sent, marks the runner failed (`failure`),
kills the other ranks by PID and makes every later call raise: the node is down as one node.
"""

from __future__ import annotations

import pickle
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import zmq

from helix.engine.batch import StepBatch
from helix.engine.block_manager import BlockManager
from helix.engine.model_runner import ModelRunner
from helix.engine.tp.group import TPGroup, destroy_group

WATCH_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 10.0
RANK_EXIT_WAIT_S = 2.0  # after a failed collective: how long to wait for a peer's exit to show


@dataclass(slots=True)
class StepOp:
    """One step for ranks >= 1: replay `calls` ((target, method, args), target `runner` or `blocks`),
    then receive inputs of `shape` / `dtype` by broadcast and execute `batch`."""

    calls: list[tuple[str, str, tuple]]
    batch: StepBatch
    shape: tuple[int, ...]
    dtype: torch.dtype
    skip_layers: int = 0  # leading layers of the range the batch skips (partial overlap)


@dataclass(slots=True)
class StopOp:
    """Leave the rank loop and the process group."""


@dataclass(slots=True)
class RankProcess:
    """A rank process started by rank 0."""

    rank: int
    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid


class MirroredBlockManager:
    """Rank 0's block manager; calls that change it are also recorded for the other ranks."""

    _MUTATORS = ("allocate", "append", "free")

    def __init__(self, local: BlockManager, record: list[tuple[str, str, tuple]]) -> None:
        self._local, self._record = local, record

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._local, name)
        if name not in self._MUTATORS:
            return attr

        def mirrored(*args):
            out = attr(*args)
            self._record.append(("blocks", name, args))
            return out

        return mirrored


class TPRunner:
    """Rank 0 of a stage split over `group.world` ranks (see the module docstring)."""

    def __init__(
        self,
        local: ModelRunner,
        group: TPGroup,
        ranks: list[RankProcess],
        sockets: list[zmq.Socket],
        *,
        store=None,
        describe_exit=None,
    ) -> None:
        self.local = local
        self.group = group
        self.ranks = ranks
        self._sockets = sockets
        self._store = store  # rank 0 hosts the group's TCPStore: it lives as long as the runner
        self._describe_exit = describe_exit or (lambda rank: f"exited with code {rank.proc.returncode}")
        self._record: list[tuple[str, str, tuple]] = []
        self._blocks = MirroredBlockManager(local.block_manager, self._record)
        self.failure: str | None = None
        self._closing = False
        self._lock = threading.Lock()
        self._watchdog = threading.Thread(target=self._watch, name="helix-tp-watchdog", daemon=True)
        self._watchdog.start()

    # ---- the ModelRunner surface ----
    @property
    def model(self):
        return self.local.model

    @property
    def block_manager(self) -> MirroredBlockManager:
        return self._blocks  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.local.device

    @property
    def dtype(self) -> torch.dtype:
        return self.local.dtype

    @property
    def engine_config(self):
        return self.local.engine_config

    @property
    def max_model_len(self) -> int:
        return self.local.max_model_len

    @property
    def block_size(self) -> int:
        return self.local.block_size

    @property
    def world(self) -> int:
        return self.group.world

    @property
    def rank_pids(self) -> list[int]:
        return [r.pid for r in self.ranks]

    def num_blocks_needed(self, batch: StepBatch) -> int:
        return self.local.num_blocks_needed(batch)

    def can_reserve(self, batch: StepBatch) -> bool:
        return self.local.can_reserve(batch)

    def reserve(self, batch: StepBatch) -> None:
        self._check()
        self.local.reserve(batch)  # raises before any change (all or none)
        self._record.append(("runner", "reserve", (batch,)))

    def free(self, seq_id: int) -> None:
        self.local.free(seq_id)
        self._record.append(("runner", "free", (seq_id,)))

    def execute(self, batch: StepBatch, inputs: torch.Tensor, skip_layers: int = 0) -> torch.Tensor:
        """Run one step on all ranks; rank 0's output (hidden states or full logits); `skip_layers` as in
        `ModelRunner.execute`."""
        self._check()
        self.local.reserve(batch)  # a batch that cannot run fails here, before any rank hears of it
        inputs = inputs.to(self.device).contiguous()
        op = StepOp(list(self._record), batch, tuple(inputs.shape), inputs.dtype, skip_layers)
        self._record.clear()
        try:
            payload = pickle.dumps(op, protocol=5)
            for sock in self._sockets:
                sock.send(payload, copy=False)
            self.group.broadcast(inputs)
            return self.local.execute(batch, inputs, skip_layers)
        except BaseException as exc:  # the ranks are now out of step: the node is down
            dead = self._dead_rank(wait_s=RANK_EXIT_WAIT_S)  # a collective fails when a peer dies
            if dead is not None:
                self._fail(self._death_reason(dead))
            else:
                self._fail(f"tensor-parallel step failed on rank 0: {type(exc).__name__}: {exc}")
            raise RuntimeError(self.failure) from exc

    # ---- failure and shutdown ----
    def _check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(self.failure)
        if self._closing:
            raise RuntimeError("the tensor-parallel stage is shut down")

    def _dead_rank(self, wait_s: float = 0.0) -> RankProcess | None:
        deadline = time.monotonic() + wait_s
        while True:
            for rank in self.ranks:
                if rank.proc.poll() is not None:
                    return rank
            if time.monotonic() >= deadline:
                return None
            time.sleep(WATCH_INTERVAL_S / 2)

    def _death_reason(self, rank: RankProcess) -> str:
        return f"tensor-parallel rank {rank.rank} (pid {rank.pid}) {self._describe_exit(rank)}"

    def _watch(self) -> None:
        while not self._closing and self.failure is None:
            dead = self._dead_rank()
            if dead is not None and not self._closing:
                self._fail(self._death_reason(dead))
                return
            threading.Event().wait(WATCH_INTERVAL_S)

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = reason
        self._kill_ranks()

    def _kill_ranks(self) -> None:
        for rank in self.ranks:
            if rank.proc.poll() is None:
                rank.proc.kill()
        for rank in self.ranks:
            try:
                rank.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass

    def close(self) -> None:
        """Stop every rank (by message, then by PID), leave the process group. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if self.failure is None:
            payload = pickle.dumps(StopOp())
            for sock in self._sockets:
                try:
                    sock.send(payload, flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            for rank in self.ranks:
                try:
                    rank.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass
        self._kill_ranks()
        for sock in self._sockets:
            sock.close(0)
        self._watchdog.join(timeout=2)
        if self.failure is None or self.device.type != "cuda":  # a broken NCCL group may hang here
            destroy_group()
