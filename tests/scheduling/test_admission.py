from helix.scheduling import AdmissionQueue, KVParameters, Topology, create_scheduler, should_feed
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


def _scheduler(model, kv_tokens=1000):
    topo = Topology.build(
        make_cluster(["a"]),
        model,
        Placement.from_pairs({"a": (0, 80)}),
        FlatCapacity(100.0, kv_tokens=kv_tokens),
    )
    return create_scheduler("maxflow", topo, KVParameters(1.0, 0.0))


def test_queue_waits_then_admits_in_order(model):
    queue = AdmissionQueue(_scheduler(model))
    assert queue.submit("a", 600, None, 0.0) is not None
    assert queue.submit("b", 600, None, 1.0) is None
    assert queue.submit("c", 100, None, 2.0) is None  # no overtaking while "b" waits
    assert len(queue) == 2 and queue.max_waiting == 2
    queue.scheduler.release("a")
    admitted, unservable = queue.retry(3.0)
    assert [w.request_id for w, _ in admitted] == ["b", "c"] and not unservable


def test_unservable_request_is_reported_not_stuck(model):
    queue = AdmissionQueue(_scheduler(model))
    assert queue.submit("huge", 1500, None, 0.0) is None
    admitted, unservable = queue.retry(1.0)
    assert not admitted and [w.request_id for w in unservable] == ["huge"] and len(queue) == 0


def test_a_request_waits_for_a_pending_replan_instead_of_being_unservable(model):
    queue = AdmissionQueue(_scheduler(model))
    assert queue.submit("huge", 1500, None, 0.0) is None
    admitted, unservable = queue.retry(1.0, awaiting_replan=True)
    assert not admitted and not unservable and len(queue) == 1  # the new plan may hold it
    admitted, unservable = queue.retry(2.0)  # the new plan took traffic and still cannot
    assert [w.request_id for w in unservable] == ["huge"]


def test_should_feed(model):
    sched = _scheduler(model)
    assert should_feed(sched, 0.8)
    sched.admit(1, 900, None, 0.0)
    assert not should_feed(sched, 0.8)
