"""Build and run the whole serving system: plan → scheduler → Ray workers → coordinator → health.

`ServingRuntime.start(options)` resolves the model (tokenizer, context window), loads the cluster and the
plan (or plans on start with `helix.placement.plan`), builds the scheduler's `Topology` from the plan
(the same code the simulator uses, with the plan's chaining rule: with partial overlap a worker runs
only the suffix of its range a route needs, Helix's layer skip) with each node's KV capacity replaced
by what its worker really allocated, starts one Ray actor per used node, wires their ZeroMQ sockets,
and starts the coordinator and a health monitor that reports dead workers to it; the coordinator then
re-routes around them on the topology the same `TopologySource` rebuilds on the survivors
(`helix.scheduling.recovery`).

Addressing: a local run (no `ray_address`) binds and advertises loopback only. Joining a cluster, each
worker advertises its Ray node's IP and the coordinator advertises `advertise_host` (default: the Ray
node IP of this process), binding all interfaces; every socket is CURVE-authenticated with keys made
for this deployment (`helix.runtime.keys`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helix.engine.loader import resolve_model
from helix.errors import HelixInputError
from helix.perf.base import CapacityModel
from helix.placement.plan_io import Plan, check_plan_matches, load_plan
from helix.runtime.coordinator import Coordinator, CoordinatorConfig
from helix.runtime.deploy import Deployment, HealthMonitor, WorkerSpec, start_ray
from helix.runtime.emulation import EMULATION_MODES, StepTimer, capacity_model, slowdowns, step_timers
from helix.runtime.keys import WireKeys
from helix.runtime.kv_capacity import real_kv_token_layers
from helix.runtime.process_tree import ProcessTree
from helix.runtime.stage_backend import StageConfig
from helix.runtime.tp_node import tp_size_for
from helix.scheduling import KVParameters, Topology, create_scheduler
from helix.scheduling.recovery import TopologySource
from helix.specs.cluster import ClusterSpec
from helix.specs.loading import load_cluster
from helix.specs.model import ModelSpec, load_model_spec, model_from_hf_config
from helix.specs.placement import Placement


@dataclass(frozen=True)
class ServeOptions:
    """Everything `helix serve` needs. `devices`: node → torch device (default ``cpu``); a list such as
    ``cuda:0,1``, or else the node type's GPU count, sets its tensor-parallel ranks (`tp_node`).

    `emulation` (when `emulate`): ``relative`` or ``profile`` (see `helix.runtime.emulation`);
    `relative_scale` ≥ 1 stretches every relative slowdown (the fastest type's steps then take that many
    times its measured compute: on a small host, CPU left over for the other workers).
    """

    model: str
    cluster: str
    plan: str | None = None
    placement: Placement | None = None  # an explicit placement (the demo's) instead of a plan file
    ray_address: str | None = None
    advertise_host: str | None = None  # address workers reach the coordinator at (default: Ray node IP)
    emulate: bool = True
    emulation: str = "relative"
    relative_scale: float = 1.0
    scheduler: str = "maxflow"
    plan_method: str = "milp"
    plan_time_limit_s: float = 20.0
    devices: dict[str, str] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    kv_cache_bytes: int = 128 << 20
    max_model_len: int = 2048
    max_waiting: int = 64
    liveness_timeout_s: float = 5.0  # a worker silent this long is declared gone and routed around
    threads_per_worker: int = 1
    seed: int = 0
    kv_params: KVParameters = KVParameters(expected_kv_hwm=0.9, expected_output_length_ratio=0.6)


class ServingRuntime:
    """A running deployment: `coordinator`, `tokenizer`, `deployment`, `health` (see module docstring)."""

    def __init__(
        self,
        options: ServeOptions,
        model_name: str,
        tokenizer: Any,
        plan: Plan,
        deployment: Deployment,
        coordinator: Coordinator,
        health: HealthMonitor,
        topology: Topology,
        slowdown: dict[str, float],
    ) -> None:
        self.options = options
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.plan = plan
        self.deployment = deployment
        self.coordinator = coordinator
        self.health = health
        self.topology = topology
        self.slowdown = slowdown
        self.started_at_s = time.time()
        self.control_plane_lost: str | None = None
        self.process_tree = ProcessTree()  # stopped by PID when Ray's control plane is lost
        self.on_shutdown: list[Callable[[str], None]] = []  # called when the deployment must stop

    @classmethod
    def start(
        cls, options: ServeOptions, progress: Callable[[str, str], None] | None = None
    ) -> ServingRuntime:
        """Start everything; `progress(part, status)` hears of each step (`part` is a worker or "runtime")."""
        report = progress or (lambda part, status: None)
        report("runtime", "loading the model's config and tokenizer")
        resolved = resolve_model(options.model)
        tokenizer = resolved.tokenizer()
        spec = _model_spec(options.model, resolved.hf_config)
        cluster = load_cluster(options.cluster)
        capacity = capacity_model(cluster, spec)
        plan = _plan(options, cluster, spec, capacity)
        factors, timers = worker_emulation(options, cluster, capacity, plan.placement)
        report("runtime", "starting Ray")
        start_ray(options.ray_address)
        report("runtime", f"starting {len(plan.placement)} workers")
        specs = [
            WorkerSpec(
                name,
                StageConfig(
                    options.model,
                    r.start,
                    r.end,
                    options.devices.get(name, "cpu"),
                    options.dtype,
                    options.kv_cache_bytes,
                    options.max_model_len,
                    options.threads_per_worker,
                    tp_size=tp_size_for(cluster.node(name), options.devices.get(name, "cpu")),
                ),
                factors.get(name, 1.0),
                require_node_resource=options.ray_address is not None,
                step_timer=timers.get(name),
            )
            for name, r in plan.placement.items()
        ]
        keys = WireKeys.generate()
        deployment = Deployment(specs, keys, progress)
        real_kv = real_kv_token_layers(deployment.info, plan.placement)
        source = TopologySource(cluster, spec, plan.placement, capacity, plan.partial_overlap, real_kv)
        topology = source.surviving()
        scheduler = create_scheduler(
            options.scheduler, topology, options.kv_params, random.Random(options.seed)
        )
        eos = tuple(sorted({*resolved.config.eos_token_ids, *_tokenizer_eos(tokenizer)}))
        max_len = min(options.max_model_len, *(i["max_model_len"] for i in deployment.info.values()))
        coordinator = Coordinator(
            scheduler,
            deployment.addresses,
            CoordinatorConfig(max_len, eos, options.max_waiting),
            _coordinator_host(options),
            keys=keys,
            topology_source=source,
        )
        coordinator.start()
        report("runtime", "wiring workers to the coordinator")
        deployment.start(coordinator.address)
        report("runtime", "ready")
        health = HealthMonitor(
            deployment, coordinator.worker_gone, liveness_timeout_s=options.liveness_timeout_s
        )
        runtime = cls(
            options, resolved.name, tokenizer, plan, deployment, coordinator, health, topology, factors
        )
        health.on_control_plane_lost = runtime._on_control_plane_lost
        runtime.process_tree.record()  # the local Ray this process started, if any, and its workers
        health.start()
        return runtime

    def _on_control_plane_lost(self, reason: str) -> None:
        """Ray's GCS is gone: fail what is in flight, kill this host's workers by PID, tell listeners."""
        self.control_plane_lost = reason
        self.coordinator.fail_all(f"the deployment is shutting down: {reason}")
        time.sleep(0.2)  # let the coordinator emit the errors
        self.deployment.kill_local_processes()
        self.process_tree.kill()  # what is left of a local Ray (agents outlive their raylet)
        for listener in self.on_shutdown:
            listener(reason)

    def shutdown(self) -> None:
        self.health.stop()
        self.coordinator.close()
        if self.control_plane_lost is None:
            self.deployment.shutdown()
        else:  # Ray cannot stop actors without its control plane
            self.deployment.kill_local_processes()
            self.process_tree.kill()

    def describe(self) -> dict[str, Any]:
        """Plan, routes and emulation factors (for logs and the demo)."""
        return {
            "model": self.model_name,
            "cluster": self.plan.cluster_name,
            "method": self.plan.method,
            "placement": self.plan.placement.as_pairs(),
            "emulation": self.options.emulation if self.options.emulate else "off",
            "slowdown": self.slowdown,
            "max_flow_tokens_per_s": self.topology.max_flow_tokens_per_s,
            "scheduler": self.options.scheduler,
            "addresses": {**self.deployment.addresses, "coordinator": self.coordinator.address},
            # CURVE server keys are public by design: a client also needs the deployment's client secret
            "wire_server_key": self.deployment.keys.server_public if self.deployment.keys else None,
            "tensor_parallel": {
                n: s.stage.tp_size for n, s in self.deployment.specs.items() if s.stage.tp_size > 1
            },
        }


def _coordinator_host(options: ServeOptions) -> str:
    """Where workers send results: loopback for a local run, else the advertised or Ray node address."""
    if options.ray_address is None:
        return options.advertise_host or "127.0.0.1"
    if options.advertise_host:
        return options.advertise_host
    import ray

    return ray.util.get_node_ip_address()


def worker_emulation(
    options: ServeOptions,
    cluster: ClusterSpec,
    capacity: CapacityModel,
    placement: Placement,
    layers: int | None = None,
) -> tuple[dict[str, float], dict[str, StepTimer]]:
    """Per node of `placement`: relative slowdowns × `relative_scale` (relative mode; GPU types compared
    at `layers`, default the placement's `reference_layers`) or step timers (profile mode); none when
    off. The deployment's first workers and those of every re-plan (`helix.runtime.elastic`) get theirs
    here."""
    if not options.emulate:
        return {}, {}
    if options.emulation not in EMULATION_MODES:
        raise HelixInputError(
            f"unknown emulation {options.emulation!r}",
            field="--emulation",
            fix=f"use one of {EMULATION_MODES}",
        )
    if options.emulation == "profile":
        return {}, step_timers(cluster, capacity, placement)
    if not options.relative_scale >= 1.0:
        raise HelixInputError(
            f"relative emulation scale {options.relative_scale} is below 1",
            field="relative_scale",
            fix="use a scale of at least 1 (1 = the fastest type at this host's own speed)",
        )
    slow = slowdowns(cluster, capacity, placement, layers)
    return {n: options.relative_scale * s for n, s in slow.items()}, {}


def _model_spec(model: str, hf_config: dict[str, Any]) -> ModelSpec:
    try:
        return load_model_spec(model)
    except HelixInputError:
        return model_from_hf_config(hf_config, name=str(hf_config.get("_name_or_path") or model))


def _plan(options: ServeOptions, cluster: ClusterSpec, spec: ModelSpec, capacity: CapacityModel) -> Plan:
    if options.placement is not None:
        plan = Plan(options.placement, spec.name, spec.num_layers, cluster.name, cluster.node_names, "given")
    elif options.plan is not None:
        plan = load_plan(options.plan)
    else:
        from helix.placement import PlannerOptions
        from helix.placement import plan as make_plan

        result = make_plan(
            cluster,
            spec,
            PlannerOptions(method=options.plan_method, time_limit_s=options.plan_time_limit_s),
            capacity,
        )
        plan = Plan(
            result.placement,
            spec.name,
            spec.num_layers,
            cluster.name,
            cluster.node_names,
            result.method,
            max_flow_tokens_per_s=result.flow_tokens_per_s,
        )
    check_plan_matches(plan, cluster, spec, where=options.plan or "plan")
    return plan


def _tokenizer_eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [eos] if isinstance(eos, int) else []
