"""The `Scheduler` contract: a rejected admission changes no state, for every registered scheduler."""

from __future__ import annotations

import dataclasses
import random

import pytest

from helix.scheduling import SCHEDULERS, Topology, create_scheduler
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


@pytest.fixture
def topology(model):
    """Stage 1: a1 | a2 (any prompt), stage 2: b1 | b2 (prompts up to 500 tokens): a 1000-token prompt
    passes the first choice and is rejected at the second."""
    cluster = make_cluster(["a1", "a2", "b1", "b2"])
    placement = Placement.from_pairs({"a1": (0, 40), "a2": (0, 40), "b1": (40, 80), "b2": (40, 80)})
    topo = Topology.build(cluster, model, placement, FlatCapacity(100.0))
    limits = dict(topo.limits)
    for name in ("b1", "b2"):
        limits[name] = dataclasses.replace(limits[name], max_prompt_tokens=500)
    return dataclasses.replace(topo, limits=limits)


def _drive(sched, rejected_first: bool) -> list[tuple[str, ...]]:
    if rejected_first:
        for attempt in range(3):
            assert sched.admit(f"big{attempt}", 1000, None, 0.0) is None
    routes, now = [], 0.0
    for i in range(60):
        pipeline = sched.admit(i, 100, None, now)
        routes.append(pipeline.nodes)
        sched.on_stage_done(i, 0, now + (0.3 if pipeline.nodes[0] == "a2" else 0.1))
        sched.on_stage_done(i, 1, now + 0.4)
        sched.on_tokens(i, 5, now + 0.5)
        if i % 3 == 0:
            sched.release(i, now + 0.6)
        now += 0.05
    return routes


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_rejected_admission_changes_nothing(topology, name):
    clean = _drive(create_scheduler(name, topology, rng=random.Random(3)), rejected_first=False)
    after_rejects = _drive(create_scheduler(name, topology, rng=random.Random(3)), rejected_first=True)
    assert after_rejects == clean


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_rejected_admission_leaves_no_trace(topology, name):
    sched = create_scheduler(name, topology, rng=random.Random(0))
    for i in range(5):
        sched.admit(i, 100, None, 0.0)
    before = repr(_state(sched))
    assert sched.admit("big", 1000, None, 0.0) is None
    assert repr(_state(sched)) == before


def _state(obj, depth=0):
    """Plain data of an object graph (dicts, lists, numbers), for comparing scheduler state."""
    if depth > 6:
        return "..."
    if isinstance(obj, random.Random):
        return obj.getstate()
    if isinstance(obj, dict):
        return {repr(k): _state(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        return [_state(v, depth + 1) for v in items]
    if isinstance(obj, Topology):
        return "topology"
    if hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        names = list(getattr(obj, "__dict__", {})) + [
            s for cls in type(obj).__mro__ for s in getattr(cls, "__slots__", ())
        ]
        return {n: _state(getattr(obj, n, None), depth + 1) for n in names}
    return obj
