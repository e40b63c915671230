"""Ray: start or join a cluster, place one worker actor per planned node, watch their health.

Placement on a real cluster: every Ray node that should host plan node ``n3`` is started with the custom
resource ``helix_node_n3`` (``ray start --address HEAD:6379 --resources '{"helix_node_n3": 1}'``), and
the worker for ``n3`` requires one unit of it, so Ray puts it there. Without an address a local Ray
starts and every worker runs on this machine (CPU, or a named CUDA device).

Security: the deployment's CURVE keys (`helix.runtime.keys`) reach the actors as constructor arguments,
through Ray; so Ray's own authentication guards them. Joining a cluster leaves Ray's authentication as
the cluster has it (set ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` where you run ``ray start`` and
``helix serve``); a local Ray started here uses token authentication with a fresh random token, held
only in this process's environment (inherited by the Ray processes it starts).

Actors reserve ``num_cpus=0`` (they would never start beyond a small local `ray.init(num_cpus=...)`);
a worker pinned to ``cuda:<i>`` sets ``CUDA_VISIBLE_DEVICES=<i>`` itself before touching CUDA.
Health: `HealthMonitor` keeps one heartbeat (a `stats` call) outstanding per actor. A worker is declared
gone, with the reason, when Ray reports its actor dead, when its step loop stopped, when its heartbeat
has gone unanswered for `liveness_timeout_s` (a hung or stopped process: well under the coordinator's
stall timeout), or when it has had batches waiting without finishing a step for `step_timeout_s` (step
progress: a step loop that hangs in a process that still answers). A worker answering again later
stays gone (the coordinator has fenced it).
When Ray's GCS stops answering for `control_plane_timeout_s` (well before Ray itself would abort the
driver), the monitor reports it once through `on_control_plane_lost` and stops.
`Deployment.check()` is a one-shot version with a timeout (slow answers are counted in `unresponsive`).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helix.runtime.actor import WorkerActor
from helix.runtime.emulation import StepTimer
from helix.runtime.keys import WireKeys
from helix.runtime.stage_backend import StageConfig, pin_device

NODE_RESOURCE_PREFIX = "helix_node_"
LOCAL_START_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker to start: plan node `name`, its stage, its emulation (relative slowdown or profile step
    timer, see `helix.runtime.emulation`), and Ray placement."""

    name: str
    stage: StageConfig
    slowdown: float = 1.0
    require_node_resource: bool = False
    step_timer: StepTimer | None = None
    resource_node: str = ""  # plan node whose Ray resource places it (default: `name`)


def start_ray(address: str | None, *, num_cpus: int = 2) -> None:
    """Join `address` (``auto`` or ``host:port``) with the cluster's own authentication, or start a small
    local Ray with token authentication (a random token unless ``RAY_AUTH_TOKEN`` is set)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        return
    if "RAY_AUTH_MODE" not in os.environ:
        _enable_local_token_auth()
    for attempt in range(LOCAL_START_ATTEMPTS):  # a loaded host can miss Ray's fixed 30 s raylet wait
        try:
            ray.init(  # "local": a new instance, never a `ray start` cluster found on this machine
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
            return
        except Exception:
            ray.shutdown()  # stops what this attempt started
            if attempt + 1 == LOCAL_START_ATTEMPTS:
                raise
            time.sleep(5.0)


def _enable_local_token_auth() -> None:
    """Token authentication for the local Ray about to start, with a random token kept in the environment
    (never written to ``~/.ray``, which other Ray users of this machine share)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:  # Ray reads its configuration once, when it is imported: make it read the environment again
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # other Ray versions read the environment at ray.init
        pass


def node_resource(name: str) -> str:
    return f"{NODE_RESOURCE_PREFIX}{name}"


class Deployment:
    """The worker actors of a plan: creation, wiring, health checks, shutdown."""

    def __init__(
        self,
        specs: list[WorkerSpec],
        keys: WireKeys | None = None,
        progress: Callable[[str, str], None] | None = None,
    ) -> None:
        """`progress(worker, status)` hears of each worker as it is created and as it becomes ready."""
        import ray

        report = progress or (lambda name, status: None)
        self._ray = ray
        self.keys = keys
        remote_cls = ray.remote(num_cpus=0, max_restarts=0, max_concurrency=4)(_PinnedWorkerActor)
        self.specs = {s.name: s for s in specs}
        self.actors: dict[str, Any] = {}
        for spec in specs:
            options: dict[str, Any] = {}
            if spec.require_node_resource:
                options["resources"] = {node_resource(spec.resource_node or spec.name): 0.01}
            if spec.stage.device == "cuda":
                options["num_gpus"] = spec.stage.tp_size
            self.actors[spec.name] = remote_cls.options(**options).remote(
                spec.name,
                spec.stage,
                spec.slowdown,
                "" if spec.require_node_resource else "127.0.0.1",
                spec.step_timer,
                keys,
            )
            report(spec.name, f"loading layers [{spec.stage.start}, {spec.stage.end})")
        self.unresponsive: dict[str, int] = {}  # consecutive health checks without an answer
        refs = {a.info.remote(): name for name, a in self.actors.items()}
        info, pending = {}, list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            info[refs[ready[0]]] = ray.get(ready[0])
            report(refs[ready[0]], "ready")
        self.info = {name: info[name] for name in self.actors}
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
                gone[name] = death_reason(exc)
        return gone

    def adopt(self, other: Deployment) -> None:
        """Take over the (started) actors of `other` (workers added by a re-plan)."""
        self.specs.update(other.specs)
        self.info.update(other.info)
        self.addresses.update(other.addresses)
        self.actors.update(other.actors)

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

    def kill_local_processes(self) -> list[int]:
        """SIGKILL the worker processes on this host by PID (when Ray's control plane is gone and cannot
        stop them); returns the PIDs signalled."""
        killed = []
        for info in self.info.values():
            pid = info.get("pid")
            if pid and info.get("hostname") == socket.gethostname():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        self.actors.clear()
        return killed


def gcs_reachable(address: str, timeout_s: float = 1.0) -> bool:
    """Whether Ray's GCS answers a TCP connection at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


class HealthMonitor:
    """Watches the deployment (see the module docstring); reports each newly gone worker once."""

    def __init__(
        self,
        deployment: Deployment,
        on_gone: Callable[[str, str], None],
        interval_s: float = 0.1,
        liveness_timeout_s: float = 5.0,
        step_timeout_s: float = 100.0,
        on_control_plane_lost: Callable[[str], None] | None = None,
        control_plane_timeout_s: float = 10.0,
    ) -> None:
        self.deployment = deployment
        self.on_gone = on_gone
        self.interval_s = interval_s
        self.liveness_timeout_s = liveness_timeout_s
        self.step_timeout_s = step_timeout_s
        self.on_control_plane_lost = on_control_plane_lost
        self.control_plane_timeout_s = control_plane_timeout_s
        self.control_plane_lost: str | None = None
        self._gcs_address = _gcs_address(deployment._ray)
        self._gcs_checked_s = self._gcs_seen_s = time.monotonic()
        self.gone: dict[str, str] = {}
        self.gone_at_s: dict[str, float] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self._outstanding: dict[str, tuple[Any, float]] = {}  # name → (heartbeat ref, sent at)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helix-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        ray = self.deployment._ray
        while not self._stopped.is_set():
            now = time.monotonic()
            if self._control_plane_gone(now):
                return
            for name, actor in list(self.deployment.actors.items()):
                if name not in self.gone and name not in self._outstanding:
                    self._outstanding[name] = (actor.stats.remote(), now)
            refs = {ref: name for name, (ref, _) in self._outstanding.items()}
            ready = []
            if refs:
                ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.interval_s)
            for ref in ready:
                name = refs[ref]
                self._outstanding.pop(name)
                try:
                    stats = ray.get(ref)
                except Exception as exc:  # RayActorError and friends: the actor died
                    self._declare(name, death_reason(exc))
                    continue
                self.stats[name] = stats
                idle_s = stats.get("since_last_step_s", 0.0)
                if stats.get("pending_batches", 0) and idle_s > self.step_timeout_s:
                    self._declare(
                        name,
                        f"no step for {idle_s:.1f} s with {stats['pending_batches']} batches waiting "
                        f"(step timeout {self.step_timeout_s:g} s)",
                    )
            now = time.monotonic()
            for name, (_, sent_s) in list(self._outstanding.items()):
                if now - sent_s > self.liveness_timeout_s:
                    self._outstanding.pop(name)
                    self._declare(
                        name,
                        f"no heartbeat for {now - sent_s:.1f} s "
                        f"(liveness timeout {self.liveness_timeout_s:g} s)",
                    )
            if not refs or len(ready) == len(refs):
                self._stopped.wait(self.interval_s)

    def _control_plane_gone(self, now: float) -> bool:
        """Check Ray's GCS once a second; after `control_plane_timeout_s` unreachable, report it (once)."""
        if self._gcs_address is None or now - self._gcs_checked_s < 1.0:
            return False
        self._gcs_checked_s = now
        if gcs_reachable(self._gcs_address):
            self._gcs_seen_s = now
            return False
        if now - self._gcs_seen_s < self.control_plane_timeout_s:
            return False
        self.control_plane_lost = (
            f"Ray's control plane (GCS at {self._gcs_address}) has been unreachable for "
            f"{now - self._gcs_seen_s:.0f} s"
        )
        if self.on_control_plane_lost is not None:
            self.on_control_plane_lost(self.control_plane_lost)
        return True

    def _declare(self, name: str, reason: str) -> None:
        if name in self.gone:
            return
        self.gone[name] = reason
        self.gone_at_s[name] = time.time()
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
        keys: WireKeys | None = None,
    ) -> None:
        stage = pin_device(stage)
        super().__init__(name, stage, slowdown, advertise_host, step_timer, keys)


def _gcs_address(ray) -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # not connected, or an older Ray
        return None


def death_reason(exc: BaseException) -> str:
    """One line on why a worker's call failed: the actor's own error where Ray wraps it (a RayTaskError
    carries it as ``cause``), e.g. a tensor-parallel rank that died."""
    cause = getattr(exc, "cause", None)
    exc = cause if isinstance(cause, Exception) else exc
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout_s` passes (tests and drills)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
