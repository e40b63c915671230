"""Elastic membership of a running deployment: re-plan in the background after a lost worker, join a
node, drain a node — make-before-break, then an atomic switch (`helix.scheduling.replan`).

Every membership change (a worker the health monitor declared gone, `join(node)`, `drain(node)`) is
handled in order by one background thread:

1. `helix.scheduling.replan.replan` plans the live members warm-started from the placement served.
2. Make-before-break: every node whose range changes (or that joins) gets a *new* worker actor, named
   ``<node>.g<generation>``, that loads the new range (from disk) while the old worker keeps serving;
   unchanged workers learn the new workers' addresses.
3. The switch, on the coordinator's thread (`Coordinator.switch_plan`): the scheduler is rebuilt on the
   new plan; requests on unchanged workers go on, the others re-prefill on the new plan, first in line.
4. Break: the old workers of changed or drained nodes are taken off the health monitor and stopped.

The scheduler sees worker *instances*: node names in its topology are instance names (the cluster spec
renamed, `helix.specs.membership.rename`), so routes, fencing and failure handling stay per instance.
A drain stops nothing before the switch: the node serves until the new plan takes traffic, then its
requests move — none fails. Each change is recorded in `history` (times, layers and bytes loaded).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from helix.errors import HelixInputError
from helix.runtime.deploy import Deployment, WorkerSpec
from helix.runtime.emulation import slowdowns, step_timers
from helix.runtime.stage_backend import StageConfig
from helix.runtime.tp_node import tp_size_for
from helix.scheduling.recovery import TopologySource
from helix.scheduling.replan import Replan, ReplanSettings, replan
from helix.specs.membership import rename, restrict
from helix.specs.placement import Placement

KV_BLOCK_TOKENS = 16  # the workers' KV block size (tokens)
# a worker loads its range once: a changed range is a new worker loading all of it
RUNTIME_REPLAN = ReplanSettings(move_weight=0.01, time_limit_s=5.0, partial_reuse=False)


@dataclass(frozen=True)
class MembershipChange:
    kind: str  # fail | join | drain
    node: str
    at_s: float


class ElasticController:
    """Membership of a `ServingRuntime` (module docstring). Thread-safe: `join`, `drain`, `status`."""

    def __init__(self, runtime, settings: ReplanSettings = RUNTIME_REPLAN) -> None:
        from helix.runtime.emulation import capacity_model
        from helix.specs.loading import load_cluster

        self.runtime = runtime
        self.settings = settings
        self.cluster = load_cluster(runtime.options.cluster)
        self.model = runtime.coordinator.topology_source.model
        self.capacity = capacity_model(self.cluster, self.model)
        self.placement: Placement = runtime.plan.placement  # by node name
        self.instances = {n: n for n in self.placement}  # node → serving worker instance
        self.members = set(self.placement)
        self.generation = 0
        self.history: list[dict[str, Any]] = []
        self.busy = False
        self._events: queue.SimpleQueue[MembershipChange | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        on_gone = runtime.health.on_gone
        runtime.health.on_gone = lambda name, reason: (on_gone(name, reason), self._lost(name))
        self._thread = threading.Thread(target=self._run, name="helix-elastic", daemon=True)
        self._thread.start()

    # ---- API ----
    def join(self, node: str) -> None:
        """Plan `node` (a node of the cluster spec not serving now) in."""
        self._check(node)
        if node in self.members:
            raise HelixInputError(
                f"node {node!r} already serves", field="node", fix="name a node not serving"
            )
        self._events.put(MembershipChange("join", node, time.time()))

    def drain(self, node: str) -> None:
        """Re-plan without `node`; its requests move at the switch (none fails); then its worker stops."""
        self._check(node)
        if node not in self.members:
            raise HelixInputError(f"node {node!r} does not serve", field="node", fix="name a serving node")
        if len(self.members) == 1:
            raise HelixInputError("cannot drain the last node", field="node", fix="join another node first")
        self._events.put(MembershipChange("drain", node, time.time()))

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "members": sorted(self.members),
                "placement": self.placement.as_pairs(),
                "instances": dict(self.instances),
                "replanning": self.busy,
                "history": list(self.history),
            }

    def close(self) -> None:
        self._events.put(None)
        self._thread.join(timeout=5)

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.busy and self._events.empty():
                return True
            time.sleep(0.05)
        return False

    # ---- background ----
    def _check(self, node: str) -> None:
        if node not in self.cluster.node_names:
            raise HelixInputError(
                f"unknown node {node!r}", field="node", fix=f"use one of {', '.join(self.cluster.node_names)}"
            )

    def _lost(self, instance: str) -> None:
        node = next((n for n, i in self.instances.items() if i == instance), None)
        if node is not None:
            self._events.put(MembershipChange("fail", node, time.time()))

    def _run(self) -> None:
        while True:
            change = self._events.get()
            if change is None:
                return
            self.busy = True
            try:
                self._apply(change)
            except Exception as exc:  # a failed re-plan leaves the old plan serving
                with self._lock:
                    self.history.append({"kind": change.kind, "node": change.node, "error": str(exc)})
            finally:
                self.busy = False

    def _apply(self, change: MembershipChange) -> None:
        before = set(self.members)
        members = before | {change.node} if change.kind == "join" else before - {change.node}
        if change.kind == "fail":
            with self._lock:
                self.instances.pop(change.node, None)
        new = replan(self.cluster, members, self.model, self.capacity, self.placement, before, self.settings)
        planned_at = time.time()
        self.generation += 1
        loading = {
            n: r for n, r in new.placement.items() if self.placement.get(n) != r or n not in self.instances
        }
        started, load_s = self._start_workers(new, loading)
        loaded_at = time.time()
        old_instances = dict(self.instances)
        instances = {n: old_instances[n] for n in new.placement if n not in loading}
        instances.update({n: spec.name for n, spec in started.items()})
        source = self._source(members, new.placement, instances)
        changed = {old_instances[n] for n in old_instances if n in loading or n not in new.placement}
        result = self.runtime.coordinator.switch_plan(source, changed, self.runtime.deployment.addresses)
        switched_at = time.time()
        with self._lock:
            self.placement, self.instances, self.members = new.placement, instances, members
        retired = [old_instances[n] for n in old_instances if instances.get(n) != old_instances[n]]
        self._retire(retired)
        self._record(change, new, planned_at, loaded_at, switched_at, load_s, result)

    def _start_workers(self, new: Replan, loading: dict) -> tuple[dict[str, WorkerSpec], float]:
        """New actors for the nodes that load a range; returns their specs and the load wall time."""
        if not loading:
            return {}, 0.0
        rt = self.runtime
        opts = rt.options
        live = restrict(self.cluster, new.members)
        factors = slowdowns(live, self.capacity, new.placement) if opts.emulate else {}
        timers = (
            step_timers(live, self.capacity, new.placement)
            if opts.emulate and opts.emulation == "profile"
            else {}
        )
        specs = {}
        for node, r in loading.items():
            stage = StageConfig(
                opts.model,
                r.start,
                r.end,
                opts.devices.get(node, "cpu"),
                opts.dtype,
                opts.kv_cache_bytes,
                opts.max_model_len,
                opts.threads_per_worker,
                tp_size=tp_size_for(self.cluster.node(node), opts.devices.get(node, "cpu")),
            )
            specs[node] = WorkerSpec(
                f"{node}.g{self.generation}",
                stage,
                factors.get(node, 1.0) if opts.emulation != "profile" else 1.0,
                require_node_resource=opts.ray_address is not None,
                step_timer=timers.get(node),
                resource_node=node,
            )
        started = time.perf_counter()
        fresh = Deployment(list(specs.values()), rt.deployment.keys)
        load_s = time.perf_counter() - started
        dep = rt.deployment
        fresh.start(rt.coordinator.address)  # knows the coordinator and the other new workers
        refs = [a.add_peers.remote(dict(dep.addresses)) for a in fresh.actors.values()]
        refs += [a.add_peers.remote(dict(fresh.addresses)) for a in dep.actors.values()]
        for ref in refs:  # every worker knows every peer before the switch routes through them
            try:
                dep._ray.get(ref, timeout=60)
            except Exception:  # a dead actor: the health monitor reports it
                pass
        dep.adopt(fresh)
        return specs, load_s

    def _source(self, members: set[str], placement: Placement, instances: dict[str, str]) -> TopologySource:
        rt = self.runtime
        live = rename(restrict(self.cluster, members), instances)
        view = Placement({instances[n]: r for n, r in placement.items()})
        kv = {
            inst: rt.deployment.info[inst]["kv_blocks"] * KV_BLOCK_TOKENS * view[inst].num_layers
            for inst in view
            if inst in rt.deployment.info
        }
        return replace(
            rt.coordinator.topology_source, cluster=live, placement=view, kv_capacity_token_layers=kv
        )

    def _retire(self, instances: list[str]) -> None:
        """Break: take the old workers off the health monitor, then stop them."""
        dep = self.runtime.deployment
        actors = [dep.actors.pop(i) for i in instances if i in dep.actors]
        time.sleep(0.5)  # frees and late results of moved requests drain first
        for actor in actors:
            try:
                dep._ray.kill(actor, no_restart=True)
            except Exception:
                pass

    def _record(self, change, new: Replan, planned_at, loaded_at, switched_at, load_s, result) -> None:
        loads = new.loads
        with self._lock:
            self.history.append(
                {
                    "kind": change.kind,
                    "node": change.node,
                    "event_at_s": change.at_s,
                    "plan_s": planned_at - change.at_s,
                    "load_s": load_s,
                    "switch_at_s": switched_at,
                    "time_to_new_plan_s": switched_at - change.at_s,
                    "moved_layers": new.moved_layers,
                    "moved_bytes": new.moved_layers * self.model.layer_weight_bytes,
                    "loads": loads,
                    "placement": new.placement.as_pairs(),
                    "flow_tokens_per_s": new.result.flow_tokens_per_s,
                    "requests_moved": result.get("moved", 0),
                    "requests_kept": result.get("kept", 0),
                }
            )
