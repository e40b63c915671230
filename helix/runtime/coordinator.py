"""The coordinator: admits requests, gives each its pipeline, starts every iteration, streams tokens.

One thread owns the coordinator's sockets and state. Each loop iteration it

1. runs commands from other threads (submit, cancel, a worker reported gone);
2. reads `ResultBatch`es from the last stages: appends each token, emits it, and either finishes the
   request (stop token, max_tokens, context full, cancelled) — freeing its KV on every worker of its
   pipeline and its expected KV in the scheduler — or starts its next decode iteration on the same
   pipeline;
3. retries admission of waiting requests (the scheduler's `AdmissionQueue`: FIFO, KV expectation);
4. sends one `HopBatch` per first-hop worker with all iterations started in this loop iteration.

With `CoordinatorConfig.pipeline_decode` (the default, for routes of any length unless
`pipeline_decode_max_stages` says otherwise) the coordinator starts only the prompt iteration:
it gives the route a decode budget (`StageItem.decode_budget`: the tokens left to max_tokens or to the
context window) and the route's last stage feeds every sampled token straight back to its first stage,
so decode steps never wait for a round trip through the coordinator; the coordinator still gets, emits
and checks every token, and finishes the request (stop token, cancel) by freeing it on every worker —
iterations still in flight then meet a worker that no longer holds the request and end there. Without
it every iteration returns through the coordinator, which starts the next one.
A cancelled request is freed when its next result comes back, and its KV is freed on every worker.
An iteration in flight for longer than `stall_timeout_s` while iterations started after it on the same
route have come back (it was lost: a route is FIFO) is re-admitted (at most `MAX_STALLS` times, then it
fails with a 504 instead of hanging). One that nothing overtook is re-admitted after `STALL_CEILING` ×
that and never fails for it: a route that is merely slow — every step long on an overloaded host —
fails nothing, and nothing stays stuck.

No accepted request is lost to KV pressure or to a lost worker:

- **Preemption** (`helix.scheduling.preemption`): a worker short of KV blocks preempts and reports the
  victims' dropped iterations; the coordinator frees their KV on every worker of their pipeline, releases
  their expected KV and puts them back at the head of the admission queue; admissions wait until a running
  request finishes (`AdmissionHold`). A re-admitted request re-prefills prompt + generated tokens on the
  pipeline it gets and its stream goes on with the next token.
- **Failure** (`worker_gone`, from the health monitor: Ray actor death or liveness timeout): the worker is
  fenced (survivors drop its late batches, its results are ignored, it is told to stop), the scheduler is
  rebuilt on the survivors (`helix.scheduling.recovery.recover`: max flow and IWRR weights recomputed),
  and every request whose pipeline touched it is freed on the surviving workers and re-admitted first, to
  re-prefill on a surviving pipeline. Each admission has a number (`RequestState.admission`, carried by
  every iteration): results and worker state of an older admission are ignored, so no token is emitted
  twice or skipped.
- **Prefix caching** (`CoordinatorConfig.prefix_caching`): a prompt iteration carries its context
  (`StageItem.prefix_ids`); the route's first stage skips the leading KV blocks it holds, and a later
  stage that does not hold them reports a prefix miss: the request is re-admitted at once, without
  prefix matching.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from helix.engine.sampling_params import SamplingParams
from helix.errors import HelixInputError
from helix.runtime.keys import WireKeys
from helix.runtime.messages import (
    COORDINATOR_HOP,
    Control,
    DecodeRows,
    HopBatch,
    ResultBatch,
    StageItem,
    TokenResult,
)
from helix.runtime.requests import ErrorEvent, EventSink, FinishEvent, RequestState, TokenEvent
from helix.runtime.transport import Outbox, Wire, is_loopback
from helix.scheduling import AdmissionQueue, Scheduler
from helix.scheduling.admission import Waiting
from helix.scheduling.preemption import AdmissionHold, requeue_front
from helix.scheduling.recovery import TopologySource, has_pipeline, max_request_tokens, recover

POLL_S = 0.002
MAX_STALLS = 2  # re-admissions after a stall before a request fails with a timeout
STALL_CEILING = 2.0  # × stall_timeout_s: an iteration not overtaken on its route is re-admitted after it


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
    pipeline_decode: bool = True  # routes decode on their own (see the module docstring)
    # ... routes of at most this many workers (None: any): on one H200 two chained workers serve more
    # with their route decoding on its own than with the coordinator starting each token
    # (`benchmarks/results/runtime_1gpu.json`, two_workers against two_workers_coordinator_decode)
    pipeline_decode_max_stages: int | None = None
    prefix_caching: bool = True  # workers start prompts past the KV blocks they hold (`StageItem`)


class Coordinator:
    """See the module docstring. Thread-safe API: `submit`, `cancel`, `worker_gone`, `snapshot`."""

    def __init__(
        self,
        scheduler: Scheduler,
        worker_addresses: dict[str, str],
        config: CoordinatorConfig,
        host: str = "127.0.0.1",
        *,
        bind_host: str | None = None,
        keys: WireKeys | None = None,
        topology_source: TopologySource | None = None,
    ) -> None:
        """`host`: the address workers send results to (reachable from every worker's host);
        `bind_host`: the address bound (default: `host` when loopback, else all interfaces)."""
        self.scheduler = scheduler
        self.topology_source = topology_source
        self.config = config
        self._admission = AdmissionQueue(scheduler)
        self._addresses = dict(worker_addresses)
        self.wire = Wire(keys, "coordinator")
        self.inbox = self.wire.inbox(host, bind_host or (host if is_loopback(host) else "0.0.0.0"))
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._requests: dict[int, RequestState] = {}
        self._ids = itertools.count(1)
        self._admissions = itertools.count(1)
        self._hold = AdmissionHold()
        self.epoch = 0  # grows with every worker declared dead
        self.recoveries: list[dict[str, object]] = []  # per re-routed request: lost_at_s, resumed_at_s
        self._lock = threading.Lock()
        self._num_waiting = 0
        self._num_running = 0
        self.dead_workers: dict[str, str] = {}
        # true while a membership change's new plan is coming (`helix.runtime.elastic` sets it): waiting
        # requests then wait for it instead of failing for want of a pipeline (`AdmissionQueue.retry`)
        self.awaiting_replan: Callable[[], bool] = lambda: False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helix-coordinator", daemon=True)
        self._outgoing: dict[str, list[StageItem]] = defaultdict(list)
        # decode iterations per first hop: (seq_id, context, admission, input token)
        self._outgoing_rows: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
        self._frees: dict[str, list[tuple[int, int]]] = defaultdict(list)  # node → (seq_id, admission)
        self._controls: dict[str, list[Control]] = defaultdict(list)
        self._last_progress: dict[int, float] = {}
        self._sent = 0  # iterations sent so far (each request remembers its iteration's number)
        self._route_returned: dict[tuple[str, ...], int] = {}  # route → newest iteration number returned
        self.counters = {
            "admitted": 0,
            "finished": 0,
            "failed": 0,
            "cancelled": 0,
            "rejected": 0,
            "preempted": 0,
            "rerouted": 0,
            "fenced_frames": 0,
            "stall_requeued": 0,
        }

    @property
    def address(self) -> str:
        return self.inbox.address

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.wire.close()

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
        longest = max_request_tokens(self.scheduler.topology)
        if total > longest and has_pipeline(self.scheduler.topology):
            raise HelixInputError(
                f"no pipeline's KV cache holds {total} tokens (prompt {len(prompt_ids)} + max_tokens "
                f"{params.max_tokens}); the largest holds {longest}",
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
        """Called by the health monitor: fence `name` and re-route every request whose pipeline uses it."""
        self._commands.put(lambda: self._fail_worker(name, reason))

    def switch_plan(
        self, source: TopologySource, changed: set[str], addresses: dict[str, str], timeout_s: float = 30.0
    ) -> dict[str, int]:
        """Atomically serve a new plan (`helix.runtime.elastic`); blocks until the coordinator did it."""
        done, out = threading.Event(), {}

        def run() -> None:
            try:
                out.update(self._switch_plan(source, changed, addresses))
            finally:
                done.set()

        self._commands.put(run)
        if not done.wait(timeout_s):
            raise TimeoutError("the coordinator did not switch plans in time")
        return out

    def _switch_plan(self, source: TopologySource, changed: set[str], addresses: dict[str, str]) -> dict:
        from helix.scheduling.replan import switch

        self._addresses.update(addresses)
        self.topology_source = source
        self.scheduler, decision = switch(self.scheduler, source, changed, time.time())
        self._admission.scheduler = self.scheduler
        running = {s.seq_id: s for s in self._requests.values() if s.pipeline is not None}
        moved = 0
        for state in reversed([running[i] for i in decision.resume if i in running]):
            if state.cancelled:
                self._finish(state, "cancelled")
                continue
            moved += 1
            self._requeue(state)
        self.counters["moved"] = self.counters.get("moved", 0) + moved
        return {"moved": moved, "kept": len(decision.keep)}

    def fail_all(self, message: str) -> None:
        """Fail every waiting and running request with a 503 (the deployment is shutting down)."""
        self._commands.put(lambda: self._fail_all(message))

    def _fail_all(self, message: str) -> None:
        self._fail_waiting(message, 503)
        for state in [s for s in self._requests.values() if s.pipeline is not None]:
            self._finish(state, None, ErrorEvent(message, 503, "service_unavailable"))

    def health(self) -> dict[str, object]:
        """``ok``; ``degraded`` (workers lost, a complete pipeline remains); ``unavailable`` (none does)."""
        dead = dict(self.dead_workers)
        topology = self.scheduler.topology
        if not has_pipeline(topology):
            status = "unavailable"
        else:
            status = "degraded" if dead else "ok"
        return {
            "status": status,
            "replanning": self.awaiting_replan(),
            "workers_gone": dead,
            "epoch": self.epoch,
            "serving_workers": sorted(topology.ranges),
            "max_flow_tokens_per_s": topology.max_flow_tokens_per_s,
        }

    def running_on(self, worker: str) -> int:
        """Admitted requests whose pipeline uses `worker` (read from another thread: a snapshot that may
        be a step old; for benchmarks and tests that time a fault)."""
        return sum(1 for s in list(self._requests.values()) if s.pipeline is not None and worker in s.route)

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
            "epoch": self.epoch,
        }

    # ---- the loop (coordinator thread only) ----
    def _run(self) -> None:
        outbox = self.wire.outbox()
        last_watchdog = time.monotonic()
        try:
            while not self._stopped.is_set():
                messages = self.inbox.recv(POLL_S)
                while not self._commands.empty():
                    self._commands.get()()
                for message in messages:
                    if not isinstance(message, ResultBatch):
                        continue
                    if message.worker in self.dead_workers:
                        self.counters["fenced_frames"] += 1  # late results of a worker declared dead
                        continue
                    for result in message.results:
                        self._on_result(result)
                    if message.tokens is not None:
                        tokens = message.tokens
                        columns = tokens.table.tolist()
                        for seq_id, token_id, admission in zip(*columns, strict=True):
                            state = self._returned(seq_id, admission)
                            if state is not None:
                                self._take_token(state, token_id, None, None)
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
        now = time.time()
        if not self._hold.may_admit(len(self.scheduler.active)):
            self._admission.waiting.append(
                Waiting(state.seq_id, len(state.prompt_ids), state.params.max_tokens, now)
            )
            return
        pipeline = self._admission.submit(state.seq_id, len(state.prompt_ids), state.params.max_tokens, now)
        if pipeline is not None:
            self._start(state, pipeline)

    def _admit_waiting(self) -> None:
        if not len(self._admission) or not self._hold.may_admit(len(self.scheduler.active)):
            return
        awaiting = self.awaiting_replan()
        if not has_pipeline(self.scheduler.topology):
            if awaiting:  # the new plan brings pipelines: wait for it
                return
            gone = "; ".join(f"worker {n} is gone: {r}" for n, r in self.dead_workers.items())
            self._fail_waiting(f"no complete pipeline is left ({gone})", 503)
            return
        admitted, unservable = self._admission.retry(time.time(), awaiting_replan=awaiting)
        for waiting, pipeline in admitted:
            self._start(self._requests[waiting.request_id], pipeline)
        for waiting in unservable:
            state = self._requests.pop(waiting.request_id)
            self._set_counts(waiting=-1)
            self.counters["failed"] += 1
            self._emit(
                state,
                ErrorEvent(
                    f"no pipeline can hold this request's KV cache ({len(state.prompt_ids)} prompt tokens + "
                    f"{state.params.max_tokens} max_tokens)",
                    400,
                    "invalid_request_error",
                ),
            )

    def _fail_waiting(self, message: str, status: int) -> None:
        while self._admission.waiting:
            state = self._requests.pop(self._admission.waiting.popleft().request_id)
            self._set_counts(waiting=-1)
            self.counters["failed"] += 1
            self._emit(state, ErrorEvent(message, status, "service_unavailable"))

    def _start(self, state: RequestState, pipeline) -> None:
        self._set_counts(waiting=-1, running=+1)
        self.counters["admitted"] += 1
        state.pipeline = pipeline
        state.admission = next(self._admissions)
        state.decode_budget = self._decode_budget(state)
        context = state.context_ids
        penalised = state.params.repetition_penalty != 1.0
        item = StageItem(
            state.seq_id,
            0,
            len(context),
            tuple(context),
            state.route,
            state.params,
            penalty_prompt_ids=tuple(state.prompt_ids) if penalised else None,
            admission=state.admission,
            # a resumed request's penalties count what it generated before
            penalty_output_ids=tuple(state.output_ids)
            if state.params.has_penalties and state.output_ids
            else None,
            route_starts=tuple(hop.start for hop in pipeline.hops),
            decode_budget=state.decode_budget,
            prefix_ids=tuple(context) if self.config.prefix_caching and not state.no_prefix else None,
        )
        self._send(state, item)

    def _decode_budget(self, state: RequestState) -> int:
        """Tokens the route may generate on its own for this admission: up to max_tokens or the context
        window, whichever comes first (0 without `pipeline_decode`, or on a longer route than
        `pipeline_decode_max_stages`)."""
        limit = self.config.pipeline_decode_max_stages
        if not self.config.pipeline_decode or (limit is not None and len(state.route) > limit):
            return 0
        left = state.params.max_tokens - len(state.output_ids)
        return max(0, min(left, self.config.max_model_len - state.num_tokens))

    def _send(self, state: RequestState, item: StageItem) -> None:
        self._iteration_started(state)
        self._outgoing[state.route[0]].append(item)

    def _iteration_started(self, state: RequestState) -> None:
        """The request's next iteration leaves now (from here, or from its route's last stage): number it
        for the stall watchdog and start its progress clock."""
        state.in_flight = True
        self._sent += 1
        state.sent_seq = self._sent
        self._last_progress[state.seq_id] = time.monotonic()

    def _on_result(self, result: TokenResult) -> None:
        state = self._returned(result.seq_id, result.admission)
        if state is None:
            return
        if result.prefix_miss and not state.cancelled:
            self.counters["prefix_misses"] = self.counters.get("prefix_misses", 0) + 1
            state.no_prefix = True  # re-prefill in full (no admission hold: nothing ran short of KV)
            self._requeue(state)
            return
        if result.preempted:
            if state.cancelled:
                self._finish(state, "cancelled")
            else:
                self._preempt(state)
            return
        if result.error is not None:
            self._finish(state, None, ErrorEvent(result.error, 500, "server_error"))
            return
        if result.stage_done_s and self.scheduler.wants_stage_events:
            for index, done_s in enumerate(result.stage_done_s):
                self.scheduler.on_stage_done(state.seq_id, index, done_s)
        self._take_token(state, result.token_id, result.logprob, result.top_logprobs)

    def _returned(self, seq_id: int, admission: int) -> RequestState | None:
        """The request whose in-flight iteration just came back (None: finished, or a late result of an
        earlier admission)."""
        state = self._requests.get(seq_id)
        if state is None or not state.in_flight or admission != state.admission:
            return None
        state.in_flight = False
        route = state.route
        self._route_returned[route] = max(self._route_returned.get(route, 0), state.sent_seq)
        return state

    def _take_token(
        self, state: RequestState, token_id: int, logprob: float | None, top: dict[int, float] | None
    ) -> None:
        """A sampled token of a running request: emit it, then finish the request or go on decoding."""
        if state.cancelled:
            self._finish(state, "cancelled")
            return
        state.output_ids.append(token_id)
        now = time.time()
        if state.first_token_s is None:
            state.first_token_s = now
        if state.lost_at_s is not None:
            self.recoveries.append(
                {"seq_id": state.seq_id, "lost_at_s": state.lost_at_s, "resumed_at_s": now}
            )
            state.lost_at_s = None
        self._emit(state, TokenEvent(token_id, logprob, top))
        reason = self._stop_reason(state, token_id)
        if reason is not None:
            self._finish(state, reason)
            return
        self.scheduler.on_tokens(state.seq_id, 1, now)
        if state.decode_budget > 0:  # the route starts the next iteration itself, at its last stage
            self._iteration_started(state)
            return
        self._iteration_started(state)
        self._outgoing_rows[state.route[0]].append(
            (state.seq_id, state.num_tokens - 1, state.admission, token_id)
        )

    def _preempt(self, state: RequestState) -> None:
        """A worker dropped the request's KV: free it everywhere and re-queue it first (re-prefill)."""
        self.counters["preempted"] += 1
        state.preemptions += 1
        self._hold.preempted()
        self._requeue(state)

    def _requeue(self, state: RequestState) -> None:
        """Free the request on its (live) workers, release it in the scheduler, put it at the queue head."""
        self._release_kv(state)
        self.scheduler.release(state.seq_id, time.time())
        state.pipeline = None
        state.in_flight = False
        self._last_progress.pop(state.seq_id, None)
        self._set_counts(running=-1, waiting=+1)
        remaining = state.params.max_tokens - len(state.output_ids)
        requeue_front(self._admission, state.seq_id, state.num_tokens, remaining, time.time())

    def _release_kv(self, state: RequestState) -> None:
        for node in state.route:
            if node not in self.dead_workers:
                self._frees[node].append((state.seq_id, state.admission))

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
        self._release_kv(state)
        self.scheduler.release(state.seq_id, time.time())
        self._hold.released()
        self._set_counts(running=-1)
        if error is not None:
            self.counters["failed"] += 1
            self._emit(state, error)
            return
        self.counters["cancelled" if reason == "cancelled" else "finished"] += 1
        self._emit(state, FinishEvent(reason or "stop", len(state.prompt_ids), len(state.output_ids)))

    def _fail_worker(self, name: str, reason: str) -> None:
        if name in self.dead_workers:
            return
        self.dead_workers[name] = reason
        self.epoch += 1
        for node in self._addresses:
            if node not in self.dead_workers:
                self._controls[node].append(Control("fence", names=(name,)))
        self._controls[name].append(Control("stop"))  # if it ever runs again, it stops at once
        running = [s for s in self._requests.values() if s.pipeline is not None]
        if self.topology_source is None:  # nothing to re-plan with: fail the requests it carried
            for state in [s for s in running if name in s.route]:
                error = ErrorEvent(f"worker {name} is gone: {reason}", 503, "service_unavailable")
                self._finish(state, None, error)
            return
        now = time.time()
        self.scheduler, decision = recover(self.scheduler, self.topology_source, set(self.dead_workers), now)
        self._admission.scheduler = self.scheduler
        by_id = {s.seq_id: s for s in running}
        resumed = [by_id[i] for i in decision.resume if i in by_id]
        for state in reversed(resumed):  # requeue_front: the first admitted ends at the head
            if state.cancelled:
                self._finish(state, "cancelled")
                continue
            self.counters["rerouted"] += 1
            state.reroutes += 1
            if state.lost_at_s is None:
                state.lost_at_s = now
            self._requeue(state)

    def _watchdog(self) -> None:
        """An iteration lost on its route (see the module docstring; its workers still answer heartbeats,
        or the health monitor would have re-routed it) is re-admitted to re-prefill, not failed; a
        request that stalls `MAX_STALLS` times fails with a 504."""
        now = time.monotonic()
        timeout_s = self.config.stall_timeout_s
        for seq_id, since in list(self._last_progress.items()):
            state = self._requests.get(seq_id)
            if state is None or not state.in_flight or now - since <= timeout_s:
                continue
            overtaken = self._route_returned.get(state.route, 0) > state.sent_seq
            if not overtaken:
                if now - since > STALL_CEILING * timeout_s and not state.cancelled:
                    self.counters["stall_requeued"] += 1  # slow or stuck, not known lost: never fails
                    self._requeue(state)
                continue
            state.stalls += 1
            if state.stalls <= MAX_STALLS and not state.cancelled:
                self.counters["stall_requeued"] += 1
                self._requeue(state)
                continue
            self._finish(
                state,
                None,
                ErrorEvent(
                    f"no progress for {self.config.stall_timeout_s:.0f} s on pipeline {list(state.route)}",
                    504,
                    "timeout",
                ),
            )

    def _flush(self, outbox: Outbox) -> None:
        """Controls and frees first: on each socket they precede the new iterations sent after them."""
        for node, controls in self._controls.items():
            for control in controls:
                outbox.send(self._addresses[node], control)
        self._controls.clear()
        for node, pairs in self._frees.items():
            seq_ids, admissions = [p[0] for p in pairs], [p[1] for p in pairs]
            outbox.send(self._addresses[node], Control("free", seq_ids, admissions))
        self._frees.clear()
        now = time.time()
        for node in {*self._outgoing, *self._outgoing_rows}:
            items, rows = self._outgoing.get(node, []), self._outgoing_rows.get(node)
            if node in self.dead_workers or not (items or rows):
                continue
            decodes = (
                DecodeRows.from_lists(*(list(column) for column in zip(*rows, strict=True))) if rows else None
            )
            outbox.send(self._addresses[node], HopBatch(items, None, now, COORDINATOR_HOP, decodes))
        self._outgoing.clear()
        self._outgoing_rows.clear()

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
