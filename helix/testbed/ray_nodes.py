"""Ray nodes on the test bed: a head on one emulated host, worker nodes on others, each a `ray start
--block` inside its host's namespace, started and stopped by PID (`TestBed.spawn` / `TestBed.down`).

Every node advertises ``helix_node_<plan node>`` for the plan nodes it hosts, exactly as on a real
cluster (docs/serving.md). Ray runs with token authentication: `RayTestCluster.env` (``RAY_AUTH_MODE``,
``RAY_AUTH_TOKEN``) is what `ray start` on every node and `helix serve` need, as on a user's cluster.
Each node has its own ``--temp-dir`` under the test bed's directory, so nothing of it lands in the
machine's shared ``/tmp/ray``. Ports are Ray's defaults: each namespace has its own port space.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helix.testbed.netns import TestBed

RAY_PORT = 6379


class _NodeDied(RuntimeError):
    """A `ray start` process exited before its node joined."""


@dataclass
class RayTestCluster:
    """The Ray nodes of a test bed: `head` host, `env` for anything that joins, `address` of the head."""

    bed: TestBed
    head: str
    token: str
    state_dir: Path

    @property
    def address(self) -> str:
        return f"{self.bed.address(self.head)}:{RAY_PORT}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # a raylet waits this long for its agents to start (slow on a loaded machine)
            "RAY_agent_register_timeout_ms": "180000",
        }

    @classmethod
    def start(
        cls,
        bed: TestBed,
        resources: dict[str, dict[str, float]],
        *,
        head: str,
        state_dir: Path,
        num_cpus: int = 1,
        token: str | None = None,
        restarts: int = 2,
    ) -> RayTestCluster:
        """Start a head on `head` and a worker node on every other host named in `resources` (host →
        custom resources); returns once all nodes joined."""
        cluster = cls(bed, head, token or secrets.token_hex(32), state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        head_proc = {head: cluster._start_node(head, resources.get(head, {}), num_cpus, is_head=True)}
        workers = {host: res for host, res in resources.items() if host != head}
        cluster._wait_restarting(
            head_proc, {head: resources.get(head, {})}, 1, num_cpus, restarts, is_head=True
        )
        procs = {
            host: cluster._start_node(host, res, num_cpus, is_head=False) for host, res in workers.items()
        }
        cluster._wait_restarting(procs, workers, 1 + len(workers), num_cpus, restarts, is_head=False)
        return cluster

    def _wait_restarting(self, procs, resources, count: int, num_cpus: int, restarts: int, *, is_head: bool):
        """Wait for `count` nodes; on a loaded machine a Ray node can time out while it starts (its
        `ray start` exits): start it again, up to `restarts` times."""
        for _ in range(restarts + 1):
            try:
                self.wait_for_nodes(count, gone=lambda: [p for p in procs.values() if p.poll() is not None])
                return
            except _NodeDied:
                for host, proc in list(procs.items()):
                    if proc.poll() is not None:
                        self.bed.stop_host(host)  # what the failed start left behind
                        procs[host] = self._start_node(host, resources[host], num_cpus, is_head=is_head)
        raise RuntimeError(f"Ray nodes on {sorted(procs)} did not all start (see {self.state_dir}/ray-*.log)")

    def _start_node(self, host: str, resources: dict[str, float], num_cpus: int, *, is_head: bool):
        ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
        argv = [
            ray,
            "start",
            "--block",
            f"--node-ip-address={self.bed.address(host)}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            f"--temp-dir={self.state_dir / ('ray-' + host)}",
            "--disable-usage-stats",
        ]
        if is_head:
            argv += ["--head", f"--port={RAY_PORT}", "--include-dashboard=false"]
        else:
            argv += [f"--address={self.address}"]
        return self.bed.spawn(host, argv, env=self.env, log=self.state_dir / f"ray-{host}.log")

    def wait_for_nodes(self, count: int, timeout_s: float = 180.0, gone=lambda: []) -> None:
        """Block until `count` Ray nodes are alive (asked from the head's host); raises `_NodeDied` as
        soon as `gone()` names a node process that exited."""
        probe = (
            "import ray, sys\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            "print(sum(1 for n in ray.nodes() if n['Alive']))\n"
        )
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if gone():
                raise _NodeDied()
            try:
                result = self.bed.run(self.head, [sys.executable, "-c", probe], env=self.env, timeout_s=90)
            except subprocess.TimeoutExpired:  # a loaded machine: ask again
                last = "the probe timed out"
                continue
            lines = result.stdout.strip().splitlines()
            if result.returncode == 0 and lines and lines[-1].isdigit() and int(lines[-1]) >= count:
                return
            last = (result.stderr or result.stdout).strip()[-300:]
            time.sleep(1.0)
        raise RuntimeError(f"Ray nodes did not all join within {timeout_s:.0f} s: {last}")
