"""The scheduler interface shared by the simulator and the runtime, and the scheduler registry.

A scheduler is pure logic: it sees the placed cluster (`Topology`), KV parameters and an RNG, and is
driven by calls carrying time as an argument. The life of a request:

1. ``admit(request_id, prompt_tokens, expected_output_tokens, now_s) -> Pipeline | None``: choose the
   request's route hop by hop from the coordinator back to it (with KV admission when enabled) and
   register its expected KV. ``None`` means "cannot admit now": the caller queues it (online) or drops
   it (offline); no state changes in that case.
2. ``on_stage_done(request_id, hop_index, now_s)``: the prompt finished on hop `hop_index` (only
   schedulers with ``wants_stage_events`` need it: shortest-queue and swarm).
3. ``on_tokens(request_id, num_tokens, now_s)``: decode tokens were issued along the pinned route.
4. ``release(request_id, now_s)``: the request finished or was cancelled; its expected KV is freed.

``kv_bottleneck_usage()`` drives offline feeding (feed while it is under a high-water mark).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from helix.errors import HelixInputError
from helix.scheduling.kv import KVExpectation, KVParameters
from helix.scheduling.pipeline import Hop, Pipeline
from helix.scheduling.topology import NextHop, Topology
from helix.specs.cluster import COORDINATOR

Choice = tuple[str, int]  # (sender, index into topology.next_hops[sender])


@dataclass(frozen=True, slots=True)
class Route:
    """An admitted request: its pipeline, expected KV per layer, and the choice made at each sender."""

    pipeline: Pipeline
    expected_tokens: int
    choices: tuple[Choice, ...]
    admitted_s: float


class Scheduler(ABC):
    """Base class: the hop-by-hop walk, KV bookkeeping and the request lifecycle."""

    name: ClassVar[str] = ""
    kv_admission_default: ClassVar[bool] = False
    wants_stage_events: ClassVar[bool] = False

    def __init__(
        self,
        topology: Topology,
        kv_params: KVParameters | None = None,
        rng: random.Random | None = None,
        *,
        kv_admission: bool | None = None,
    ) -> None:
        self.topology = topology
        capacities = {n: lim.kv_capacity_token_layers for n, lim in topology.limits.items()}
        self.kv = KVExpectation(topology.ranges, capacities, topology.num_layers, kv_params or KVParameters())
        self.rng = rng if rng is not None else random.Random(0)
        self.kv_admission = self.kv_admission_default if kv_admission is None else kv_admission
        self.active: dict[Hashable, Route] = {}

    def admit(
        self,
        request_id: Hashable,
        prompt_tokens: int,
        expected_output_tokens: int | None = None,
        now_s: float = 0.0,
    ) -> Pipeline | None:
        """Choose and register a route, or return None (nothing changed) if none can take it now."""
        if request_id in self.active:
            raise ValueError(f"request {request_id!r} is already admitted")
        expected = self.kv.params.expected_tokens(prompt_tokens, expected_output_tokens)
        self._before_admit(now_s)
        rng_state = self.rng.getstate()  # a rejected admission must not move the RNG either
        sender, prev_end = COORDINATOR, 0
        hops: list[Hop] = []
        choices: list[Choice] = []
        while True:
            candidates = self.topology.next_hops[sender]
            mask = [
                self._allowed(sender, k, hop, prompt_tokens, expected) for k, hop in enumerate(candidates)
            ]
            if not any(mask):
                self._undo(choices, prompt_tokens)
                self.rng.setstate(rng_state)
                return None
            k = self._choose(sender, candidates, mask, prompt_tokens, now_s)
            choices.append((sender, k))
            dst = candidates[k].dst
            if dst == COORDINATOR:
                break
            end = self.topology.ranges[dst].end
            hops.append(Hop(dst, prev_end, end))
            sender, prev_end = dst, end
        pipeline = Pipeline(tuple(hops))
        self.kv.register(pipeline, expected)
        route = Route(pipeline, expected, tuple(choices), now_s)
        self.active[request_id] = route
        self._on_admitted(request_id, route, now_s)
        return pipeline

    def _allowed(self, sender: str, k: int, hop: NextHop, prompt_tokens: int, expected: int) -> bool:
        if hop.dst == COORDINATOR:
            return True
        if prompt_tokens > self.topology.limits[hop.dst].max_prompt_tokens:
            return False
        return not self.kv_admission or self.kv.can_admit(hop.dst, expected)

    @abstractmethod
    def _choose(
        self,
        sender: str,
        candidates: Sequence[NextHop],
        mask: Sequence[bool],
        prompt_tokens: int,
        now_s: float,
    ) -> int:
        """Index of the next hop among `candidates` (at least one is masked in)."""

    def _before_admit(self, now_s: float) -> None:  # noqa: B027 - optional hook
        pass

    def _undo(self, choices: Sequence[Choice], prompt_tokens: int) -> None:  # noqa: B027
        pass

    def _on_admitted(self, request_id: Hashable, route: Route, now_s: float) -> None:  # noqa: B027
        pass

    def on_stage_done(self, request_id: Hashable, hop_index: int, now_s: float) -> None:  # noqa: B027
        """The prompt of `request_id` finished on hop `hop_index` at `now_s`."""

    def on_tokens(self, request_id: Hashable, num_tokens: int = 1, now_s: float = 0.0) -> None:  # noqa: B027
        """`num_tokens` decode iterations were issued along the request's pinned route."""

    def release(self, request_id: Hashable, now_s: float = 0.0) -> None:
        """The request finished or was cancelled: free its expected KV. Unknown ids are ignored."""
        route = self.active.pop(request_id, None)
        if route is not None:
            self.kv.release(route.pipeline, route.expected_tokens)
            self._on_released(request_id, route, now_s)

    def _on_released(self, request_id: Hashable, route: Route, now_s: float) -> None:  # noqa: B027
        pass

    def kv_bottleneck_usage(self) -> float:
        return self.kv.bottleneck_usage()


SCHEDULERS: dict[str, type[Scheduler]] = {}


def register_scheduler(cls: type[Scheduler]) -> type[Scheduler]:
    """Class decorator adding a scheduler to `SCHEDULERS` under `cls.name` (duplicates raise)."""
    if not cls.name or cls.name in SCHEDULERS:
        raise ValueError(f"scheduler name {cls.name!r} is empty or already registered")
    SCHEDULERS[cls.name] = cls
    return cls


def create_scheduler(
    name: str,
    topology: Topology,
    kv_params: KVParameters | None = None,
    rng: random.Random | None = None,
    *,
    kv_admission: bool | None = None,
) -> Scheduler:
    """A registered scheduler by name (``maxflow``, ``random``, ``shortest-queue``, ``swarm``)."""
    import helix.scheduling.baselines  # noqa: F401  (registers the built-in schedulers)
    import helix.scheduling.maxflow  # noqa: F401

    if name not in SCHEDULERS:
        raise HelixInputError(
            f"unknown scheduler {name!r}", field="scheduler", fix=f"use one of {sorted(SCHEDULERS)}"
        )
    return SCHEDULERS[name](topology, kv_params, rng, kv_admission=kv_admission)
