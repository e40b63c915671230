"""Admission queue: what to do when a scheduler cannot admit a request right now.

Online serving must never crash or silently drop work under overload (Helix asserts instead): requests
that cannot be admitted wait here in FIFO order and are retried whenever capacity is released. The head
of the queue blocks the ones behind it (no overtaking), so a long prompt is not starved by short ones.
A request that cannot be admitted even when nothing else is in flight can never be served: `retry`
reports it as unservable instead of waiting forever — unless a re-plan is under way (`awaiting_replan`:
a membership change whose new plan has not taken traffic yet, `helix.scheduling.replan`), which may bring
the pipeline it needs; it then waits for the new plan. The simulator and the runtime both pass it.

Offline (closed-loop) feeding uses `should_feed`: start new work only while the scheduler's KV
bottleneck usage is at or under a high-water mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from helix.scheduling.base import Scheduler
from helix.scheduling.pipeline import Pipeline


@dataclass(slots=True)
class Waiting:
    request_id: Hashable
    prompt_tokens: int
    expected_output_tokens: int | None
    arrived_s: float


class AdmissionQueue:
    """FIFO of requests waiting for admission by `scheduler`."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.waiting: deque[Waiting] = deque()
        self.max_waiting = 0

    def __len__(self) -> int:
        return len(self.waiting)

    def submit(
        self, request_id: Hashable, prompt_tokens: int, expected_output_tokens: int | None, now_s: float
    ) -> Pipeline | None:
        """Admit now if nobody is waiting and the scheduler accepts; otherwise enqueue and return None."""
        if not self.waiting:
            pipeline = self.scheduler.admit(request_id, prompt_tokens, expected_output_tokens, now_s)
            if pipeline is not None:
                return pipeline
        self.waiting.append(Waiting(request_id, prompt_tokens, expected_output_tokens, now_s))
        self.max_waiting = max(self.max_waiting, len(self.waiting))
        return None

    def retry(
        self, now_s: float, awaiting_replan: bool = False
    ) -> tuple[list[tuple[Waiting, Pipeline]], list[Waiting]]:
        """Admit waiting requests in order until one does not fit.

        Returns (admitted with their pipelines, unservable): a head request that does not fit while the
        scheduler has nothing in flight can never be admitted and is removed as unservable — or, while
        `awaiting_replan`, waits for the new plan.
        """
        admitted: list[tuple[Waiting, Pipeline]] = []
        unservable: list[Waiting] = []
        while self.waiting:
            head = self.waiting[0]
            pipeline = self.scheduler.admit(
                head.request_id, head.prompt_tokens, head.expected_output_tokens, now_s
            )
            if pipeline is None:
                if self.scheduler.active or awaiting_replan:
                    break
                unservable.append(self.waiting.popleft())
                continue
            admitted.append((self.waiting.popleft(), pipeline))
        return admitted, unservable


def should_feed(scheduler: Scheduler, high_water: float) -> bool:
    """Offline feeding rule: start another request iff the expected-KV bottleneck is ≤ `high_water`."""
    return scheduler.kv_bottleneck_usage() <= high_water
