import pytest

from helix.sim.core import EventKind, EventLoop


def test_events_pop_by_time_then_kind_then_insertion():
    loop = EventLoop()
    seen = []
    for kind in EventKind:
        loop.on(kind, lambda t, p: seen.append((t, p)))
    loop.schedule(2.0, EventKind.SAMPLE, "late")
    loop.schedule(1.0, EventKind.FEED, "feed")
    loop.schedule(1.0, EventKind.SINK, "sink-1")
    loop.schedule(1.0, EventKind.SINK, "sink-2")
    loop.schedule(1.0, EventKind.PASS_END, "pass")
    loop.schedule(1.0, EventKind.WAKE, "wake")
    loop.run(until_s=1.5)
    assert [p for _, p in seen] == ["sink-1", "sink-2", "pass", "feed", "wake"]
    assert loop.now_s == 1.5 and len(loop.heap) == 1
    with pytest.raises(ValueError):
        loop.schedule(1.0, EventKind.FEED)


def test_handlers_can_schedule_follow_ups():
    loop = EventLoop()
    times = []

    def tick(t, n):
        times.append(t)
        if n:
            loop.schedule(t + 0.5, EventKind.WAKE, n - 1)

    loop.on(EventKind.WAKE, tick)
    loop.schedule(0.0, EventKind.WAKE, 3)
    loop.run(10.0)
    assert times == [0.0, 0.5, 1.0, 1.5] and loop.events_processed == 4
