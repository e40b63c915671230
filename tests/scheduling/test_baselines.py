import random
from collections import Counter

import pytest

from helix.errors import HelixInputError
from helix.scheduling import SCHEDULERS, Topology, create_scheduler, register_scheduler
from helix.scheduling.baselines import RandomScheduler
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


@pytest.fixture
def chain_topology(model):
    """Stage 1: a1 | a2, stage 2: b1 | b2 (all links present)."""
    cluster = make_cluster(["a1", "a2", "b1", "b2"])
    placement = Placement.from_pairs({"a1": (0, 40), "a2": (0, 40), "b1": (40, 80), "b2": (40, 80)})
    return Topology.build(cluster, model, placement, FlatCapacity(100.0))


def test_random_is_uniform_and_deterministic(chain_topology):
    def run(seed):
        sched = create_scheduler("random", chain_topology, rng=random.Random(seed))
        return [sched.admit(i, 10, None, 0.0).nodes for i in range(4000)]

    routes = run(1)
    counts = Counter(routes)
    assert len(counts) == 4 and min(counts.values()) > 900
    assert routes == run(1) and routes != run(2)


def test_shortest_queue_balances_unfinished_prompts(chain_topology):
    sched = create_scheduler("shortest-queue", chain_topology, rng=random.Random(0))
    first = sched.admit(1, 10, None, 0.0).nodes
    second = sched.admit(2, 10, None, 0.0).nodes
    assert set(first).isdisjoint(second)  # both stages pick the other replica
    for hop in range(2):
        sched.on_stage_done(1, hop, 1.0)
    third = sched.admit(3, 10, None, 1.0).nodes
    assert third == first  # request 1's prompt finished: its nodes are empty again


def test_swarm_prefers_fast_edges(chain_topology):
    sched = create_scheduler("swarm", chain_topology, rng=random.Random(0))
    now = 0.0
    counts = Counter()
    for i in range(400):
        pipeline = sched.admit(i, 10, None, now)
        counts[pipeline.nodes[0]] += 1
        slow = pipeline.nodes[0] == "a2"
        sched.on_stage_done(i, 0, now + (1.0 if slow else 0.1))
        sched.on_stage_done(i, 1, now + 1.2)
        sched.release(i, now + 2)
        now += 0.01
    assert counts["a1"] > 5 * counts["a2"]


def test_kv_admission_optional_for_baselines(model):
    cluster = make_cluster(["a"])
    topo = Topology.build(
        cluster, model, Placement.from_pairs({"a": (0, 80)}), FlatCapacity(100.0, kv_tokens=1000)
    )
    plain = create_scheduler("random", topo)
    guarded = create_scheduler("random", topo, kv_admission=True)
    assert all(plain.admit(i, 500, None, 0.0) is not None for i in range(3))
    assert guarded.admit(1, 500, None, 0.0) is not None and guarded.admit(2, 500, None, 0.0) is None


def test_registry():
    assert {"maxflow", "random", "shortest-queue", "swarm"} <= set(SCHEDULERS)
    with pytest.raises(ValueError):
        register_scheduler(RandomScheduler)
    with pytest.raises(HelixInputError):
        create_scheduler("nope", None)
