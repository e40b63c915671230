"""The thin Ray actor around a worker: load the stage, expose the inbox address, start, report stats.

Ray places the actor (on the Ray node carrying the plan node's custom resource when joining a cluster),
owns its lifecycle and detects its death; the hot path does not go through Ray but through the ZeroMQ
sockets whose addresses `address()` hands out.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict
from typing import Any

from helix.runtime.emulation import StepTimer
from helix.runtime.keys import WireKeys
from helix.runtime.stage_backend import StageConfig, load_backend
from helix.runtime.worker import Worker
from helix.runtime.worker_loop import WorkerLoop, settle_garbage_collector


class WorkerActor:
    """Wrapped with `ray.remote` by `helix.runtime.deploy`; plain class otherwise."""

    def __init__(
        self,
        name: str,
        stage: StageConfig,
        slowdown: float = 1.0,
        advertise_host: str = "",
        step_timer: StepTimer | None = None,
        keys: WireKeys | None = None,
    ) -> None:
        """`advertise_host`: the address peers reach this worker at (default: this Ray node's IP)."""
        os.environ.setdefault("OMP_NUM_THREADS", str(stage.threads))
        started = time.perf_counter()
        backend = load_backend(stage)
        self.load_s = time.perf_counter() - started
        self.loop = WorkerLoop(
            Worker(name, backend, slowdown=slowdown, step_timer=step_timer),
            advertise_host or _node_ip(),
            keys=keys,
        )
        settle_garbage_collector()
        self.stage = stage

    def address(self) -> str:
        return self.loop.address

    def info(self) -> dict[str, Any]:
        backend = self.loop.worker.backend
        return {
            "name": self.loop.worker.name,
            "address": self.loop.address,
            "load_s": self.load_s,
            "kv_blocks": backend.num_kv_blocks,
            "kv_block_size": backend.kv_block_size,
            "max_model_len": backend.max_model_len,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "rank_pids": backend.rank_pids,
            "stage": asdict(self.stage),
            "node_ip": _node_ip(),
        }

    def start(self, peers: dict[str, str]) -> bool:
        self.loop.start(peers)
        return True

    def add_peers(self, peers: dict[str, str]) -> bool:
        """Learn the addresses of workers started later (a re-plan's new workers)."""
        self.loop.add_peers(peers)
        return True

    def stats(self) -> dict[str, Any]:
        if not self.loop.is_alive():
            raise RuntimeError(f"worker {self.loop.worker.name}: its step loop stopped")
        if self.loop.worker.backend.failure is not None:  # a tensor-parallel rank died: the node is down
            raise RuntimeError(f"worker {self.loop.worker.name}: {self.loop.worker.backend.failure}")
        stats = asdict(self.loop.worker.stats)  # counters only: no lock, so a long step never delays it
        stats["pending_batches"] = self.loop.num_pending
        stats["since_last_step_s"] = time.monotonic() - self.loop.last_step_s
        stats["pid"] = os.getpid()
        inbox = self.loop.inbox
        stats["wire_dropped_frames"] = sum(inbox.dropped.values())
        stats["wire_rejected_handshakes"] = inbox.handshake_failures
        stats["wire_rejected_peers"] = self.loop.wire.rejected_peers
        return stats

    def stop(self) -> bool:
        self.loop.stop()
        self.loop.worker.backend.close()
        return True


def _node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except Exception:  # not inside Ray
        pass
    return "127.0.0.1"
