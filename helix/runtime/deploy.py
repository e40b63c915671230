"""Ray: start or join a cluster, place one worker actor per planned node, watch their health.

Placement on a real cluster: every Ray node that should host plan node ``n3`` is started with the custom
resource ``helix_node_n3`` (``ray start --address HEAD:6379 --resources '{"helix_node_n3": 1}'``), and
the worker for ``n3`` requires one unit of it, so Ray puts it there. Without an address a local Ray
starts and every worker runs on this machine (CPU, or a named CUDA device).

Actors reserve ``num_cpus=0`` (they would never start beyond a small local `ray.init(num_cpus=...)`);
a worker pinned to ``cuda:<i>`` sets ``CUDA_VISIBLE_DEVICES=<i>`` itself before touching CUDA.
Health: `Deployment.check()` asks every actor for its stats with a timeout; an actor that died (Ray
reports it) or whose step loop stopped is reported with the reason; one that is merely slow to answer
is counted in `unresponsive`, not declared dead.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helix.runtime.actor import WorkerActor
from helix.runtime.emulation import StepTimer
from helix.runtime.stage_backend import StageConfig, pin_device

NODE_RESOURCE_PREFIX = "helix_node_"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker to start: plan node `name`, its stage, its emulation (relative slowdown or profile step
    timer, see `helix.runtime.emulation`), and Ray placement."""

    name: str
    stage: StageConfig
    slowdown: float = 1.0
    require_node_resource: bool = False
    step_timer: StepTimer | None = None


def start_ray(address: str | None, *, num_cpus: int = 2) -> None:
    """Join `address` (``auto`` or ``host:port``), or start a small local Ray."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)


def node_resource(name: str) -> str:
    return f"{NODE_RESOURCE_PREFIX}{name}"


class Deployment:
    """The worker actors of a plan: creation, wiring, health checks, shutdown."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        import ray

        self._ray = ray
        remote_cls = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=4)(_PinnedWorkerActor)
        self.specs = {s.name: s for s in specs}
        self.actors: dict[str, Any] = {}
        for spec in specs:
            options: dict[str, Any] = {}
            if spec.require_node_resource:
                options["resources"] = {node_resource(spec.name): 0.01}
            if spec.stage.device == "cuda":
                options["num_gpus"] = 1
            self.actors[spec.name] = remote_cls.options(**options).remote(
                spec.name,
                spec.stage,
                spec.slowdown,
                "" if spec.require_node_resource else "127.0.0.1",
                spec.step_timer,
            )
        self.unresponsive: dict[str, int] = {}  # consecutive health checks without an answer
        self.info = dict(
            zip(self.actors, ray.get([a.info.remote() for a in self.actors.values()]), strict=True)
        )
        self.addresses = {name: info["address"] for name, info in self.info.items()}

    def start(self, coordinator_address: str) -> None:
        peers = {**self.addresses, "coordinator": coordinator_address}
        self._ray.get([actor.start.remote(peers) for actor in self.actors.values()])

    def check(self, timeout_s: float = 5.0) -> dict[str, str]:
        """Workers that are gone, with the reason (empty when all are healthy)."""
        refs = {name: actor.stats.remote() for name, actor in self.actors.items()}
        gone: dict[str, str] = {}
        ready, _ = self._ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        ready_set = set(ready)
        self.last_stats: dict[str, dict[str, Any]] = {}
        for name, ref in refs.items():
            if ref not in ready_set:  # busy (e.g. a long step on an overloaded host), not dead
                self.unresponsive[name] = self.unresponsive.get(name, 0) + 1
                continue
            self.unresponsive.pop(name, None)
            try:
                self.last_stats[name] = self._ray.get(ref)
            except Exception as exc:  # RayActorError and friends: the actor died
                gone[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return gone

    def kill(self, name: str) -> None:
        """Kill one worker (failure drills and tests)."""
        self._ray.kill(self.actors[name], no_restart=True)

    def shutdown(self) -> None:
        for actor in self.actors.values():
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors.clear()


class HealthMonitor:
    """Checks the deployment every `interval_s`; reports each newly gone worker once."""

    def __init__(
        self, deployment: Deployment, on_gone: Callable[[str, str], None], interval_s: float = 0.5
    ) -> None:
        self.deployment = deployment
        self.on_gone = on_gone
        self.interval_s = interval_s
        self.gone: dict[str, str] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helix-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            gone = self.deployment.check()
            self.stats = dict(getattr(self.deployment, "last_stats", {}))
            for name, reason in gone.items():
                if name not in self.gone:
                    self.gone[name] = reason
                    self.on_gone(name, reason)


class _PinnedWorkerActor(WorkerActor):
    """A worker actor that pins itself to ``cuda:<i>`` through CUDA_VISIBLE_DEVICES before loading."""

    def __init__(
        self,
        name: str,
        stage: StageConfig,
        slowdown: float = 1.0,
        advertise_host: str = "",
        step_timer: StepTimer | None = None,
    ) -> None:
        stage = pin_device(stage)
        super().__init__(name, stage, slowdown, advertise_host, step_timer)


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout_s` passes (tests and drills)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
