"""The coordinator with no worker, or with one plain ZeroMQ peer speaking the wire (no model): a lost
iteration is re-admitted at the stall timeout; an unanswered one later, never failed; a merely slow route
stalls nothing."""

import queue
import socket
import threading
import time

import pytest
import zmq

from helix.engine.sampling_params import SamplingParams
from helix.runtime.coordinator import Coordinator, CoordinatorConfig
from helix.runtime.deploy import wait_until
from helix.runtime.messages import Control, ResultBatch, StageItem, TokenResult, decode, encode
from helix.runtime.requests import ErrorEvent, FinishEvent
from helix.scheduling import create_scheduler
from helix.scheduling.recovery import TopologySource
from helix.specs.model import builtin_model
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source():
    return TopologySource(
        make_cluster(["a"]),
        builtin_model("llama-2-70b"),
        Placement.from_pairs({"a": (0, 80)}),
        FlatCapacity(100.0),
        False,
    )


def test_an_unanswered_request_is_readmitted_and_never_failed():
    """No worker answers and nothing overtakes the iteration: it is re-admitted every 2 × the stall
    timeout (not failed: nothing shows it was lost rather than slow)."""
    source = _source()
    scheduler = create_scheduler("maxflow", source.surviving())
    config = CoordinatorConfig(max_model_len=4096, stall_timeout_s=0.5)
    coordinator = Coordinator(
        scheduler, {"a": f"tcp://127.0.0.1:{_free_port()}"}, config, topology_source=source
    )
    coordinator.start()
    try:
        events = queue.SimpleQueue()
        coordinator.submit([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=4), events.put)
        assert wait_until(lambda: coordinator.counters["stall_requeued"] >= 3, 15)
        assert coordinator.counters["admitted"] >= 4
        assert events.empty()  # no error, no token
    finally:
        coordinator.close()


class _Peer:
    """Worker `a` (the whole route) as a plain PULL/PUSH pair: answers each iteration with a token after
    `delay_s`, except the iterations `drop` says to lose; with a decode budget (pipeline decode) it feeds
    each token back to itself as the next iteration, as a route's last stage does."""

    def __init__(self, delay_s: float, drop) -> None:
        self.context = zmq.Context()
        self.inbox = self.context.socket(zmq.PULL)
        self.port = self.inbox.bind_to_random_port("tcp://127.0.0.1")
        self.outbox = self.context.socket(zmq.PUSH)
        self.delay_s, self.drop = delay_s, drop
        self.budget: dict[int, int] = {}
        self.pending: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, coordinator_address: str) -> None:
        self.outbox.connect(coordinator_address)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        while not self.stop.is_set():
            items, self.pending = self.pending, []
            while poller.poll(0 if items else 50):
                message = decode(self.inbox.recv_multipart())
                if isinstance(message, Control) and message.kind == "free":
                    for seq_id in message.seq_ids:
                        self.budget.pop(seq_id, None)
                    items = [i for i in items if i.seq_id not in message.seq_ids]
                elif hasattr(message, "items"):
                    items += message.items + (
                        message.decodes.as_items() if message.decodes is not None else []
                    )
            if not items:
                continue
            time.sleep(self.delay_s)
            kept = [i for i in items if not self.drop(i)]
            for item in kept:
                if item.route is not None:
                    self.budget[item.seq_id] = item.decode_budget
            results = [TokenResult(i.seq_id, 7, admission=i.admission) for i in kept]
            for item in kept:
                left = self.budget.get(item.seq_id, 0) - 1
                if left > 0:
                    self.budget[item.seq_id] = left
                    self.pending.append(StageItem(item.seq_id, 0, 1, (7,), admission=item.admission))
            if results:
                self.outbox.send_multipart(encode(ResultBatch("a", results)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.context.destroy(linger=0)


def _serve(peer: _Peer, prompts: int, max_tokens: int, stall_timeout_s: float, pipeline_decode: bool):
    source = _source()
    config = CoordinatorConfig(
        max_model_len=4096, stall_timeout_s=stall_timeout_s, pipeline_decode=pipeline_decode
    )
    coordinator = Coordinator(
        create_scheduler("maxflow", source.surviving()),
        {"a": f"tcp://127.0.0.1:{peer.port}"},
        config,
        topology_source=source,
    )
    coordinator.start()
    peer.start(coordinator.address)
    sinks = [queue.SimpleQueue() for _ in range(prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i, sink in enumerate(sinks):
        coordinator.submit([1, 2, 3 + i], params, sink.put)
    return coordinator, sinks


def _ends(sinks, timeout_s: float) -> list:
    ends = [None] * len(sinks)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(ends):
        for i, sink in enumerate(sinks):
            while not sink.empty():
                event = sink.get()
                if isinstance(event, (FinishEvent, ErrorEvent)):
                    ends[i] = event
        time.sleep(0.02)
    return ends


@pytest.mark.parametrize("pipeline_decode", [True, False])
def test_a_lost_iteration_is_readmitted_at_the_stall_timeout(pipeline_decode):
    """The peer loses the first prompt iteration it gets, once; the other request's later iterations on
    the same route come back, so the first is known lost after 0.5 s (not at the 2.5 s ceiling) and is
    re-admitted."""
    lost: list[int] = []

    def drop(item) -> bool:
        if item.route is not None and not lost:
            lost.append(item.seq_id)
            return True
        return False

    peer = _Peer(0.05, drop)
    coordinator, sinks = _serve(peer, 2, 40, stall_timeout_s=0.5, pipeline_decode=pipeline_decode)
    try:
        started = time.monotonic()
        assert wait_until(lambda: coordinator.counters["stall_requeued"] == 1, 2.4, poll_s=0.02)
        assert time.monotonic() - started < 2.5  # before the ceiling: it was overtaken
        ends = _ends(sinks, 20)
        assert all(isinstance(e, FinishEvent) for e in ends), ends
        assert coordinator.counters["stall_requeued"] == 1 and len(lost) == 1
    finally:
        coordinator.close()
        peer.close()


@pytest.mark.parametrize("pipeline_decode", [True, False])
def test_a_slow_route_stalls_nothing(pipeline_decode):
    """Every step takes 0.8 s, longer than the 0.3 s stall timeout but nothing is lost: no re-admission,
    every request completes."""
    peer = _Peer(0.8, lambda item: False)
    coordinator, sinks = _serve(peer, 3, 3, stall_timeout_s=0.3, pipeline_decode=pipeline_decode)
    try:
        ends = _ends(sinks, 30)
        assert all(isinstance(e, FinishEvent) for e in ends), ends
        assert coordinator.counters["stall_requeued"] == 0
    finally:
        coordinator.close()
        peer.close()


def test_with_no_pipeline_requests_wait_for_a_pending_replan_and_fail_without_one():
    """The only worker is gone: while a re-plan is awaited a request waits for it (no 503); once none is,
    it fails with a 503 naming the lost worker."""
    source = _source()
    config = CoordinatorConfig(max_model_len=4096)
    coordinator = Coordinator(
        create_scheduler("maxflow", source.surviving()),
        {"a": f"tcp://127.0.0.1:{_free_port()}"},
        config,
        topology_source=source,
    )
    awaiting = threading.Event()
    awaiting.set()
    coordinator.awaiting_replan = awaiting.is_set
    coordinator.start()
    try:
        events = queue.SimpleQueue()
        coordinator.submit([1, 2, 3], SamplingParams(temperature=0.0, max_tokens=4), events.put)
        assert wait_until(lambda: coordinator.running_on("a") == 1, 5)
        coordinator.worker_gone("a", "killed")
        assert wait_until(lambda: coordinator.snapshot()["waiting"] == 1, 5)  # re-routed: waits
        time.sleep(0.5)
        assert events.empty() and coordinator.health()["replanning"]
        awaiting.clear()  # no new plan is coming after all
        assert wait_until(lambda: not events.empty(), 5)
        error = events.get()
        assert isinstance(error, ErrorEvent) and error.status == 503 and "worker a is gone" in error.message
    finally:
        coordinator.close()
