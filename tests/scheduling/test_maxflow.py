import random
from collections import Counter

import pytest

from helix.scheduling import KVParameters, MaxFlowScheduler, Topology, create_scheduler
from helix.scheduling.pipeline import Hop, Pipeline
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


def test_routes_follow_flow_3_to_1(two_replicas, model):
    cluster, placement, capacity = two_replicas
    topo = Topology.build(cluster, model, placement, capacity)
    sched = MaxFlowScheduler(topo, KVParameters(1.0, 0.0), kv_admission=False)
    counts = Counter()
    for i in range(10_000):
        pipeline = sched.admit(i, 100, None, 0.0)
        counts[pipeline.nodes] += 1
        sched.release(i)
    assert abs(counts[("a",)] / counts[("b",)] - 3.0) / 3.0 < 0.02


def test_decode_tokens_charge_the_route(two_replicas, model):
    cluster, placement, capacity = two_replicas
    sched = MaxFlowScheduler(Topology.build(cluster, model, placement, capacity), kv_admission=False)
    sched.admit("x", 300, None, 0.0)  # goes to "a" (least finish time 300/300 < 300/100)
    sched.on_tokens("x", 600)
    assert sched.iwrr_loads("coordinator")[0] == pytest.approx((300 + 600) / 300)
    assert sched.admit("y", 300, None, 0.0).nodes == ("b",)


def test_partial_overlap_rule(model):
    cluster = make_cluster(["a", "b", "c"], ["A100", "L4", "L4"])
    placement = Placement.from_pairs({"a": (0, 50), "b": (40, 80), "c": (45, 80)})
    capacity = FlatCapacity({"A100-40GB": 200.0, "L4": 100.0})
    topo = Topology.build(cluster, model, placement, capacity, partial_overlap=True)
    sched = create_scheduler("maxflow", topo, kv_admission=False)
    seen = set()
    for i in range(20):
        pipeline = sched.admit(i, 10, None, 0.0)
        pipeline.validate(80)
        seen.add(pipeline)
    assert Pipeline((Hop("a", 0, 50), Hop("b", 50, 80))) in seen  # b skips its first 10 layers
    assert Pipeline((Hop("a", 0, 50), Hop("c", 50, 80))) in seen


def test_kv_admission_rejects_and_release_frees(two_replicas, model):
    cluster, placement, _ = two_replicas
    capacity = FlatCapacity({"A100-40GB": 300.0, "L4": 100.0}, kv_tokens=1000)
    topo = Topology.build(cluster, model, placement, capacity)
    sched = create_scheduler("maxflow", topo, KVParameters(1.0, 0.0), random.Random(0))
    assert sched.admit(1, 900, None, 0.0) is not None
    assert sched.admit(2, 900, None, 0.0) is not None
    assert sched.admit(3, 900, None, 0.0) is None  # both nodes expect 900/1000 per layer used
    assert sched.kv_bottleneck_usage() == pytest.approx(0.9)
    sched.release(1)
    assert sched.admit(3, 900, None, 0.0) is not None


def test_no_state_change_on_reject(two_replicas, model):
    cluster, placement, _ = two_replicas
    capacity = FlatCapacity({"A100-40GB": 300.0, "L4": 100.0}, kv_tokens=1000)
    sched = MaxFlowScheduler(Topology.build(cluster, model, placement, capacity), KVParameters(1.0, 0.0))
    loads = sched.iwrr_loads("coordinator")
    assert sched.admit(1, 5000, None, 0.0) is None  # longer than any node's prompt limit / KV
    assert sched.iwrr_loads("coordinator") == loads
    assert not sched.active
