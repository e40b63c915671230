"""Elastic membership in the simulator: the re-plan and switch of `helix.scheduling.replan`, with
modelled planning and load times.

On a membership event (``fail`` after its immediate re-route, ``join``, ``drain``) the live members
change and a re-plan starts from the placement being served. The new plan takes traffic after the
planning time (`ElasticSim.plan_time_s`, or the planner's measured wall time when None) plus the
loads (`Replan.load_s`: per node a start-up plus layers it must newly load × layer bytes /
`ReplanSettings.load_bytes_per_s`; the slowest node, or the total over `load_parallel` loaders);
until then the old plan serves (make-before-break). A later event supersedes a pending switch and
re-plans from what is served. At the switch, requests on changed nodes re-prefill on the new plan
(`helix.scheduling.replan.switch`); nodes that join start serving, drained nodes stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from helix.perf.base import CapacityModel
from helix.scheduling.recovery import MembershipEvent
from helix.scheduling.replan import Replan, ReplanSettings, replan, switch, with_placement
from helix.scheduling.topology import node_limits
from helix.sim.core import EventKind
from helix.specs.cluster import ClusterSpec
from helix.specs.membership import restrict

if TYPE_CHECKING:
    from helix.sim.simulator import Simulator


@dataclass(frozen=True)
class ElasticSim:
    """Re-plan settings of a simulation. `cluster` is the full spec (nodes that may join included)."""

    cluster: ClusterSpec
    settings: ReplanSettings = ReplanSettings()
    plan_time_s: float | None = None


@dataclass(frozen=True)
class _Switch:
    generation: int
    replan: Replan
    trigger: MembershipEvent
    started_s: float


@dataclass
class ElasticState:
    """The simulator's membership: live members, the pending switch, and the record of re-plans."""

    spec: ElasticSim
    capacity: CapacityModel
    members: set[str]
    generation: int = 0
    replans: list[dict[str, Any]] = field(default_factory=list)
    pending: bool = False  # a re-plan is scheduled and has not taken traffic yet
    changing: bool = False  # an event is being applied (its re-plan not scheduled yet)

    @property
    def awaiting(self) -> bool:
        """A new plan is coming: waiting requests wait for it (`AdmissionQueue.retry`)."""
        return self.pending or self.changing

    def on_event(self, sim: Simulator, now_s: float, event: MembershipEvent) -> None:
        try:
            self._apply(sim, now_s, event)
        finally:
            self.changing = False

    def _apply(self, sim: Simulator, now_s: float, event: MembershipEvent) -> None:
        if event.kind == "fail":
            self.members.discard(event.node)
        elif event.kind == "join":
            if event.node in self.members:
                return
            self.members.add(event.node)
            sim.lost.discard(event.node)
        else:  # drain
            if event.node not in self.members:
                return
            self.members.discard(event.node)
        self._start(sim, now_s, event)

    def _start(self, sim: Simulator, now_s: float, trigger: MembershipEvent) -> None:
        served = sim.topology_source.placement
        if trigger.kind == "join":
            before = set(self.members) - {trigger.node}
        else:
            before = set(self.members) | {trigger.node}
        new = replan(
            self.spec.cluster, self.members, sim.model, self.capacity, served, before, self.spec.settings
        )
        plan_s = new.plan_s if self.spec.plan_time_s is None else self.spec.plan_time_s
        new = replace(new, plan_s=plan_s)
        self.generation += 1
        self.pending = True
        ready_s = now_s + new.ready_after_s(sim.model, self.spec.settings)
        sim.loop.schedule(ready_s, EventKind.MEMBERSHIP, _Switch(self.generation, new, trigger, now_s))

    def on_switch(self, sim: Simulator, now_s: float, pending: _Switch) -> None:
        if pending.generation != self.generation:
            return  # superseded by a later event
        self.pending = False
        new = pending.replan
        flow_before = sim.scheduler.topology.max_flow_tokens_per_s
        live = restrict(self.spec.cluster, self.members)
        source = with_placement(sim.topology_source, live, new.placement)
        changed = new.changed
        sim.topology_source = source
        sim.scheduler, decision = switch(sim.scheduler, source, changed, now_s)
        sim.queue.scheduler = sim.scheduler
        moved = 0
        for q in reversed(decision.resume):
            if q.dead or q.qid not in sim.in_flight:
                continue
            moved += 1
            sim._requeue(q, now_s)
        topo = sim.scheduler.topology
        for name in changed | set(topo.ranges):
            node = sim.nodes[sim.index[name]]
            if name in topo.ranges and (name in changed or node.dead):
                r = topo.ranges[name]
                node.num_layers = r.num_layers
                node.limits = topo.limits[name]
                node.kv_capacity = float(topo.limits[name].kv_capacity_token_layers)
                node.pending, node.ready, node.dead = [], [], False
            elif name not in topo.ranges:
                node.dead, node.pending, node.ready = True, [], []
        sim.rebuild_network()
        sim.rec.count("requests_moved", moved)
        sim._admit_waiting(now_s)
        self.replans.append(
            {
                "trigger": {
                    "time_s": pending.trigger.time_s,
                    "kind": pending.trigger.kind,
                    "node": pending.trigger.node,
                },
                "event_s": pending.started_s - sim.start_s,
                "switch_s": now_s - sim.start_s,
                "time_to_new_plan_s": now_s - pending.started_s,
                "plan_s": new.plan_s,
                "load_s": new.load_s(sim.model, self.spec.settings),
                "moved_layers": new.moved_layers,
                "moved_bytes": new.moved_layers * sim.model.layer_weight_bytes,
                "requests_moved": moved,
                "flow_before_tokens_per_s": flow_before,
                "flow_after_tokens_per_s": topo.max_flow_tokens_per_s,
                "placement": new.placement.as_pairs(),
            }
        )


def extra_nodes(cluster: ClusterSpec, placed: set[str], capacity: CapacityModel) -> dict[str, tuple]:
    """Nodes of the spec outside the first plan: (gpu, limits for one layer) to build idle sim nodes."""
    out = {}
    for node in cluster.nodes:
        if node.name not in placed:
            out[node.name] = (node.gpu.name, node_limits(capacity, node.gpu.name, 1))
    return out


def throughput_series(return_times_s: list[float], start_s: float, end_s: float, bin_s: float) -> dict:
    """Tokens returned to the coordinator per second, in bins of `bin_s` from `start_s`."""
    times = np.asarray(return_times_s, float) - start_s
    edges = np.arange(0.0, end_s - start_s + bin_s, bin_s)
    counts, _ = np.histogram(times, bins=edges)
    return {"t_s": edges[:-1].tolist(), "tokens_per_s": (counts / bin_s).tolist(), "bin_s": bin_s}


def elastic_settings(cluster: ClusterSpec, move_weight: float, load_gbps: float) -> ElasticSim:
    """CLI flags → `ElasticSim` (checked)."""
    from helix.errors import HelixInputError

    if not load_gbps > 0:
        raise HelixInputError("must be > 0", field="--load-gbps", fix="give the read speed in Gbit/s")
    if not move_weight >= 0:
        raise HelixInputError("must be >= 0", field="--move-weight", fix="use a fraction such as 0.001")
    return ElasticSim(cluster, ReplanSettings(move_weight=move_weight, load_bytes_per_s=load_gbps * 1.25e8))


def write_membership_plot(result: dict[str, Any], path, extra: dict[str, dict] | None = None):
    """Throughput over time with membership events (dashed) and plan switches (dotted); `extra`: more
    labelled series {label: {"t_s", "tokens_per_s"}} (e.g. the runtime's) on the same axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    series = {"simulator": result["elastic"]["throughput"], **(extra or {})}
    for label, s in series.items():
        ax.plot(s["t_s"], s["tokens_per_s"], label=label, drawstyle="steps-post")
    colors = {"fail": "tab:red", "join": "tab:green", "drain": "tab:orange"}
    for rp in result["elastic"]["replans"]:
        kind = rp["trigger"]["kind"]
        ax.axvline(rp["event_s"], color=colors[kind], ls="--", lw=1)
        ax.axvline(rp["switch_s"], color=colors[kind], ls=":", lw=1)
        ax.annotate(f"{kind} {rp['trigger']['node']}", (rp["event_s"], ax.get_ylim()[1] * 0.95), fontsize=7)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tokens/s")
    ax.set_title("throughput over time (dashed: event, dotted: new plan takes traffic)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
