"""A worker for a node of g GPUs: its layer range runs tensor parallel over g rank processes.

The worker process (Ray actor or plain process) is rank 0: it holds the `WorkerLoop`, so pipeline hops
go from rank 0 of one stage to rank 0 of the next, and it starts ranks 1..g-1 itself
(`helix.engine.tp.start_tp_runner`) and stops them with the worker. Each rank's KV cache holds its own
heads; `StageConfig.kv_cache_bytes` is the budget of every rank, so the worker reports the node's
summed capacity as its KV blocks and the scheduler sees one node.

How many ranks: a device list (``--device n3=cuda:0,1``) gives one rank per listed GPU; otherwise the
node's GPU type decides (`GPUSpec.num_gpus`: 2 for ``L4x2``, 4 for ``T4x4``), on CUDA (``cuda``) or, in
emulation, on CPU ranks. A rank that dies takes its node down: the worker reports the failure on its
health checks (`StageBackend.failure`), and the runtime treats it as one lost node.
"""

from __future__ import annotations

from typing import Any

from helix.engine.config import EngineConfig, LayerRange, ModelConfig
from helix.engine.loader import resolve_model
from helix.engine.tp import TPStageSpec, start_tp_runner, tp_kv_blocks
from helix.engine.tp.stage import DTYPES
from helix.errors import HelixInputError
from helix.runtime.stage_backend import StageBackend, StageConfig
from helix.specs.cluster import NodeSpec


def parse_device(text: str, *, field: str = "--device") -> tuple[str, int | None]:
    """(device, ranks) of ``cpu``, ``cuda``, ``cuda:<i>`` or ``cuda:<i>,<j>,...``; ranks None if unsaid."""
    text = text.strip()
    if text in ("cpu", "cuda"):
        return text, None
    if text.startswith("cuda:"):
        ids = [i.strip() for i in text.split(":", 1)[1].split(",")]
        if ids and all(i.isdigit() for i in ids) and len(set(ids)) == len(ids):
            return "cuda:" + ",".join(ids), len(ids) if len(ids) > 1 else None
    raise HelixInputError(
        f"bad device {text!r}",
        field=field,
        fix="use cpu, cuda, cuda:<i> or a list of distinct GPUs of one host such as cuda:0,1",
    )


def tp_size_for(node: NodeSpec, device: str) -> int:
    """Ranks of a node's worker: one per GPU of a device list, else the node type's GPU count."""
    _, listed = parse_device(device)
    if listed is not None:
        return listed
    if device.startswith("cuda:"):  # one named GPU
        return 1
    return node.gpu.num_gpus


def rank_devices(device: str, tp_size: int) -> list[str]:
    """Per-rank devices as the pinned worker sees them (its GPUs are cuda:0 .. cuda:g-1)."""
    if device.startswith("cuda"):
        return [f"cuda:{i}" for i in range(tp_size)]
    return ["cpu"] * tp_size


def tp_stage_spec(
    stage: StageConfig, config: ModelConfig, *, model_dir: str | None, seed: int = 0
) -> TPStageSpec:
    layer_range = LayerRange(stage.start, stage.end).validate(config.num_layers)
    num_blocks = None
    if stage.kv_cache_bytes is not None:
        num_blocks = tp_kv_blocks(
            config, stage.tp_size, layer_range.num_layers, stage.kv_cache_bytes, DTYPES[stage.dtype]
        )
    engine_config = EngineConfig(num_kv_blocks=num_blocks, max_model_len=stage.max_model_len)
    return TPStageSpec(
        config, layer_range, engine_config, stage.dtype, stage.max_model_len, model_dir, seed, stage.threads
    )


def load_tp_backend(stage: StageConfig, random_hf_config: dict[str, Any] | None = None, seed: int = 0):
    """The worker's stage over `stage.tp_size` ranks: the model's weights, or random split-invariant
    ones (`random_hf_config`, as `helix.runtime.processes` uses)."""
    import torch

    if stage.device == "cpu":
        torch.set_num_threads(max(1, stage.threads))
    if random_hf_config is not None:
        config = ModelConfig.from_hf_dict(random_hf_config, where="random model config")
        spec = tp_stage_spec(stage, config, model_dir=None, seed=seed)
    else:
        resolved = resolve_model(stage.model)
        spec = tp_stage_spec(stage, resolved.config, model_dir=str(resolved.model_dir))
    return StageBackend(start_tp_runner(spec, rank_devices(stage.device, stage.tp_size)))
