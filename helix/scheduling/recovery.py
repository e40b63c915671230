"""Recovery from lost nodes, shared by the simulator and the runtime; and the membership-event trace.

When nodes are lost (a worker died, or stopped answering for longer than the liveness timeout):

1. `TopologySource.surviving(lost)` rebuilds the scheduler's `Topology` on the survivors: the
   placement restricted to them, its max flow recomputed (`helix.flow.maxflow.evaluate_placement`), and
   so the IWRR weights of every sender (the max-flow values of its out-edges) come from the new flow.
   Real KV capacities measured at deployment (`kv_capacity_token_layers`) are kept.
2. `recover(scheduler, source, lost, now_s)` builds a fresh scheduler of the same kind on that topology
   and decides, for every request the old scheduler had admitted:
   - *keep*: its pipeline touches no lost node and all its edges still exist: it is carried over
     (same route, its expected KV registered again, its IWRR choices re-indexed) and goes on untouched;
   - *resume*: its pipeline touched a lost node: its KV on surviving nodes must be freed and it must be
     re-admitted first (front of the admission queue, in admission order) and re-prefill prompt + the
     tokens generated so far on a surviving pipeline (`helix.scheduling.preemption.requeue_front`).
   `RecoveryDecision.has_pipeline` is false when no complete pipeline survives (then nothing can be
   served: /health answers 503).

The membership trace drives the simulator (and failure drills): a list of `MembershipEvent`
``{time_s, kind, node}`` with kind ``fail`` (the node is lost at `time_s`, handled as above), ``join``
or ``drain``. `load_membership_events` parses and validates such a list (JSON/YAML-shaped dicts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from helix.errors import HelixInputError
from helix.flow.graph import FlowOptions
from helix.flow.maxflow import evaluate_placement
from helix.perf.base import CapacityModel
from helix.scheduling.base import Route, Scheduler
from helix.scheduling.topology import Topology
from helix.specs.cluster import COORDINATOR, ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement

MEMBERSHIP_KINDS = ("fail", "join", "drain")


@dataclass(frozen=True)
class TopologySource:
    """Everything needed to (re)build a `Topology` for any set of live nodes.

    `kv_capacity_token_layers`: per node, a KV capacity that replaces the capacity model's (the runtime
    passes what each worker really allocated).
    """

    cluster: ClusterSpec
    model: ModelSpec
    placement: Placement
    capacity: CapacityModel
    partial_overlap: bool = True
    kv_capacity_token_layers: Mapping[str, int] | None = None

    def surviving(self, lost: Collection[str] = ()) -> Topology:
        """The topology of the placement without the `lost` nodes (max flow recomputed on survivors)."""
        kept = Placement({n: r for n, r in self.placement.items() if n not in lost})
        if len(kept) == 0:
            return _empty_topology(self.model.num_layers, self.cluster)
        flow = evaluate_placement(
            self.cluster, self.model, kept, self.capacity, FlowOptions(partial_overlap=self.partial_overlap)
        )
        topology = Topology.build(
            self.cluster, self.model, kept, self.capacity, flow, partial_overlap=self.partial_overlap
        )
        if self.kv_capacity_token_layers:
            limits = {
                n: dataclasses.replace(lim, kv_capacity_token_layers=self.kv_capacity_token_layers[n])
                for n, lim in topology.limits.items()
                if n in self.kv_capacity_token_layers
            }
            topology = dataclasses.replace(topology, limits={**topology.limits, **limits})
        return topology


@dataclass(frozen=True)
class RecoveryDecision:
    """What to do after losing `lost` (see the module docstring)."""

    topology: Topology
    lost: frozenset[str]
    keep: tuple[Hashable, ...]
    resume: tuple[Hashable, ...]

    @property
    def has_pipeline(self) -> bool:
        return has_pipeline(self.topology)


def has_pipeline(topology: Topology) -> bool:
    """True when at least one complete pipeline (positive max flow) exists."""
    return topology.max_flow_tokens_per_s > 0 and any(
        hop.flow_tokens_per_s > 0 for hop in topology.next_hops.get(COORDINATOR, ())
    )


def recover(
    scheduler: Scheduler, source: TopologySource, lost: Collection[str], now_s: float = 0.0
) -> tuple[Scheduler, RecoveryDecision]:
    """A new scheduler on the survivors of `lost`, with the intact requests carried over, and the
    decision of which admitted requests must resume elsewhere (in admission order)."""
    lost_set = frozenset(lost)
    topology = source.surviving(lost_set)
    fresh = type(scheduler)(topology, scheduler.kv.params, scheduler.rng, kv_admission=scheduler.kv_admission)
    keep: list[Hashable] = []
    resume: list[Hashable] = []
    for request_id, route in scheduler.active.items():
        choices = None if lost_set & set(route.pipeline.nodes) else _reindex(topology, route)
        if choices is None:
            resume.append(request_id)
            continue
        fresh.active[request_id] = Route(route.pipeline, route.expected_tokens, choices, route.admitted_s)
        fresh.kv.register(route.pipeline, route.expected_tokens)
        keep.append(request_id)
    return fresh, RecoveryDecision(topology, lost_set, tuple(keep), tuple(resume))


def _reindex(topology: Topology, route: Route) -> tuple[tuple[str, int], ...] | None:
    """The route's (sender, next-hop index) choices in `topology`, or None if an edge is gone."""
    ends = [COORDINATOR, *route.pipeline.nodes, COORDINATOR]
    choices = []
    for sender, dst in zip(ends, ends[1:], strict=False):
        hops = topology.next_hops.get(sender, ())
        index = next((k for k, hop in enumerate(hops) if hop.dst == dst), None)
        if index is None:
            return None
        choices.append((sender, index))
    return tuple(choices)


def _empty_topology(num_layers: int, cluster: ClusterSpec) -> Topology:
    return Topology(
        num_layers, {}, {}, {}, {COORDINATOR: ()}, 0.0, {COORDINATOR: cluster.coordinator_nic_bytes_per_s}
    )


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """At `time_s` (seconds from the start of traffic), node `node` fails, joins or drains."""

    time_s: float
    kind: str
    node: str


def load_membership_events(
    raw: Sequence[Mapping[str, Any]], known_nodes: Collection[str], where: str = "membership trace"
) -> list[MembershipEvent]:
    """Validate a list of ``{time_s, kind, node}`` dicts; returns events sorted by time (stable)."""
    events: list[MembershipEvent] = []
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise HelixInputError(
            "expected a list of events", where=where, fix="write [{time_s, kind, node}, ...]"
        )
    for i, item in enumerate(raw):
        field = f"[{i}]"
        if not isinstance(item, Mapping):
            raise HelixInputError(
                "an event must be a mapping", where=where, field=field, fix="{time_s, kind, node}"
            )
        extra = set(item) - {"time_s", "kind", "node"}
        if extra:
            raise HelixInputError(
                f"unknown keys {sorted(extra)}",
                where=where,
                field=field,
                fix="use only time_s, kind and node",
            )
        try:
            time_s = float(item["time_s"])
        except (KeyError, TypeError, ValueError):
            raise HelixInputError(
                "time_s is missing or not a number", where=where, field=f"{field}.time_s", fix="seconds >= 0"
            ) from None
        if not time_s >= 0:
            raise HelixInputError(
                f"time_s {time_s} is negative", where=where, field=f"{field}.time_s", fix=">= 0"
            )
        kind = item.get("kind")
        if kind not in MEMBERSHIP_KINDS:
            raise HelixInputError(
                f"unknown kind {kind!r}",
                where=where,
                field=f"{field}.kind",
                fix=f"use one of {MEMBERSHIP_KINDS}",
            )
        node = item.get("node")
        if node not in known_nodes:
            raise HelixInputError(
                f"unknown node {node!r}",
                where=where,
                field=f"{field}.node",
                fix=f"use a node of the cluster ({', '.join(sorted(known_nodes))})",
            )
        events.append(MembershipEvent(time_s, str(kind), str(node)))
    return sorted(events, key=lambda e: e.time_s)
