"""Elastic membership: re-plan around a lost, joined or drained node, make-before-break; shared by the
simulator and the runtime.

1. `replan` plans the live members warm-started from the placement being served
   (`helix.placement.warm_start`: flow traded for moved layers by ``move_weight``) and says, per node,
   which layers it must newly load (``loads``) — bytes from disk or a peer.
2. While the nodes load (`load_times_s`), the old plan keeps serving: a node holds its old range until
   its new one is resident (make-before-break; memory for both is assumed, see docs).
3. `switch` moves traffic to the new plan at once: a fresh scheduler on the new topology; every admitted
   request whose pipeline touches no changed node (range changed, or node gone) is carried over on its
   route, the others re-prefill prompt + generated tokens on the new plan, first in the queue
   (`helix.scheduling.recovery.RecoveryDecision.resume`, as after a failure). No request fails.

A drain is a re-plan without the node: the node serves until the switch, then its requests move.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Hashable
from dataclasses import dataclass, replace

from helix.perf.base import CapacityModel
from helix.placement.planner import plan
from helix.placement.result import PlannerOptions, PlanResult
from helix.placement.warm_start import WarmStart
from helix.scheduling.base import Route, Scheduler
from helix.scheduling.recovery import RecoveryDecision, TopologySource, _reindex
from helix.specs.cluster import ClusterSpec
from helix.specs.membership import restrict
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement


@dataclass(frozen=True)
class ReplanSettings:
    """How to re-plan: warm-start move weight, planner time limit, and how long a node takes to load:
    ``load_fixed_s + layers · layer bytes / load_bytes_per_s`` for a node with something to load (the
    fixed part: starting a worker process; `helix.runtime.elastic.LoadCalibration` measures both)."""

    move_weight: float = 1e-3
    time_limit_s: float = 5.0
    load_bytes_per_s: float = 1e9  # disk (or peer) read speed of new layers
    load_fixed_s: float = 0.0  # per loading node, whatever its layer count (a worker's start-up)
    load_parallel: int | None = None  # loads that run at full speed at once (None: every node its own)
    partial_reuse: bool = True  # False: a node whose range changes reloads all of it (the runtime)


@dataclass(frozen=True)
class Replan:
    """A new plan for `members`, and what each node must load to serve it."""

    members: tuple[str, ...]
    previous: Placement
    placement: Placement
    result: PlanResult
    plan_s: float
    partial_reuse: bool = True

    @property
    def loads(self) -> dict[str, int]:
        """node → layers it must newly load (only nodes with something to load)."""
        out = {}
        for node, r in self.placement.items():
            old = self.previous.get(node)
            overlap = 0 if old is None else max(0, min(r.end, old.end) - max(r.start, old.start))
            if not self.partial_reuse and old != r:
                overlap = 0
            if r.num_layers - overlap:
                out[node] = r.num_layers - overlap
        return out

    @property
    def moved_layers(self) -> int:
        return sum(self.loads.values())

    @property
    def changed(self) -> frozenset[str]:
        """Nodes whose range changes or that leave the plan (their requests move at the switch)."""
        gone = {n for n in self.previous if n not in self.placement}
        moved = {n for n, r in self.placement.items() if self.previous.get(n) != r}
        return frozenset(gone | moved)

    def load_times_s(self, model: ModelSpec, settings: ReplanSettings) -> dict[str, float]:
        per_layer_s = model.layer_weight_bytes / settings.load_bytes_per_s
        return {n: settings.load_fixed_s + k * per_layer_s for n, k in self.loads.items()}

    def load_s(self, model: ModelSpec, settings: ReplanSettings) -> float:
        """Until every node has loaded: the slowest node's load, or, when the loads share
        `ReplanSettings.load_parallel` loaders (e.g. the cores of one host emulating the cluster),
        at least their total work over that many."""
        times = self.load_times_s(model, settings)
        slowest = max(times.values(), default=0.0)
        if settings.load_parallel is None:
            return slowest
        return max(slowest, sum(times.values()) / settings.load_parallel)

    def ready_after_s(self, model: ModelSpec, settings: ReplanSettings) -> float:
        """Planning plus loading (`load_s`): when the new plan can take traffic."""
        return self.plan_s + self.load_s(model, settings)


def replan(
    cluster: ClusterSpec,
    members: Collection[str],
    model: ModelSpec,
    capacity: CapacityModel,
    previous: Placement,
    previous_members: Collection[str],
    settings: ReplanSettings = ReplanSettings(),
) -> Replan:
    """Warm-started plan of the live `members` of `cluster` from `previous`."""
    live = restrict(cluster, members)
    warm = WarmStart(previous, tuple(sorted(previous_members)), settings.move_weight, settings.partial_reuse)
    started = time.perf_counter()
    result = plan(live, model, PlannerOptions(time_limit_s=settings.time_limit_s, warm_start=warm), capacity)
    elapsed = time.perf_counter() - started
    return Replan(tuple(sorted(members)), previous, result.placement, result, elapsed, settings.partial_reuse)


def switch(
    scheduler: Scheduler, source: TopologySource, changed: Collection[str], now_s: float = 0.0
) -> tuple[Scheduler, RecoveryDecision]:
    """A fresh scheduler on `source`'s placement; requests that touch no `changed` node keep their route."""
    changed_set = frozenset(changed)
    topology = source.surviving(())
    fresh = type(scheduler)(topology, scheduler.kv.params, scheduler.rng, kv_admission=scheduler.kv_admission)
    keep: list[Hashable] = []
    resume: list[Hashable] = []
    for request_id, route in scheduler.active.items():
        nodes = set(route.pipeline.nodes)
        choices = (
            None if nodes & changed_set or not nodes <= set(topology.ranges) else _reindex(topology, route)
        )
        if choices is None:
            resume.append(request_id)
            continue
        fresh.active[request_id] = Route(route.pipeline, route.expected_tokens, choices, route.admitted_s)
        fresh.kv.register(route.pipeline, route.expected_tokens)
        keep.append(request_id)
    return fresh, RecoveryDecision(topology, changed_set, tuple(keep), tuple(resume))


def with_placement(source: TopologySource, cluster: ClusterSpec, placement: Placement) -> TopologySource:
    """`source` for a new plan on `cluster` (the live members)."""
    kv = source.kv_capacity_token_layers
    if kv:
        kv = {n: c for n, c in kv.items() if placement.get(n) == source.placement.get(n)}
    return replace(source, cluster=cluster, placement=placement, kv_capacity_token_layers=kv or None)
