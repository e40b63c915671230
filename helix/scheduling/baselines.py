"""Baseline schedulers (serving.md §1.7) behind the same interface: random, shortest-queue, swarm.

All fix a request's route when it is admitted and let decodes follow it. Helix's baselines pick each hop
locally at transmission time; here the walk happens at admission with the same local rule at each hop
(the information used is the same per-sender state, taken a little earlier). They have no KV admission by
default (as in Helix); pass ``kv_admission=True`` to mask out nodes whose expected KV is full.

- ``random``: uniform among allowed next hops.
- ``shortest-queue``: among allowed next hops, those with the fewest prompts routed to them and not yet
  finished there (the coordinator counts 0); ties broken uniformly at random.
- ``swarm``: per sender, an EMA of the observed stage time of each out-edge (init ε = 0.05 s, γ = 0.8) and
  a priority per edge (init ε); choose the least priority p, then p += EMA. The stage time of a hop is the
  time from the prompt leaving the upstream node to finishing on this one (network + queue + compute).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from helix.scheduling.base import Choice, Route, Scheduler, register_scheduler
from helix.scheduling.topology import NextHop
from helix.specs.cluster import COORDINATOR

SWARM_EPSILON_S = 0.05
SWARM_GAMMA = 0.8


@register_scheduler
class RandomScheduler(Scheduler):
    name = "random"

    def _choose(
        self,
        sender: str,
        candidates: Sequence[NextHop],
        mask: Sequence[bool],
        prompt_tokens: int,
        now_s: float,
    ) -> int:
        return self.rng.choice([k for k, ok in enumerate(mask) if ok])


@register_scheduler
class ShortestQueueScheduler(Scheduler):
    name = "shortest-queue"
    wants_stage_events = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queued_prompts: dict[str, int] = {name: 0 for name in self.topology.ranges}
        self._unfinished: dict[Hashable, list[str]] = {}

    def _choose(
        self,
        sender: str,
        candidates: Sequence[NextHop],
        mask: Sequence[bool],
        prompt_tokens: int,
        now_s: float,
    ) -> int:
        allowed = [k for k, ok in enumerate(mask) if ok]
        lengths = [
            0 if candidates[k].dst == COORDINATOR else self.queued_prompts[candidates[k].dst] for k in allowed
        ]
        shortest = min(lengths)
        return self.rng.choice([k for k, n in zip(allowed, lengths, strict=True) if n == shortest])

    def _on_admitted(self, request_id: Hashable, route: Route, now_s: float) -> None:
        for hop in route.pipeline.hops:
            self.queued_prompts[hop.node] += 1
        self._unfinished[request_id] = [hop.node for hop in route.pipeline.hops]

    def on_stage_done(self, request_id: Hashable, hop_index: int, now_s: float) -> None:
        nodes = self._unfinished.get(request_id)
        if nodes is not None and nodes[hop_index]:
            self.queued_prompts[nodes[hop_index]] -= 1
            nodes[hop_index] = ""

    def _on_released(self, request_id: Hashable, route: Route, now_s: float) -> None:
        for node in self._unfinished.pop(request_id, []):
            if node:
                self.queued_prompts[node] -= 1


@register_scheduler
class SwarmScheduler(Scheduler):
    name = "swarm"
    wants_stage_events = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ema_s = {s: [SWARM_EPSILON_S] * len(h) for s, h in self.topology.next_hops.items()}
        self.priority = {s: [SWARM_EPSILON_S] * len(h) for s, h in self.topology.next_hops.items()}
        self._left_upstream_s: dict[Hashable, float] = {}
        self._charged: list[tuple[str, int, float]] = []  # (sender, k, priority before) this admission

    def _before_admit(self, now_s: float) -> None:
        self._charged.clear()

    def _undo(self, choices: Sequence[Choice], prompt_tokens: int) -> None:
        """A rejected admission leaves the priorities exactly as they were."""
        for sender, k, before in reversed(self._charged):
            self.priority[sender][k] = before
        self._charged.clear()

    def _choose(
        self,
        sender: str,
        candidates: Sequence[NextHop],
        mask: Sequence[bool],
        prompt_tokens: int,
        now_s: float,
    ) -> int:
        priority = self.priority[sender]
        best = min((k for k, ok in enumerate(mask) if ok), key=lambda k: (priority[k], k))
        self._charged.append((sender, best, priority[best]))
        priority[best] += self.ema_s[sender][best]
        return best

    def _on_admitted(self, request_id: Hashable, route: Route, now_s: float) -> None:
        self._left_upstream_s[request_id] = now_s
        self._charged.clear()

    def on_stage_done(self, request_id: Hashable, hop_index: int, now_s: float) -> None:
        route = self.active.get(request_id)
        left = self._left_upstream_s.get(request_id)
        if route is None or left is None:
            return
        sender, k = route.choices[hop_index]
        ema = self.ema_s[sender]
        ema[k] = SWARM_GAMMA * (now_s - left) + (1 - SWARM_GAMMA) * ema[k]
        self._left_upstream_s[request_id] = now_s

    def _on_released(self, request_id: Hashable, route: Route, now_s: float) -> None:
        self._left_upstream_s.pop(request_id, None)
