import pytest

from helix.errors import HelixInputError
from helix.scheduling import MaxFlowScheduler
from helix.scheduling.recovery import (
    MembershipEvent,
    TopologySource,
    has_pipeline,
    load_membership_events,
    recover,
)
from helix.specs.cluster import COORDINATOR
from helix.specs.gpu import default_catalog
from helix.specs.placement import Placement

from .conftest import FlatCapacity, make_cluster


def _two_stage_source(model):
    """Two pipelines a1→a2 and b1→b2 (40 + 40 layers), node speeds 300 and 100 tokens/s."""
    cluster = make_cluster(["a1", "a2", "b1", "b2"], ["A100", "A100", "L4", "L4"])
    placement = Placement.from_pairs({"a1": (0, 40), "a2": (40, 80), "b1": (0, 40), "b2": (40, 80)})
    catalog = default_catalog()
    capacity = FlatCapacity({catalog.get("A100").name: 300.0, catalog.get("L4").name: 100.0})
    return TopologySource(cluster, model, placement, capacity, partial_overlap=False)


def test_surviving_topology_recomputes_the_flow(model):
    source = _two_stage_source(model)
    full = source.surviving()
    assert full.max_flow_tokens_per_s > 0
    survivors = source.surviving({"a2"})
    assert set(survivors.ranges) == {"a1", "b1", "b2"}  # a1 → b2 still chains
    assert survivors.max_flow_tokens_per_s < full.max_flow_tokens_per_s
    assert {h.dst for h in survivors.next_hops["a1"]} == {"b2"}
    assert sum(h.flow_tokens_per_s for h in survivors.next_hops[COORDINATOR]) == pytest.approx(
        survivors.max_flow_tokens_per_s
    )
    assert set(source.surviving({"a2", "a1"}).ranges) == {"b1", "b2"}
    assert has_pipeline(survivors)
    assert not has_pipeline(source.surviving({"a2", "b2"}))
    assert not has_pipeline(source.surviving({"a1", "a2", "b1", "b2"}))


def test_recover_keeps_intact_routes_and_resumes_the_others(model):
    source = _two_stage_source(model)
    sched = MaxFlowScheduler(source.surviving())
    routes = {i: sched.admit(i, 100, 10, 0.0) for i in range(8)}
    on_a = [i for i, p in routes.items() if "a2" in p.nodes]
    assert on_a and len(on_a) < 8
    fresh, decision = recover(sched, source, {"a2"}, 1.0)
    assert list(decision.resume) == on_a and set(decision.keep) == set(routes) - set(on_a)
    assert decision.has_pipeline and set(fresh.active) == set(decision.keep)
    for i in decision.keep:
        fresh.on_tokens(i, 5)
        fresh.release(i)
    assert fresh.kv.usage("b1") == pytest.approx(0.0)
    again = fresh.admit("new", 100, 10, 2.0)
    assert again is not None and "a2" not in again.nodes


def test_membership_events_are_validated():
    events = load_membership_events(
        [{"time_s": 20, "kind": "drain", "node": "t4-0"}, {"time_s": 10.5, "kind": "fail", "node": "t4-1"}],
        {"t4-0", "t4-1"},
    )
    assert events == [MembershipEvent(10.5, "fail", "t4-1"), MembershipEvent(20.0, "drain", "t4-0")]
    for bad, field in (
        ([{"time_s": -1, "kind": "fail", "node": "t4-0"}], "time_s"),
        ([{"time_s": 1, "kind": "explode", "node": "t4-0"}], "kind"),
        ([{"time_s": 1, "kind": "fail", "node": "zz"}], "node"),
        ([{"time_s": "x", "kind": "fail", "node": "t4-0"}], "time_s"),
        ([{"time_s": 1, "kind": "fail", "node": "t4-0", "extra": 1}], "[0]"),
    ):
        with pytest.raises(HelixInputError) as info:
            load_membership_events(bad, {"t4-0"})
        assert field in info.value.field
