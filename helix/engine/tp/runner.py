"""Rank 0's view of a tensor-parallel stage: a `ModelRunner` look-alike that keeps every rank in step.

Every rank owns a full `ModelRunner` of its shard (its own KV cache and block manager). The ranks'
block managers are replicas: rank 0 records every call that changes its block state — `reserve`,
`free`, and direct `block_manager.allocate / append / free` (the single-process engine's scheduler
and the profiler make those) — and ships the record with the next `execute`, so all ranks apply the
same calls in the same order and hold the same block tables. `execute` sends one `StepOp` (the
record, the `StepBatch`, the inputs' shape) to each rank over ZeroMQ, broadcasts the inputs through
the process group, then all ranks run the step together (their collectives meet inside the layers);
rank 0's output is the stage's output. The control messages travel as `helix.engine.wire` frames (no
pickle); a rank applies only the calls in `REPLAYED_CALLS`.

A rank process that exits, or a failure after a step was sent, marks the runner failed (`failure`),
kills the other ranks by PID and makes every later call raise: the node is down as one node.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import zmq

from helix.engine.batch import StepBatch, decode_chunks
from helix.engine.block_manager import BlockManager
from helix.engine.model_runner import ModelRunner
from helix.engine.tp.group import TPGroup, destroy_group
from helix.engine.wire import TENSOR_DTYPES, Codec, WireError

WATCH_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 10.0
RANK_EXIT_WAIT_S = 2.0  # after a failed collective: how long to wait for a peer's exit to show


@dataclass(frozen=True, slots=True)
class StateCall:
    """One recorded call that changed rank 0's block state, for the other ranks to replay: `target`
    ``runner`` (`reserve(batch)`, `free(seq_id)`) or ``blocks`` (`allocate(seq_id, num_tokens, token_ids,
    num_cached_blocks)`, `append(seq_id, num_tokens)`, `free(seq_id)`)."""

    target: str
    method: str
    seq_id: int = -1
    batch: StepBatch | None = None
    num_tokens: int = 0
    token_ids: tuple[int, ...] | None = None
    num_cached_blocks: int = 0

    def apply(self, runner: ModelRunner) -> None:
        """Replay this call on a rank's own runner; raises `WireError` for a call no rank makes."""
        if (self.target, self.method) not in REPLAYED_CALLS:
            raise WireError(f"tensor-parallel rank cannot replay {self.target}.{self.method}")
        if self.target == "runner":
            if self.method == "reserve":
                if self.batch is None:
                    raise WireError("runner.reserve without a batch")
                runner.reserve(self.batch)
            else:
                runner.free(self.seq_id)
            return
        blocks = runner.block_manager
        if self.method == "allocate":
            ids = list(self.token_ids) if self.token_ids is not None else None
            blocks.allocate(self.seq_id, self.num_tokens, ids, self.num_cached_blocks)
        elif self.method == "append":
            blocks.append(self.seq_id, self.num_tokens)
        else:
            blocks.free(self.seq_id)


REPLAYED_CALLS = frozenset(
    {
        ("runner", "reserve"),
        ("runner", "free"),
        ("blocks", "allocate"),
        ("blocks", "append"),
        ("blocks", "free"),
    }
)


@dataclass(frozen=True, slots=True)
class StepOp:
    """One step for ranks >= 1: replay `calls`, then receive inputs of `shape` / `dtype` (a
    `helix.engine.wire.TENSOR_DTYPES` name) by broadcast and execute `batch`."""

    calls: tuple[StateCall, ...]
    batch: StepBatch
    shape: tuple[int, ...]
    dtype: str
    skip_layers: int = 0  # leading layers of the range the batch skips (partial overlap)

    @property
    def torch_dtype(self) -> torch.dtype:
        return TENSOR_DTYPES[self.dtype][0]


@dataclass(frozen=True, slots=True)
class StopOp:
    """Leave the rank loop and the process group."""


CONTROL_CODEC = Codec((StepOp, StopOp))
_DTYPE_NAMES = {torch_dtype: name for name, (torch_dtype, _) in TENSOR_DTYPES.items()}


def _block_call(method: str, args: tuple) -> StateCall:
    seq_id = int(args[0])
    if method == "allocate":
        token_ids = args[2] if len(args) > 2 else None
        return StateCall(
            "blocks",
            "allocate",
            seq_id,
            num_tokens=int(args[1]),
            token_ids=tuple(int(t) for t in token_ids) if token_ids is not None else None,
            num_cached_blocks=int(args[3]) if len(args) > 3 else 0,
        )
    if method == "append":
        return StateCall("blocks", "append", seq_id, num_tokens=int(args[1]) if len(args) > 1 else 1)
    return StateCall("blocks", "free", seq_id)


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

    def __init__(self, local: BlockManager, record: list[StateCall]) -> None:
        self._local, self._record = local, record

    def grow_to(self, seq_id: int, num_tokens: int) -> bool:
        """`BlockManager.grow_to`, recorded as the `append` it amounts to."""
        local = self._local
        held = local.num_tokens(seq_id) if local.has(seq_id) else None
        grown = local.grow_to(seq_id, num_tokens)
        if grown and held is not None and num_tokens > held:
            self._record.append(_block_call("append", (seq_id, num_tokens - held)))
        return grown

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._local, name)
        if name not in self._MUTATORS:
            return attr

        def mirrored(*args):
            out = attr(*args)
            self._record.append(_block_call(name, args))
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
        self._record: list[StateCall] = []
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
        self._record.append(StateCall("runner", "reserve", batch=batch))

    def free(self, seq_id: int) -> None:
        self.local.free(seq_id)
        self._record.append(StateCall("runner", "free", seq_id))

    def execute(self, batch: StepBatch, inputs: torch.Tensor, skip_layers: int = 0) -> torch.Tensor:
        """Run one step on all ranks; rank 0's output (hidden states or full logits); `skip_layers` as in
        `ModelRunner.execute`."""
        self._check()
        self.local.reserve(batch)  # a batch that cannot run fails here, before any rank hears of it
        inputs = inputs.to(self.device).contiguous()
        op = StepOp(tuple(self._record), batch, tuple(inputs.shape), _DTYPE_NAMES[inputs.dtype], skip_layers)
        self._record.clear()
        try:
            frames = CONTROL_CODEC.encode(op)
            for sock in self._sockets:
                sock.send_multipart(frames, copy=False)
            self.group.broadcast(inputs)
            return self.local.execute(batch, inputs, skip_layers)
        except BaseException as exc:  # the ranks are now out of step: the node is down
            dead = self._dead_rank(wait_s=RANK_EXIT_WAIT_S)  # a collective fails when a peer dies
            if dead is not None:
                self._fail(self._death_reason(dead))
            else:
                self._fail(f"tensor-parallel step failed on rank 0: {type(exc).__name__}: {exc}")
            raise RuntimeError(self.failure) from exc

    def execute_decode(self, seq_ids: list[int], context: list[int], inputs: torch.Tensor) -> torch.Tensor:
        """`ModelRunner.execute_decode` on all ranks (as one `execute` of the decode chunks)."""
        return self.execute(StepBatch(decode_chunks(seq_ids, context)), inputs)

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
            frames = CONTROL_CODEC.encode(StopOp())
            for sock in self._sockets:
                try:
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
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
