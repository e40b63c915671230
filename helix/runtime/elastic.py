"""Elastic membership of a running deployment: re-plan in the background after a lost worker, join a
node, drain a node — make-before-break, then an atomic switch (`helix.scheduling.replan`).

Every membership change (a worker the health monitor declared gone, `join(node)`, `drain(node)`, or a
new Ray node advertising ``helix_node_<node>`` for a node of the cluster spec not serving now, looked
for every `JOIN_POLL_S`: its worker is then placed on that Ray node) is handled in order by one
background thread:

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
from helix.runtime.emulation import reference_layers
from helix.runtime.kv_capacity import real_kv_token_layers
from helix.runtime.service import worker_emulation
from helix.runtime.stage_backend import StageConfig
from helix.runtime.tp_node import tp_size_for
from helix.scheduling.recovery import TopologySource
from helix.scheduling.replan import Replan, ReplanSettings, replan
from helix.specs.membership import rename, restrict
from helix.specs.placement import Placement

# a worker loads its range once: a changed range is a new worker loading all of it
# make-before-break: the old plan serves while new workers load, so a move costs time, not service
RUNTIME_REPLAN = ReplanSettings(move_weight=0.005, time_limit_s=5.0, partial_reuse=False)
MIN_PER_LAYER_S = 1e-3  # the least load time per layer a calibration reports
JOIN_POLL_S = 1.0  # how often new Ray nodes advertising a plan node are looked for


def advertised_nodes(names) -> set[tuple[str, str]]:
    """(Ray node id, plan node) for every live Ray node advertising ``helix_node_<plan node>`` of `names`."""
    import ray

    from helix.runtime.deploy import NODE_RESOURCE_PREFIX

    wanted = set(names)
    out = set()
    for ray_node in ray.nodes():
        if not ray_node.get("Alive"):
            continue
        for resource in ray_node.get("Resources", {}):
            name = resource.removeprefix(NODE_RESOURCE_PREFIX)
            if resource.startswith(NODE_RESOURCE_PREFIX) and name in wanted:
                out.add((ray_node["NodeID"], name))
    return out


@dataclass(frozen=True)
class LoadCalibration:
    """How long this deployment takes to bring up a worker of k layers, measured on workers of several
    sizes and fitted as ``wall(k) = fixed_s + k · per_layer_s`` (least squares): the simulator's load
    model (`ReplanSettings.load_fixed_s`; ``load_bytes_per_s`` = layer bytes / ``per_layer_s``)."""

    points: tuple[tuple[int, float], ...]  # (layers, wall seconds from creation to ready)
    fixed_s: float
    per_layer_s: float
    layer_bytes: int

    @classmethod
    def fit(cls, points: list[tuple[int, float]], layer_bytes: int) -> LoadCalibration:
        ks = [float(k) for k, _ in points]
        walls = [w for _, w in points]
        mean_k, mean_w = sum(ks) / len(ks), sum(walls) / len(walls)
        spread = sum((k - mean_k) ** 2 for k in ks)
        slope = (
            sum((k - mean_k) * (w - mean_w) for k, w in zip(ks, walls, strict=True)) / spread if spread else 0
        )
        slope = max(slope, MIN_PER_LAYER_S)  # noise can tilt a flat fit below zero
        return cls(tuple(points), max(0.0, mean_w - slope * mean_k), slope, layer_bytes)

    def settings(self, base: ReplanSettings, parallel: int | None = None) -> ReplanSettings:
        """`base` with this load model; `parallel`: loads at once at full speed (a host's cores)."""
        return replace(
            base,
            load_fixed_s=self.fixed_s,
            load_bytes_per_s=self.layer_bytes / self.per_layer_s,
            load_parallel=parallel,
        )


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
        # relative emulation: every node keeps its GPU type's factor of the first plan (`slowdowns`)
        self._reference_layers = reference_layers(self.placement)
        self.instances = {n: n for n in self.placement}  # node → serving worker instance
        self.members = set(self.placement)
        self._intended = set(self.members)  # members once the queued changes are applied
        self.generation = 0
        self.history: list[dict[str, Any]] = []
        self.busy = False
        self._outstanding = 0  # changes queued or being applied (under the lock)
        self._events: queue.SimpleQueue[MembershipChange | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        on_gone = runtime.health.on_gone
        # the change is queued before the coordinator hears of the loss, so it never sees a lost
        # pipeline without the re-plan that replaces it (`awaiting`)
        runtime.health.on_gone = lambda name, reason: (self._lost(name), on_gone(name, reason))
        runtime.coordinator.awaiting_replan = self.awaiting
        self._ray_nodes_seen = set(advertised_nodes(self.cluster.node_names))  # (Ray node, plan node)
        self._on_own_ray_node: set[str] = set()  # plan nodes whose worker needs their Ray node's resource
        self._thread = threading.Thread(target=self._run, name="helix-elastic", daemon=True)
        self._thread.start()

    # ---- API ----
    def join(self, node: str) -> None:
        """Plan `node` (a node of the cluster spec not serving now) in."""
        self._check(node)
        with self._lock:
            if node in self._intended:
                raise HelixInputError(
                    f"node {node!r} already serves", field="node", fix="name a node not serving"
                )
            self._enqueue(MembershipChange("join", node, time.time()))

    def drain(self, node: str) -> None:
        """Re-plan without `node`; its requests move at the switch (none fails); then its worker stops."""
        self._check(node)
        with self._lock:
            if node not in self._intended:
                raise HelixInputError(
                    f"node {node!r} does not serve", field="node", fix="name a serving node"
                )
            if len(self._intended) == 1:
                raise HelixInputError(
                    "cannot drain the last node", field="node", fix="join another node first"
                )
            self._enqueue(MembershipChange("drain", node, time.time()))

    def _enqueue(self, change: MembershipChange) -> None:
        """Queue `change` (under the lock); `_intended` is the membership once every queued change is
        applied, which a later `join` or `drain` is checked against."""
        if change.kind == "join":
            self._intended.add(change.node)
        else:
            self._intended.discard(change.node)
        self._outstanding += 1
        self._events.put(change)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "members": sorted(self.members),
                "placement": self.placement.as_pairs(),
                "instances": dict(self.instances),
                "replanning": self.busy,
                "history": list(self.history),
            }

    def awaiting(self) -> bool:
        """A membership change is queued or being applied: its new plan has not taken traffic yet."""
        return self._outstanding > 0

    def close(self) -> None:
        self._events.put(None)
        self._thread.join(timeout=5)

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.awaiting():
                return True
            time.sleep(0.05)
        return False

    def calibrate_load(self, node: str, layer_counts: tuple[int, ...] = (1, 10)) -> LoadCalibration:
        """Start (then stop) one worker like `node`'s per entry of `layer_counts` (layers [0, k)), one at a
        time, and fit their start-up times (`LoadCalibration`)."""
        self._check(node)
        opts = self.runtime.options
        device = opts.devices.get(node, "cpu")
        tp = tp_size_for(self.cluster.node(node), device)
        remote = opts.ray_address is not None
        points = []
        for k in layer_counts:
            if not 1 <= k <= self.model.num_layers:
                raise HelixInputError(
                    f"{k} layers", field="layer_counts", fix=f"use 1..{self.model.num_layers}"
                )
            stage = StageConfig(
                opts.model,
                0,
                k,
                device,
                opts.dtype,
                opts.kv_cache_bytes,
                opts.max_model_len,
                opts.threads_per_worker,
                tp_size=tp,
            )
            spec = WorkerSpec(
                f"{node}.calibration{k}", stage, require_node_resource=remote, resource_node=node
            )
            started = time.perf_counter()
            probe = Deployment([spec], self.runtime.deployment.keys)
            points.append((k, time.perf_counter() - started))
            probe.shutdown()
        return LoadCalibration.fit(points, self.model.layer_weight_bytes)

    # ---- background ----
    def _check(self, node: str) -> None:
        if node not in self.cluster.node_names:
            raise HelixInputError(
                f"unknown node {node!r}", field="node", fix=f"use one of {', '.join(self.cluster.node_names)}"
            )

    def _lost(self, instance: str) -> None:
        node = next((n for n, i in self.instances.items() if i == instance), None)
        if node is not None:
            with self._lock:
                self._enqueue(MembershipChange("fail", node, time.time()))

    def _detect_joins(self) -> None:
        """A Ray node that appeared since the last look and advertises ``helix_node_<name>`` of a node of
        the cluster spec not serving now: join it (its worker goes to that Ray node)."""
        try:
            advertised = advertised_nodes(self.cluster.node_names)
        except Exception:  # Ray's control plane did not answer: look again later
            return
        for ray_node, node in sorted(advertised - self._ray_nodes_seen, key=lambda pair: pair[1]):
            self._ray_nodes_seen.add((ray_node, node))
            with self._lock:
                if node not in self._intended:
                    self._on_own_ray_node.add(node)
                    self._enqueue(MembershipChange("join", node, time.time()))

    def _run(self) -> None:
        while True:
            try:
                change = self._events.get(timeout=JOIN_POLL_S)
            except queue.Empty:
                self._detect_joins()
                continue
            if change is None:
                return
            self.busy = True
            try:
                self._apply(change)
            except Exception as exc:  # a failed re-plan leaves the old plan serving
                with self._lock:
                    self.history.append({"kind": change.kind, "node": change.node, "error": str(exc)})
                    if change.kind == "join":  # not planned in: it may be joined again
                        self._intended.discard(change.node)
                    elif change.kind == "drain":  # still serving
                        self._intended.add(change.node)
            finally:
                self.busy = False
                with self._lock:
                    self._outstanding -= 1

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
        factors, timers = worker_emulation(
            opts, self.cluster, self.capacity, new.placement, self._reference_layers
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
                factors.get(node, 1.0),
                require_node_resource=opts.ray_address is not None or node in self._on_own_ray_node,
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
        info = {inst: rt.deployment.info[inst] for inst in view if inst in rt.deployment.info}
        kv = real_kv_token_layers(info, dict(view.items()))
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
