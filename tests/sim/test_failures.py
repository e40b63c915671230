"""The simulator's KV preemption and node failures (the runtime's policies, one code path)."""

import numpy as np
import pytest

from helix.errors import HelixInputError
from helix.scheduling import KVParameters
from helix.scheduling.recovery import MembershipEvent
from helix.sim.config import SimConfig
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.gpu import default_catalog
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


def _config(**changes):
    base = dict(
        mode="online",
        warmup_s=0.0,
        duration_s=60.0,
        model_loading=False,
        double_single_decode=False,
        bandwidth="link",
        decodes_per_request="output-1",
    )
    base.update(changes)
    return SimConfig(**base)


def test_optimistic_admission_preempts_instead_of_overflowing(model):
    """KV for 1,000 tokens per layer; 20 requests of 20 + 100 tokens arrive at once. Admission expects
    20 + 0.3·100 = 50 tokens each, so it lets 18 in (0.9 · 1000 / 50) though they grow to 120: the node
    preempts the newest, re-prefills them later, and every request still finishes without overflow."""
    cluster = make_cluster(["a"])
    placement = Placement.from_pairs({"a": (0, 80)})
    capacity = FlatCapacity(100.0, kv_tokens=1000)
    lengths = Lengths(np.array([20]), np.array([100]), "test")
    result = simulate(
        cluster,
        model,
        placement,
        capacity,
        lengths,
        _config(kv_block_tokens=16),
        kv_params=KVParameters(0.9, 0.3),
        arrival_times_s=np.zeros(20),
    )
    counters = result["summary"]["counters"]
    assert counters["preemptions"] > 0
    assert counters["requests_completed"] == 20 and counters.get("kv_overflow_passes", 0) == 0
    assert result["summary"]["nodes"]["a"]["kv_occupancy_max"] <= 1.0
    # every output token is produced exactly once: 20 prompts' first tokens + 20 · 99 decodes
    assert result["summary"]["decodes_in_window"] == 20 * 99


def test_a_failed_node_is_routed_around(model):
    """Two replicas (3:1). At 10 s the faster one fails: its queries re-prefill on the other, which then
    carries all traffic; the re-planned max flow is the survivor's."""
    catalog = default_catalog()
    cluster = make_cluster(["a", "b"], ["A100", "L4"])
    placement = Placement.from_pairs({"a": (0, 80), "b": (0, 80)})
    capacity = FlatCapacity({catalog.get("A100").name: 300.0, catalog.get("L4").name: 100.0})
    lengths = Lengths(np.array([50]), np.array([200]), "test")
    arrivals = np.arange(0.0, 30.0, 0.5)
    result = simulate(
        cluster,
        model,
        placement,
        capacity,
        lengths,
        _config(duration_s=200.0),
        arrival_times_s=arrivals,
        membership_events=[MembershipEvent(10.0, "fail", "a")],
    )
    counters = result["summary"]["counters"]
    recovery = result["recovery"]
    assert recovery["nodes_lost"] == ["a"] and recovery["serving_nodes"] == ["b"]
    assert recovery["max_flow_after_tokens_per_s"] == pytest.approx(100.0)
    assert counters["requests_rerouted"] > 0 and counters["nodes_failed"] == 1
    assert counters["requests_completed"] == len(arrivals)
    assert recovery["resume_delay_s"]["count"] == counters["requests_rerouted"]
    assert result["summary"]["decodes_in_window"] == len(arrivals) * 199


def test_membership_events_are_checked(model):
    cluster = make_cluster(["a"])
    placement = Placement.from_pairs({"a": (0, 80)})
    lengths = Lengths(np.array([20]), np.array([10]), "test")
    for event in (MembershipEvent(1.0, "join", "a"), MembershipEvent(1.0, "fail", "zz")):
        with pytest.raises(HelixInputError):
            simulate(
                cluster,
                model,
                placement,
                FlatCapacity(100.0),
                lengths,
                _config(),
                arrival_times_s=np.zeros(2),
                membership_events=[event],
            )
