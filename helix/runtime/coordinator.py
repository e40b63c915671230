"""The coordinator: admits requests, gives each its pipeline, starts every iteration, streams tokens.

One thread owns the coordinator's sockets and state. Each loop iteration it

1. runs commands from other threads (submit, cancel, a worker reported gone);
2. reads `ResultBatch`es from the last stages: appends each token, emits it, and either finishes the
   request (stop token, max_tokens, context full, cancelled) — freeing its KV on every worker of its
   pipeline and its expected KV in the scheduler — or starts its next decode iteration on the same
   pipeline;
3. retries admission of waiting requests (the scheduler's `AdmissionQueue`: FIFO, KV expectation);
4. sends one `HopBatch` per first-hop worker with all iterations started in this loop iteration.

Every iteration returns through the coordinator, so a cancelled request is freed when its in-flight
iteration comes back: nothing of it is left in flight, and its KV is freed on every worker exactly once.
A request in flight for longer than `stall_timeout_s` without progress fails instead of hanging.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from helix.engine.sampling_params import SamplingParams
from helix.errors import HelixInputError
from helix.runtime.messages import Control, HopBatch, ResultBatch, StageItem, TokenResult
from helix.runtime.requests import ErrorEvent, EventSink, FinishEvent, RequestState, TokenEvent
from helix.runtime.transport import Inbox, Outbox
from helix.scheduling import AdmissionQueue, Scheduler

POLL_S = 0.002


class QueueFullError(RuntimeError):
    """More requests wait for admission than the queue bound: the caller should retry later."""

    def __init__(self, waiting: int, retry_after_s: float) -> None:
        self.waiting = waiting
        self.retry_after_s = retry_after_s
        super().__init__(f"{waiting} requests are already waiting for capacity; retry later")


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Limits of the coordinator. `max_waiting`: admission-queue bound before 429s."""

    max_model_len: int
    eos_token_ids: tuple[int, ...] = ()
    max_waiting: int = 64
    stall_timeout_s: float = 120.0
    retry_after_s: float = 1.0


class Coordinator:
    """See the module docstring. Thread-safe API: `submit`, `cancel`, `worker_gone`, `snapshot`."""

    def __init__(
        self,
        scheduler: Scheduler,
        worker_addresses: dict[str, str],
        config: CoordinatorConfig,
        host: str = "127.0.0.1",
    ) -> None:
        self.scheduler = scheduler
        self.config = config
        self._admission = AdmissionQueue(scheduler)
        self._addresses = dict(worker_addresses)
        self._context = zmq.Context.instance()
        self.inbox = Inbox(self._context, host, "127.0.0.1" if host == "127.0.0.1" else "0.0.0.0")
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._requests: dict[int, RequestState] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._num_waiting = 0
        self._num_running = 0
        self.dead_workers: dict[str, str] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helix-coordinator", daemon=True)
        self._outgoing: dict[str, list[StageItem]] = defaultdict(list)
        self._frees: dict[str, list[int]] = defaultdict(list)
        self._last_progress: dict[int, float] = {}
        self.counters = {"admitted": 0, "finished": 0, "failed": 0, "cancelled": 0, "rejected": 0}

    @property
    def address(self) -> str:
        return self.inbox.address

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    # ---- thread-safe API ----
    def submit(self, prompt_ids: list[int], params: SamplingParams, emit: EventSink) -> int:
        """Queue a request; returns its id. Raises `HelixInputError` (too long) or `QueueFullError`."""
        total = len(prompt_ids) + params.max_tokens
        if not prompt_ids:
            raise HelixInputError("the prompt is empty", field="prompt", fix="send at least one token")
        if total > self.config.max_model_len:
            raise HelixInputError(
                f"this model's context window is {self.config.max_model_len} tokens; the prompt has "
                f"{len(prompt_ids)} tokens and max_tokens is {params.max_tokens} ({total} in total)",
                field="max_tokens",
                fix="shorten the prompt or lower max_tokens",
            )
        with self._lock:
            if self._num_waiting >= self.config.max_waiting:
                self.counters["rejected"] += 1
                raise QueueFullError(self._num_waiting, self.config.retry_after_s)
            self._num_waiting += 1
        seq_id = next(self._ids)
        state = RequestState(seq_id, list(prompt_ids), params, emit)
        self._commands.put(lambda: self._enqueue(state))
        return seq_id

    def cancel(self, seq_id: int) -> None:
        """Stop a request (client gone, stop string seen); its KV is freed on every worker."""
        self._commands.put(lambda: self._cancel(seq_id))

    def worker_gone(self, name: str, reason: str) -> None:
        """Called by the health monitor: fail every request whose pipeline uses `name`."""
        self._commands.put(lambda: self._fail_worker(name, reason))

    def snapshot(self) -> dict[str, object]:
        """Queue length, running requests, expected KV use per node, dead workers (for /metrics)."""
        with self._lock:
            waiting, running = self._num_waiting, self._num_running
        kv = {node: self.scheduler.kv.usage(node) for node in self.scheduler.topology.ranges}
        return {
            "waiting": waiting,
            "running": running,
            "expected_kv_usage": kv,
            "dead_workers": dict(self.dead_workers),
            "counters": dict(self.counters),
        }

    # ---- the loop (coordinator thread only) ----
    def _run(self) -> None:
        outbox = Outbox(self._context)
        last_watchdog = time.monotonic()
        try:
            while not self._stopped.is_set():
                messages = self.inbox.recv(POLL_S)
                while not self._commands.empty():
                    self._commands.get()()
                for message in messages:
                    if isinstance(message, ResultBatch):
                        for result in message.results:
                            self._on_result(result)
                self._admit_waiting()
                self._flush(outbox)
                if time.monotonic() - last_watchdog > 1.0:
                    self._watchdog()
                    last_watchdog = time.monotonic()
        finally:
            outbox.close()
            self.inbox.close()

    def _enqueue(self, state: RequestState) -> None:
        self._requests[state.seq_id] = state
        pipeline = self._admission.submit(
            state.seq_id, len(state.prompt_ids), state.params.max_tokens, time.time()
        )
        if pipeline is not None:
            self._start(state, pipeline)

    def _admit_waiting(self) -> None:
        if not len(self._admission):
            return
        admitted, unservable = self._admission.retry(time.time())
        for waiting, pipeline in admitted:
            self._start(self._requests[waiting.request_id], pipeline)
        for waiting in unservable:
            state = self._requests.pop(waiting.request_id)
            self._set_counts(waiting=-1)
            self._emit(
                state,
                ErrorEvent(
                    f"no pipeline can hold this request's KV cache ({len(state.prompt_ids)} prompt tokens + "
                    f"{state.params.max_tokens} max_tokens)",
                    400,
                    "invalid_request_error",
                ),
            )

    def _start(self, state: RequestState, pipeline) -> None:
        self._set_counts(waiting=-1, running=+1)
        self.counters["admitted"] += 1
        state.pipeline = pipeline
        dead = [n for n in pipeline.nodes if n in self.dead_workers]
        if dead:
            self._finish(
                state,
                None,
                ErrorEvent(
                    f"worker {dead[0]} is gone: {self.dead_workers[dead[0]]}", 503, "service_unavailable"
                ),
            )
            return
        prompt = tuple(state.prompt_ids)
        penalty_ids = prompt if state.params.repetition_penalty != 1.0 else None
        starts = tuple(hop.start for hop in pipeline.hops)
        item = StageItem(
            state.seq_id, 0, len(prompt), prompt, state.route, state.params, (), penalty_ids, starts
        )
        self._send(state, item)

    def _send(self, state: RequestState, item: StageItem) -> None:
        state.in_flight = True
        self._last_progress[state.seq_id] = time.monotonic()
        self._outgoing[state.route[0]].append(item)

    def _on_result(self, result: TokenResult) -> None:
        state = self._requests.get(result.seq_id)
        if state is None or not state.in_flight:
            return
        state.in_flight = False
        if result.error is not None:
            self._finish(state, None, ErrorEvent(result.error, 500, "server_error"))
            return
        if result.stage_done_s and self.scheduler.wants_stage_events:
            for index, done_s in enumerate(result.stage_done_s):
                self.scheduler.on_stage_done(state.seq_id, index, done_s)
        if state.cancelled:
            self._finish(state, "cancelled")
            return
        state.output_ids.append(result.token_id)
        if state.first_token_s is None:
            state.first_token_s = time.time()
        self._emit(state, TokenEvent(result.token_id, result.logprob, result.top_logprobs))
        reason = self._stop_reason(state, result.token_id)
        if reason is not None:
            self._finish(state, reason)
            return
        self.scheduler.on_tokens(state.seq_id, 1, time.time())
        self._send(state, StageItem(state.seq_id, state.num_tokens - 1, 1, (result.token_id,)))

    def _stop_reason(self, state: RequestState, token_id: int) -> str | None:
        params = state.params
        if token_id in params.stop_token_ids or (
            not params.ignore_eos and token_id in self.config.eos_token_ids
        ):
            return "stop"
        if len(state.output_ids) >= params.max_tokens or state.num_tokens >= self.config.max_model_len:
            return "length"
        return None

    def _cancel(self, seq_id: int) -> None:
        state = self._requests.get(seq_id)
        if state is None:
            return
        if state.pipeline is None:  # still waiting for admission
            self._admission.waiting = type(self._admission.waiting)(
                w for w in self._admission.waiting if w.request_id != seq_id
            )
            self._requests.pop(seq_id)
            self._set_counts(waiting=-1)
            self.counters["cancelled"] += 1
            return
        if state.in_flight:
            state.cancelled = True  # freed when the in-flight iteration returns
        else:
            self._finish(state, "cancelled")

    def _finish(self, state: RequestState, reason: str | None, error: ErrorEvent | None = None) -> None:
        self._requests.pop(state.seq_id, None)
        self._last_progress.pop(state.seq_id, None)
        for node in state.route:
            if node not in self.dead_workers:
                self._frees[node].append(state.seq_id)
        self.scheduler.release(state.seq_id, time.time())
        self._set_counts(running=-1)
        if error is not None:
            self.counters["failed"] += 1
            self._emit(state, error)
            return
        self.counters["cancelled" if reason == "cancelled" else "finished"] += 1
        self._emit(state, FinishEvent(reason or "stop", len(state.prompt_ids), len(state.output_ids)))

    def _fail_worker(self, name: str, reason: str) -> None:
        self.dead_workers[name] = reason
        for state in [s for s in self._requests.values() if s.pipeline is not None and name in s.route]:
            self._finish(
                state, None, ErrorEvent(f"worker {name} is gone: {reason}", 503, "service_unavailable")
            )

    def _watchdog(self) -> None:
        now = time.monotonic()
        for seq_id, since in list(self._last_progress.items()):
            state = self._requests.get(seq_id)
            if state is not None and state.in_flight and now - since > self.config.stall_timeout_s:
                self._finish(
                    state,
                    None,
                    ErrorEvent(
                        f"no progress for {self.config.stall_timeout_s:.0f} s "
                        f"on pipeline {list(state.route)}",
                        504,
                        "timeout",
                    ),
                )

    def _flush(self, outbox: Outbox) -> None:
        now = time.time()
        for node, items in self._outgoing.items():
            if items and node not in self.dead_workers:
                outbox.send(self._addresses[node], HopBatch(items, None, now))
        self._outgoing.clear()
        for node, seq_ids in self._frees.items():
            outbox.send(self._addresses[node], Control("free", seq_ids))
        self._frees.clear()

    def _set_counts(self, waiting: int = 0, running: int = 0) -> None:
        with self._lock:
            self._num_waiting += waiting
            self._num_running += running

    @staticmethod
    def _emit(state: RequestState, event) -> None:
        try:
            state.emit(event)
        except Exception:  # a consumer that went away must not stop the coordinator
            pass
