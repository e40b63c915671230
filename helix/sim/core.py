"""The event core: a heap of ``(time_s, kind, seq, payload)`` tuples, popped in order.

Ties at equal times go by `EventKind` (lower first), then by insertion order (`seq`), so runs are
deterministic. The order is chosen so that work finishing at an instant is visible to work starting at it:
a request returning to the coordinator (freeing KV) precedes arrivals and feeding at the same time, and
nodes start passes (WAKE) only after everything else at that instant, so simultaneous arrivals share a
batch.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from enum import IntEnum
from typing import Any


class EventKind(IntEnum):
    """Event types, in tie-break order at equal times."""

    SINK = 0  # a request iteration reaches the coordinator
    PASS_END = 1  # a compute node finishes a pass over its layers
    ARRIVAL = 2  # an online request arrives
    FEED = 3  # the offline feeder launches a request
    WAKE = 4  # an idle compute node starts a pass with what has arrived
    SAMPLE = 5  # periodic metrics sample
    MEMBERSHIP = 6  # a node fails (joins, drains): after everything else at that instant


Handler = Callable[[float, Any], None]


class EventLoop:
    """A minimal discrete-event loop; handlers schedule follow-up events with `schedule`."""

    __slots__ = ("heap", "now_s", "_seq", "handlers", "events_processed")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Any]] = []
        self.now_s = 0.0
        self._seq = 0
        self.handlers: list[Handler | None] = [None] * len(EventKind)
        self.events_processed = 0

    def on(self, kind: EventKind, handler: Handler) -> None:
        self.handlers[kind] = handler

    def schedule(self, time_s: float, kind: EventKind, payload: Any = None) -> None:
        if time_s < self.now_s:
            raise ValueError(f"event at {time_s} is in the past (now {self.now_s})")
        self._seq += 1
        heapq.heappush(self.heap, (time_s, kind, self._seq, payload))

    def run(
        self, until_s: float, progress: Callable[[float], None] | None = None, progress_every: int = 50_000
    ) -> None:
        """Process events with time ≤ `until_s` (later ones stay queued)."""
        heap, handlers, pop = self.heap, self.handlers, heapq.heappop
        count = 0
        while heap and heap[0][0] <= until_s:
            time_s, kind, _, payload = pop(heap)
            self.now_s = time_s
            handlers[kind](time_s, payload)
            count += 1
            if progress is not None and count % progress_every == 0:
                progress(time_s)
        self.events_processed += count
        self.now_s = max(self.now_s, until_s)
