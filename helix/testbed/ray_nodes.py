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
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from helix.testbed.netns import TestBed

RAY_PORT = 6379


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
    ) -> RayTestCluster:
        """Start a head on `head` and a worker node on every other host named in `resources` (host →
        custom resources); returns once all nodes joined."""
        cluster = cls(bed, head, token or secrets.token_hex(32), state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        cluster._start_node(head, resources.get(head, {}), num_cpus, is_head=True)
        for host, res in resources.items():
            if host != head:
                cluster._start_node(host, res, num_cpus, is_head=False)
        cluster.wait_for_nodes(len({head, *resources}))
        return cluster

    def _start_node(self, host: str, resources: dict[str, float], num_cpus: int, *, is_head: bool) -> None:
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
        self.bed.spawn(host, argv, env=self.env, log=self.state_dir / f"ray-{host}.log")

    def wait_for_nodes(self, count: int, timeout_s: float = 180.0) -> None:
        """Block until `count` Ray nodes are alive (asked from the head's host)."""
        probe = (
            "import ray, sys\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR', log_to_driver=False)\n"
            "print(sum(1 for n in ray.nodes() if n['Alive']))\n"
        )
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            result = self.bed.run(self.head, [sys.executable, "-c", probe], env=self.env, timeout_s=60)
            lines = result.stdout.strip().splitlines()
            if result.returncode == 0 and lines and lines[-1].isdigit() and int(lines[-1]) >= count:
                return
            last = (result.stderr or result.stdout).strip()[-300:]
            time.sleep(1.0)
        raise RuntimeError(f"Ray nodes did not all join within {timeout_s:.0f} s: {last}")
