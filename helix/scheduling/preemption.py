"""KV preemption: what a node does when a running request needs a KV block and none is free.

Admission is optimistic (it expects prompt + r · max_tokens tokens, `helix.scheduling.kv`), so a node can
run out of real KV while its requests grow. Instead of failing a request, the node *preempts*: it frees
the KV of the most recently admitted requests it holds until the blocked request fits, as vLLM does in
recompute mode. A preempted request is not lost: it goes back to the **front** of the admission queue
with its context = prompt + the tokens generated so far, and resumes by re-prefilling that context on
whatever pipeline admits it next (its output continues where it stopped).

The rule (`choose_victims`), with each request's *admission number* (a counter that grows with every
admission, re-admissions included, so larger = admitted later):

1. only requests admitted after the blocked one can be victims, newest first;
2. take them until the KV they free covers the shortfall;
3. if all of them together do not cover it, preempt the blocked request itself instead (and nobody else).

After a preemption new admissions wait until some running request releases its KV (`AdmissionHold`):
otherwise the request just put back would be admitted again at once into the same full cache.

The runtime's workers (`helix.runtime.worker`, units = KV blocks) and the simulator's nodes
(`helix.sim.simulator`, units = token×layer) call the same functions, and count preemptions the same
way: one per victim whose KV is freed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from helix.scheduling.admission import AdmissionQueue, Waiting


@dataclass(frozen=True, slots=True)
class Resident:
    """A request holding KV on a node: its id, admission number, and the KV it holds (any unit)."""

    request_id: Hashable
    admission: int
    units: float


def choose_victims(
    residents: Iterable[Resident], blocked_id: Hashable, blocked_admission: int, shortfall: float
) -> list[Hashable]:
    """The requests to preempt so that `blocked_id` gets `shortfall` more units (see the module docstring).

    `residents` may include the blocked request (it is skipped as a victim of rule 1). Returns [] when
    nothing is short, else either newer residents (newest first) or ``[blocked_id]``.
    """
    if shortfall <= 0:
        return []
    newer = sorted(
        (r for r in residents if r.request_id != blocked_id and r.admission > blocked_admission),
        key=lambda r: r.admission,
        reverse=True,
    )
    victims: list[Hashable] = []
    freed = 0.0
    for resident in newer:
        victims.append(resident.request_id)
        freed += resident.units
        if freed >= shortfall:
            return victims
    return [blocked_id]


def requeue_front(
    queue: AdmissionQueue,
    request_id: Hashable,
    context_tokens: int,
    remaining_output_tokens: int | None,
    now_s: float,
) -> None:
    """Put a preempted (or re-routed) request back at the head of `queue`: it is re-admitted first, with
    its whole context (prompt + generated tokens) as the prompt to re-prefill."""
    queue.waiting.appendleft(Waiting(request_id, context_tokens, remaining_output_tokens, now_s))
    queue.max_waiting = max(queue.max_waiting, len(queue.waiting))


class AdmissionHold:
    """After a preemption, hold admissions until a running request releases KV (see module docstring).

    `preempted()` sets the hold; `released()` (a request finished or was cancelled: its KV is free on
    every node of its pipeline) lifts it;
    `may_admit(num_active)` is true when not held or when nothing is running (nothing would release).
    """

    def __init__(self) -> None:
        self.held = False
        self.preemptions = 0

    def preempted(self, count: int = 1) -> None:
        self.preemptions += count
        self.held = True

    def released(self) -> None:
        self.held = False

    def may_admit(self, num_active: int) -> bool:
        return not self.held or num_active == 0
