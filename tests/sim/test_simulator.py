import numpy as np
import pytest

from helix.errors import HelixInputError
from helix.sim.config import SimConfig
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster

ALPHA = 16384  # LLaMA-2-70B activation bytes per token


def _config(**changes):
    base = dict(
        warmup_s=5.0,
        duration_s=40.0,
        model_loading=False,
        double_single_decode=False,
        bandwidth="link",
        nic_queueing=False,
        feed="population",
    )
    base.update(changes)
    return SimConfig(**base)


def _one_node(model, kv_tokens=10_000_000):
    cluster = make_cluster(["a"])
    return cluster, Placement.from_pairs({"a": (0, 80)}), FlatCapacity(100.0, kv_tokens=kv_tokens)


def test_single_node_throughput_matches_closed_form(model):
    """Requests on one 80-layer node settle into groups that alternate passes (a group returning during
    a pass waits for the next): with G groups of N/G, each pass takes 80·d + (N/G)·α·(1/4e9 + 1/5e9)
    and serves N/G tokens. Requests launched 0.1 s apart (< one pass) form one group per pass slot:
    here 2 requests → 2 groups of 1, so decode throughput = 1 / (80·d + α·(1/4e9 + 1/5e9))."""
    cluster, placement, capacity = _one_node(model)
    n = 2
    lengths = Lengths(np.array([10]), np.array([2000]), "test")
    result = simulate(
        cluster, model, placement, capacity, lengths, _config(initial_requests=n), scheduler="random"
    )
    pass_s = 80 * 1e-3 + ALPHA * (1 / 4e9 + 1 / 5e9)
    assert result["summary"]["decode_tokens_per_s"] == pytest.approx(1 / pass_s, rel=0.01)
    assert result["summary"]["decode_latency_s"]["p50"] == pytest.approx(2 * pass_s, rel=1e-3)
    assert result["summary"]["nodes"]["a"]["utilization"] == pytest.approx(1.0, abs=0.03)


def test_two_stage_pipeline_latency(model):
    """One request on a two-node chain with 10 ms links: every decode round trip is 3 hops + 2 passes."""
    cluster = make_cluster(["a", "b"], latency_s=0.01)
    placement = Placement.from_pairs({"a": (0, 40), "b": (40, 80)})
    lengths = Lengths(np.array([10]), np.array([5000]), "test")
    result = simulate(
        cluster,
        model,
        placement,
        FlatCapacity(100.0),
        lengths,
        _config(initial_requests=1),
        scheduler="random",
    )
    round_trip = 3 * 0.01 + 2 * (40 * 1e-3 + ALPHA * (1 / 4e9 + 1 / 5e9))
    assert result["summary"]["decode_latency_s"]["p50"] == pytest.approx(round_trip, rel=1e-3)


def test_deterministic_for_a_seed(model):
    cluster, placement, capacity = _one_node(model, kv_tokens=50_000)
    lengths = Lengths(np.array([100, 400, 900]), np.array([20, 50, 200]), "test")
    runs = [
        simulate(cluster, model, placement, capacity, lengths, _config(seed=s, feed="kv"))["summary"]
        for s in (3, 3, 4)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_online_overload_queues_instead_of_crashing(model):
    cluster, placement, capacity = _one_node(model, kv_tokens=20_000)
    lengths = Lengths(np.array([500]), np.array([50]), "test")
    arrivals = np.arange(0.0, 45.0, 0.05)  # 20 requests/s, far beyond what 20k KV tokens sustain
    result = simulate(
        cluster, model, placement, capacity, lengths, _config(mode="online"), arrival_times_s=arrivals
    )
    summary = result["summary"]
    assert summary["admission_queue"]["max"] > 100
    assert summary["admission_queue"]["final"] > 100
    assert summary["ttft_s"]["mean"] > summary["prompt_latency_s"]["mean"]
    assert summary["nodes"]["a"]["kv_occupancy_max"] <= 1.0


def test_online_launches_only_the_arrivals(model):
    cluster, placement, capacity = _one_node(model, kv_tokens=200_000)
    lengths = Lengths(np.array([200]), np.array([20]), "test")
    arrivals = np.arange(0.0, 20.0, 0.5)  # 40 requests, well within capacity
    result = simulate(
        cluster,
        model,
        placement,
        capacity,
        lengths,
        _config(mode="online", feed="auto"),
        arrival_times_s=arrivals,
    )
    counters = result["summary"]["counters"]
    assert counters.get("requests_launched", 0) == 0  # no closed-loop feeding in online mode
    assert counters["requests_completed"] == len(arrivals)


def test_bad_inputs(model):
    cluster, placement, capacity = _one_node(model, kv_tokens=1000)
    too_long = Lengths(np.array([900]), np.array([400]), "test")
    with pytest.raises(HelixInputError, match="KV"):
        simulate(cluster, model, placement, capacity, too_long, _config())
    ok = Lengths(np.array([100]), np.array([10]), "test")
    with pytest.raises(HelixInputError, match="arrivals"):
        simulate(cluster, model, placement, capacity, ok, _config(mode="online"))
