"""`helix profile` for a node of several GPUs: the node measured as one node, tensor parallel.

The timed stage runs over the node's ranks exactly as a worker would run it (`start_tp_runner`), so
the per-layer prompt and decode times include the all-reduces. Capacity is per device: each device
holds its rank's weights and the KV of its heads, so the KV blocks of k layers are those of the
widest rank's shard on one device's memory, and the node holds those blocks for all its heads.
"""

from __future__ import annotations

import dataclasses

import torch

from helix.engine.config import EngineConfig, LayerRange, ModelConfig
from helix.engine.profiler import ProfileOptions, ProfileResult, profile_model
from helix.engine.tp.launch import start_tp_runner
from helix.engine.tp.plan import local_config, shard_plan
from helix.engine.tp.stage import TPStageSpec

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def profile_tp_node(
    config: ModelConfig, devices: list[str], dtype: torch.dtype, options: ProfileOptions | None = None
) -> ProfileResult:
    """Profile tables of one node whose len(devices) GPUs (or CPU ranks) run tensor parallel."""
    world = len(devices)
    widest = max(shard_plan(config, world), key=lambda s: s.num_kv_heads)
    runners = []

    def make_runner(timed: ModelConfig, layers: LayerRange, engine_config: EngineConfig, max_len: int):
        spec = TPStageSpec(timed, layers, engine_config, _DTYPE_NAMES[dtype], max_len, None, 0)
        runners.append(start_tp_runner(spec, devices))
        return runners[-1]

    try:
        result = profile_model(
            config,
            torch.device(devices[0]),
            dtype,
            options,
            make_runner=make_runner,
            capacity_config=local_config(config, widest),
        )
    finally:
        for runner in runners:
            runner.close()
    return dataclasses.replace(result, machine_type=f"{result.machine_type}x{world}")
