"""Workers as plain OS processes (no Ray): one process per plan node, wired by the runtime's ZeroMQ path.

`ProcessDeployment` starts each worker in a fresh (spawned) process that pins its device the way the
Ray actor does (``cuda:<i>`` → ``CUDA_VISIBLE_DEVICES=<i>``, then ``cuda:0``), loads its stage, binds
its `WorkerLoop` inbox and reports the address over a pipe. `start_coordinator` builds the scheduler's
`Topology` from the plan with each node's real KV capacity, starts the `Coordinator`, and hands every
worker its peers. The hot path is exactly the Ray runtime's — `Worker.step`, `WorkerLoop`, `HopBatch`
over PUSH/PULL sockets, `Coordinator` — only lifecycle and address exchange go through pipes instead of
Ray (so it runs where Ray is not installed, and in tests). The deployment's CURVE keys
(`helix.runtime.keys`) are generated here and reach each worker over its pipe. Processes are spawned,
so a script that starts a deployment needs the usual ``if __name__ == "__main__":`` guard.

Weights: from a model directory through `load_backend`, or (``random_hf_config``) random weights that
do not depend on the split: every parameter is drawn from a generator seeded by the Hugging Face names
of the tensors it is made of, so a 12 + 20 layer split holds exactly the weights of one 32-layer stage.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from helix.engine.config import LayerRange, ModelConfig
from helix.engine.loader import build_stage
from helix.engine.model.llama import LlamaStage
from helix.engine.model_runner import ModelRunner
from helix.engine.tp.shard import split_invariant_seed
from helix.flow.graph import DEFAULT_PARTIAL_OVERLAP
from helix.runtime.coordinator import Coordinator, CoordinatorConfig
from helix.runtime.keys import WireKeys
from helix.runtime.kv_capacity import with_real_kv
from helix.runtime.stage_backend import (
    _DTYPES,
    StageBackend,
    StageConfig,
    kv_blocks,
    load_backend,
    pin_device,
    stage_engine_config,
)
from helix.runtime.transport import IPC_PREFIX, private_ipc_dir
from helix.runtime.worker import Worker
from helix.runtime.worker_loop import WorkerLoop, settle_garbage_collector
from helix.scheduling import KVParameters, Topology, create_scheduler
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement

START_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class ProcessWorkerSpec:
    """One worker process: plan node `name`, its stage, and optionally random split-invariant weights."""

    name: str
    stage: StageConfig
    random_hf_config: dict[str, Any] | None = None
    seed: int = 0
    slowdown: float = 1.0
    device_turns: bool = True  # workers sharing a GPU step in turn (`helix.runtime.device_turn`)


@torch.no_grad()
def init_split_invariant_weights(model: LlamaStage, seed: int, std: float = 0.02) -> None:
    """N(0, std) projections and embeddings, unit norms; each tensor seeded by its global HF names."""
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    for name, parts in model.hf_weight_names().items():
        param = params[name]
        if name.endswith("layernorm.weight") or name == "norm.weight":
            param.fill_(1.0)
            continue
        generator = torch.Generator(device=device)
        generator.manual_seed(split_invariant_seed(seed, parts))
        param.normal_(0.0, std, generator=generator)


def build_backend(spec: ProcessWorkerSpec) -> StageBackend:
    """The worker's stage: `load_backend` for a model path, or random split-invariant weights."""
    if spec.random_hf_config is None:
        return load_backend(spec.stage)
    if spec.stage.tp_size > 1:
        from helix.runtime.tp_node import load_tp_backend

        return load_tp_backend(spec.stage, spec.random_hf_config, spec.seed)
    stage = spec.stage
    config = ModelConfig.from_hf_dict(spec.random_hf_config, where="random model config")
    layer_range = LayerRange(stage.start, stage.end).validate(config.num_layers)
    dtype = _DTYPES[stage.dtype]
    model = build_stage(
        config, layer_range, device=stage.device, dtype=dtype, max_positions=stage.max_model_len
    )
    init_split_invariant_weights(model, spec.seed)
    num_blocks = None
    if stage.kv_cache_bytes is not None:
        num_blocks = kv_blocks(config, layer_range.num_layers, stage.kv_cache_bytes, dtype, stage.block_size)
    return StageBackend(ModelRunner(model, stage_engine_config(stage, num_blocks)))


def _worker_main(
    spec: ProcessWorkerSpec, conn, keys: WireKeys | None = None, host: str = "127.0.0.1"
) -> None:
    """Child process: load, report the inbox address, then serve start/stats/stop commands."""
    try:
        os.environ.setdefault("OMP_NUM_THREADS", str(spec.stage.threads))
        stage = pin_device(spec.stage)
        started = time.perf_counter()
        backend = build_backend(replace(spec, stage=stage))
        worker = Worker(spec.name, backend, slowdown=spec.slowdown, device_turns=spec.device_turns)
        loop = WorkerLoop(worker, host, keys=keys)
        settle_garbage_collector()
        device = backend.runner.device
        conn.send(
            {
                "name": spec.name,
                "address": loop.address,
                "load_s": time.perf_counter() - started,
                "kv_blocks": backend.num_kv_blocks,
                "kv_block_size": backend.kv_block_size,
                "max_model_len": backend.max_model_len,
                "pid": os.getpid(),
                "rank_pids": backend.rank_pids,
                "device": str(spec.stage.device),
                "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            }
        )
    except BaseException as exc:  # report the failure instead of leaving the parent waiting
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    while True:
        command, arg = conn.recv()
        if command == "start":
            loop.start(arg)
            conn.send(True)
        elif command == "stats":
            failure = backend.failure
            alive = loop.is_alive() and failure is None
            conn.send(asdict(loop.worker.stats) | {"alive": alive, "failure": failure})
        else:
            loop.stop()
            backend.close()
            conn.send(True)
            return


class ProcessDeployment:
    """One spawned process per `ProcessWorkerSpec`; `info`, `addresses`, `start`, `stats`, `shutdown`.

    Its processes share one host, so by default (`ipc`) their sockets are Unix-domain socket files in a
    directory only this user may enter (`helix.runtime.transport.private_ipc_dir`) and frames travel
    unencrypted; with ``ipc=False`` they are CURVE sockets on TCP loopback (`keys`)."""

    def __init__(
        self, specs: list[ProcessWorkerSpec], timeout_s: float = START_TIMEOUT_S, *, ipc: bool = True
    ) -> None:
        context = mp.get_context("spawn")
        self.host = private_ipc_dir() if ipc else "127.0.0.1"  # what every inbox binds and advertises
        self.keys = None if ipc else WireKeys.generate()
        self.specs = {s.name: s for s in specs}
        self._conns: dict[str, Any] = {}
        self._procs: dict[str, Any] = {}
        for spec in specs:
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker_main, args=(spec, child, self.keys, self.host), name=f"helix-{spec.name}"
            )
            proc.start()
            self._conns[spec.name], self._procs[spec.name] = parent, proc
        self.info: dict[str, dict[str, Any]] = {}
        try:
            for name, conn in self._conns.items():
                if not conn.poll(timeout_s):
                    raise RuntimeError(f"worker {name} did not start within {timeout_s:.0f} s")
                info = conn.recv()
                if "error" in info:
                    raise RuntimeError(f"worker {name} failed to start: {info['error']}")
                self.info[name] = info
        except BaseException:
            self.shutdown()
            raise
        self.addresses = {name: info["address"] for name, info in self.info.items()}

    def _call(self, name: str, command: str, arg: Any = None, timeout_s: float = 30.0) -> Any:
        conn = self._conns[name]
        conn.send((command, arg))
        if not conn.poll(timeout_s):
            raise RuntimeError(f"worker {name} did not answer {command!r}")
        return conn.recv()

    def start(self, coordinator_address: str) -> None:
        peers = {**self.addresses, "coordinator": coordinator_address}
        for name in self._conns:
            self._call(name, "start", peers)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: self._call(name, "stats") for name in self._conns}

    def shutdown(self) -> None:
        for name, proc in self._procs.items():
            if proc.is_alive():
                try:
                    self._call(name, "stop", timeout_s=10.0)
                except (RuntimeError, OSError, EOFError):
                    pass
                proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        self._procs.clear()
        if self.host.startswith(IPC_PREFIX):
            shutil.rmtree(self.host[len(IPC_PREFIX) :], ignore_errors=True)


def start_coordinator(
    deployment: ProcessDeployment,
    cluster: ClusterSpec,
    model: ModelSpec,
    placement: Placement,
    capacity,
    *,
    max_model_len: int,
    eos_token_ids: tuple[int, ...] = (),
    scheduler: str = "maxflow",
    max_waiting: int = 1 << 20,
    seed: int = 0,
    partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP,
    pipeline_decode_max_stages: int | None = None,
) -> Coordinator:
    """Scheduler over the plan (real KV per node), a started `Coordinator`, and started workers;
    `pipeline_decode_max_stages` as in `CoordinatorConfig`."""
    topology = Topology.build(cluster, model, placement, capacity, partial_overlap=partial_overlap)
    topology = with_real_kv(topology, deployment.info)
    kv = KVParameters(expected_kv_hwm=0.9, expected_output_length_ratio=0.6)
    coordinator = Coordinator(
        create_scheduler(scheduler, topology, kv, random.Random(seed)),
        deployment.addresses,
        CoordinatorConfig(
            max_model_len,
            eos_token_ids,
            max_waiting,
            pipeline_decode_max_stages=pipeline_decode_max_stages,
        ),
        deployment.host,
        keys=deployment.keys,
    )
    coordinator.start()
    deployment.start(coordinator.address)
    return coordinator
