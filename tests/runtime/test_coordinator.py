"""The coordinator alone (no workers answer): a stalled iteration is re-admitted, then fails with 504."""

import queue
import socket

from helix.engine.sampling_params import SamplingParams
from helix.runtime.coordinator import Coordinator, CoordinatorConfig
from helix.runtime.deploy import wait_until
from helix.runtime.requests import ErrorEvent
from helix.scheduling import create_scheduler
from helix.scheduling.recovery import TopologySource
from helix.specs.model import builtin_model
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stalled_request_is_readmitted_before_it_times_out():
    source = TopologySource(
        make_cluster(["a"]),
        builtin_model("llama-2-70b"),
        Placement.from_pairs({"a": (0, 80)}),
        FlatCapacity(100.0),
        False,
    )
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
