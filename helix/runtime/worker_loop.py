"""The loop that drives a `Worker` from its ZeroMQ inbox (one thread per worker process).

Every iteration drains the inbox, applies `free`/`stop` controls, runs one step over all batches that
arrived (up to `max_step_tokens` new tokens; the rest wait for the next step), and sends one `HopBatch`
per next hop plus one `ResultBatch` of sampled tokens (and preemptions) to the coordinator; the next
iterations of a self-decoding one-worker route go straight back into its own queue. With
`overlap_steps` (CUDA stages, `Worker.overlaps_steps`) step t + 1 is admitted and launched before step
t's outputs are read back and sent, so the host's admission, staging and launches run while the GPU
computes; it is off by default: with decode iterations that wait for step t's tokens it splits the
requests into two half-size groups (and, with the coordinator in the loop, delays every result by a
launch), which measured slower on an H200.

Waves. On the first stage of routes of several workers that decode on their own, a step waits until
the requests it sent down the route came back (`Worker.awaiting`, up to `WAVE_HOLD_ROUNDS` × the time
they last took, at most `MAX_WAVE_HOLD_S`), so that what arrives meanwhile — a new prompt, the rows of a
request that started later — joins them: the route steps all its requests in one wave, as one worker
does, instead of one wave per arrival, each paying for its own reading of the weights. A wave that does
not come back in time (a request finished or was preempted downstream) is stepped without. An exception
inside a step fails only the requests of that step: each gets an error result, and the loop goes on.
``fence`` controls name dead workers whose late batches the worker drops. `last_step_s` and
`num_pending` feed the health monitor's step-progress liveness check.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
import traceback

import torch

from helix.runtime.keys import WireKeys
from helix.runtime.messages import COORDINATOR_HOP, Control, HopBatch, ResultBatch, TokenResult
from helix.runtime.transport import Outbox, Wire, is_loopback
from helix.runtime.worker import LaunchedStep, Worker
from helix.scheduling import Topology
from helix.scheduling.topology import DECODE_CONTEXT_PER_SEQ

IDLE_POLL_S = 0.05
# the longest a first stage keeps new work waiting for its requests in flight (see `WorkerLoop`), and
# the hold as a multiple of how long they last took to come back
MAX_WAVE_HOLD_S = 0.05  # also the hold before any round was timed
WAVE_HOLD_ROUNDS = 1.5
MAX_STEP_TOKENS = 4096  # new tokens (prompt and decode) one step takes; the rest wait for the next
GC_YOUNG_THRESHOLD = 20_000  # allocations between collections of young objects (CPython's default: 700)


def settle_garbage_collector() -> None:
    """Call once a worker process has loaded its stage: what loading made moves to a generation the
    collector never scans again (`gc.freeze`), and young objects are collected every
    `GC_YOUNG_THRESHOLD` allocations instead of 700. A step makes and drops several objects per request
    (items, results, tensors' wrappers), so with CPython's defaults collections ran inside every step;
    on an H200, turning the collector off in two chained workers halved the 12-layer stage's host time
    per step at 192 requests/s (8.4 → 4.1 ms, `benchmarks/profile_runtime_hop.py`)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def with_step_limits(topology: Topology, max_step_tokens: int = MAX_STEP_TOKENS) -> Topology:
    """The topology with each node's batch limits set to what this loop really batches, for a simulation
    that reproduces a deployment (`helix.sim`): one step takes every prompt that fits in
    `max_step_tokens` new tokens (there is no per-step prompt count; a default topology carries
    Helix's two prompts per pass) and every decode that fits in the same budget; KV bounds the context."""
    limits = {
        name: dataclasses.replace(
            limit,
            max_prompt_requests=max_step_tokens,
            max_prompt_tokens=max_step_tokens,
            max_decode_seqs=max_step_tokens,
            max_decode_context_tokens=max_step_tokens * DECODE_CONTEXT_PER_SEQ,
        )
        for name, limit in topology.limits.items()
    }
    return dataclasses.replace(topology, limits=limits)


class WorkerLoop:
    """Owns a worker's sockets and runs its step loop in a daemon thread."""

    def __init__(
        self,
        worker: Worker,
        host: str = "127.0.0.1",
        *,
        max_step_tokens: int = MAX_STEP_TOKENS,
        bind_host: str | None = None,
        keys: WireKeys | None = None,
        overlap_steps: bool = False,
    ) -> None:
        """`host`: the address peers reach this worker at; `bind_host`: the address bound (default: `host`
        when it is loopback, else all interfaces). `keys`: the deployment's CURVE keys. `overlap_steps`:
        launch step t + 1 before reading back step t (CUDA stages; see the module docstring)."""
        self.worker = worker
        self.max_step_tokens = max_step_tokens
        self.wire = Wire(keys, f"worker {worker.name}")
        bind = bind_host or (host if is_loopback(host) else "0.0.0.0")
        # a CUDA stage receives hidden states into pinned memory: their copy to the GPU does not block
        self.inbox = self.wire.inbox(host, bind, pin_memory=worker.on_cuda and torch.cuda.is_available())
        self._peers: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.lock = threading.Lock()  # guards worker state read by stats()
        self.last_step_s = time.monotonic()  # when the last step ended, or work arrived at an idle loop
        self.num_pending = 0  # batches received and not yet stepped
        self._local: list[HopBatch] = []  # next iterations this worker sent itself (one-hop routes)
        self._hold_since: float | None = None  # when pending work started waiting for a wave
        self.overlap_steps = overlap_steps and worker.overlaps_steps

    @property
    def address(self) -> str:
        return self.inbox.address

    def start(self, peers: dict[str, str]) -> None:
        """Start stepping; `peers` maps worker names and ``coordinator`` to inbox addresses."""
        self._peers = dict(peers)
        self.last_step_s = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"helix-worker-{self.worker.name}", daemon=True
        )
        self._thread.start()

    def add_peers(self, peers: dict[str, str]) -> None:
        """More peers (from any thread): the step loop sees the new mapping at its next send."""
        self._peers = {**self._peers, **peers}

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._thread is None or not self._thread.is_alive():
            self.wire.close()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        outbox = self.wire.outbox()
        pending: list[HopBatch] = []
        inflight: tuple[list[HopBatch], LaunchedStep] | None = None
        overlap = self.overlap_steps
        try:
            while not self._stopped.is_set():
                if self._local:
                    pending.extend(self._local)
                    self._local.clear()
                hold_s = self._hold_s(pending) if inflight is None else 0.0
                timeout_s = hold_s if hold_s > 0 else 0.0 if pending or inflight else IDLE_POLL_S
                for message in self.inbox.recv(timeout_s):
                    if isinstance(message, Control):
                        if message.kind == "stop":
                            return
                        with self.lock:
                            if message.kind == "fence":
                                self.worker.fence(message.names)
                            else:
                                self.worker.free(message.seq_ids, message.admissions)
                    else:
                        if not pending and inflight is None:
                            self.last_step_s = time.monotonic()  # idle until now: progress is due from now
                        pending.append(message)
                        self.worker.arrived(message)
                self.num_pending = len(pending)
                if inflight is None and self._hold_s(pending) > 0:
                    continue  # the wave in flight comes back first
                self._hold_since = None
                launched = None
                if pending:
                    batch, pending = _take(pending, self.max_step_tokens)
                    launched = self._launch(batch, outbox)
                    self.num_pending = len(pending)
                if inflight is not None:  # read back the step before, while this one runs
                    self._finish(*inflight, outbox)
                inflight = launched
                if inflight is not None and not overlap:
                    self._finish(*inflight, outbox)
                    inflight = None
        finally:
            outbox.close()
            self.inbox.close()

    def _hold_s(self, pending: list[HopBatch]) -> float:
        """How much longer `pending` waits for the requests in flight (0: step now; see the module
        docstring)."""
        awaiting = self.worker.awaiting
        if not pending or not awaiting:
            return 0.0
        now = time.monotonic()
        if self._hold_since is None:
            self._hold_since = now
        round_s = self.worker.wave_round_s
        limit_s = MAX_WAVE_HOLD_S if round_s is None else min(MAX_WAVE_HOLD_S, WAVE_HOLD_ROUNDS * round_s)
        left_s = self._hold_since + limit_s - now
        if left_s <= 0:
            awaiting.clear()  # they are late: step without them
            return 0.0
        return left_s

    def _launch(self, batch: list[HopBatch], outbox: Outbox) -> tuple[list[HopBatch], LaunchedStep] | None:
        try:
            with self.lock:
                return batch, self.worker.launch(batch)
        except Exception as exc:  # a bug or device error fails this step's requests, not the worker
            self._fail(batch, exc, outbox)
            return None

    def _finish(self, batch: list[HopBatch], launched: LaunchedStep, outbox: Outbox) -> None:
        try:
            with self.lock:
                out = self.worker.finish(launched)
        except Exception as exc:
            self._fail(batch, exc, outbox)
            return
        finally:
            self.last_step_s = time.monotonic()
        for hop, forward in out.forward.items():
            if hop == self.worker.name:  # a self-decoding route that starts here: the next iteration
                self._local.append(forward)
            else:
                outbox.send(self._peers[hop], forward)
        if out.results or out.tokens is not None:
            outbox.send(self._peers[COORDINATOR_HOP], ResultBatch(self.worker.name, out.results, out.tokens))

    def _fail(self, batch: list[HopBatch], exc: Exception, outbox: Outbox) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        error = f"worker {self.worker.name}: {detail}"
        items = [i for b in batch for i in (*b.items, *(b.decodes.as_items() if b.decodes else ()))]
        failed = [TokenResult(i.seq_id, error=error, admission=i.admission) for i in items]
        with self.lock:
            self.worker.free([r.seq_id for r in failed])
        outbox.send(self._peers[COORDINATOR_HOP], ResultBatch(self.worker.name, failed))


def _take(pending: list[HopBatch], max_tokens: int) -> tuple[list[HopBatch], list[HopBatch]]:
    """Whole batches from the front while their new tokens fit `max_tokens` (at least one)."""
    taken, total = [], 0
    for index, batch in enumerate(pending):
        tokens = batch.num_new_tokens
        if taken and total + tokens > max_tokens:
            return taken, pending[index:]
        taken.append(batch)
        total += tokens
    return taken, []
