from helix.scheduling import AdmissionQueue, MaxFlowScheduler, Topology
from helix.scheduling.preemption import AdmissionHold, Resident, choose_victims, requeue_front


def test_newest_first_until_the_shortfall_is_covered():
    residents = [Resident("a", 1, 4), Resident("b", 2, 4), Resident("c", 3, 2), Resident("d", 4, 1)]
    assert choose_victims(residents, "a", 1, 0) == []
    assert choose_victims(residents, "a", 1, 1) == ["d"]
    assert choose_victims(residents, "a", 1, 3) == ["d", "c"]
    assert choose_victims(residents, "a", 1, 7) == ["d", "c", "b"]


def test_older_requests_are_never_victims_of_a_newer_one():
    residents = [Resident("a", 1, 10), Resident("b", 2, 1), Resident("c", 3, 1)]
    assert choose_victims(residents, "c", 3, 1) == ["c"]  # the newest preempts itself
    assert choose_victims(residents, "b", 2, 5) == ["b"]  # c alone cannot cover 5: b goes, c stays
    assert choose_victims(residents, "new", 9, 1) == ["new"]  # a prompt that is not resident yet


def test_requeue_front_and_hold(two_replicas, model):
    cluster, placement, capacity = two_replicas
    queue = AdmissionQueue(MaxFlowScheduler(Topology.build(cluster, model, placement, capacity)))

    assert queue.submit("x", 10, 5, 0.0) is not None
    requeue_front(queue, "y", 30, 2, 1.0)
    assert queue.waiting[0].request_id == "y" and queue.waiting[0].prompt_tokens == 30
    hold = AdmissionHold()
    assert hold.may_admit(3)
    hold.preempted()
    assert not hold.may_admit(3) and hold.may_admit(0) and hold.preemptions == 1
    hold.released()
    assert hold.may_admit(3)
