"""The coordinator with no worker, or with one plain ZeroMQ peer speaking the wire (no model): a lost
iteration is re-admitted at the stall timeout, then fails with 504; a merely slow route stalls nothing."""

import queue
import socket
import threading
import time

import zmq

from helix.engine.sampling_params import SamplingParams
from helix.runtime.coordinator import Coordinator, CoordinatorConfig
from helix.runtime.deploy import wait_until
from helix.runtime.messages import ResultBatch, TokenResult, decode, encode
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


def test_a_stalled_request_is_readmitted_before_it_times_out():
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
        assert wait_until(lambda: not events.empty(), 15)
        error = events.get()
        assert isinstance(error, ErrorEvent) and error.status == 504
        assert coordinator.counters["stall_requeued"] == 2 and coordinator.counters["admitted"] == 3
    finally:
        coordinator.close()


class _Peer:
    """Worker `a` as a plain PULL/PUSH pair: answers each iteration with a token after `delay_s`, except
    the iterations `drop` says to lose."""

    def __init__(self, delay_s: float, drop) -> None:
        self.context = zmq.Context()
        self.inbox = self.context.socket(zmq.PULL)
        self.port = self.inbox.bind_to_random_port("tcp://127.0.0.1")
        self.outbox = self.context.socket(zmq.PUSH)
        self.delay_s, self.drop = delay_s, drop
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self, coordinator_address: str) -> None:
        self.outbox.connect(coordinator_address)
        self.thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(50):
                continue
            batch = decode(self.inbox.recv_multipart())
            if not hasattr(batch, "items"):
                continue
            time.sleep(self.delay_s)
            results = [
                TokenResult(i.seq_id, 7, admission=i.admission) for i in batch.items if not self.drop(i)
            ]
            if results:
                self.outbox.send_multipart(encode(ResultBatch("a", results)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.context.destroy(linger=0)


def _serve(peer: _Peer, prompts: int, max_tokens: int, stall_timeout_s: float):
    source = _source()
    config = CoordinatorConfig(max_model_len=4096, stall_timeout_s=stall_timeout_s)
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


def test_a_lost_iteration_is_readmitted_at_the_stall_timeout():
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
    coordinator, sinks = _serve(peer, 2, 40, stall_timeout_s=0.5)
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


def test_a_slow_route_stalls_nothing():
    """Every step takes 0.8 s, longer than the 0.3 s stall timeout but nothing is lost: no re-admission,
    every request completes."""
    peer = _Peer(0.8, lambda item: False)
    coordinator, sinks = _serve(peer, 3, 3, stall_timeout_s=0.3)
    try:
        ends = _ends(sinks, 30)
        assert all(isinstance(e, FinishEvent) for e in ends), ends
        assert coordinator.counters["stall_requeued"] == 0
    finally:
        coordinator.close()
        peer.close()
