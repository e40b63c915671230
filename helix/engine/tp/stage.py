"""What every rank of a tensor-parallel stage builds, and how (the same code on rank 0 and the others)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helix.engine.block_manager import BlockManager
from helix.engine.config import EngineConfig, LayerRange, ModelConfig
from helix.engine.kv_cache import kv_block_bytes
from helix.engine.model_runner import ModelRunner
from helix.engine.tp.group import TPGroup
from helix.engine.tp.plan import local_config, shard_plan
from helix.engine.tp.shard import build_rank_stage, model_dir_tensors, split_invariant_tensors

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class TPStageSpec:
    """A stage to split over ranks (picklable: it travels to every rank process).

    Weights: the safetensors of `model_dir`, or (None) random split-invariant weights from `seed`.
    `engine_config.num_kv_blocks` is the node's block count (all ranks hold the same blocks, each with
    its own heads); None sizes it from device memory and takes the smallest over the ranks.
    """

    config: ModelConfig
    layer_range: LayerRange
    engine_config: EngineConfig
    dtype: str = "float32"
    max_positions: int | None = None
    model_dir: str | None = None
    seed: int = 0
    threads: int = 1


def tp_kv_blocks(
    config: ModelConfig, world: int, num_layers: int, kv_cache_bytes_per_rank: int, dtype: torch.dtype
) -> int:
    """KV blocks (16 tokens) a node of `world` ranks gets with `kv_cache_bytes_per_rank` on every rank.

    Each rank stores only its KV heads, so the node holds about `world` times the tokens one device
    would: the scheduler sees the summed capacity. The rank with the most KV heads sets the count.
    """
    shards = shard_plan(config, world)
    widest = max(shards, key=lambda s: s.num_kv_heads)
    block_bytes = kv_block_bytes(local_config(config, widest), num_layers, 16, dtype)
    return max(1, kv_cache_bytes_per_rank // block_bytes)


def build_rank_runner(spec: TPStageSpec, group: TPGroup) -> ModelRunner:
    """This rank's `ModelRunner`: its shard of the stage, its KV cache, the node's common block count."""
    shard = shard_plan(spec.config, group.world)[group.rank]
    dtype = DTYPES[spec.dtype]
    if spec.model_dir is not None:
        tensors = model_dir_tensors(spec.model_dir)
    else:
        tensors = split_invariant_tensors(spec.seed, group.device, dtype)
    stage = build_rank_stage(
        spec.config,
        spec.layer_range,
        shard,
        group if group.world > 1 else None,
        tensors,
        device=group.device,
        dtype=dtype,
        max_positions=spec.max_positions,
    )
    runner = ModelRunner(stage, spec.engine_config)
    if group.world > 1 and spec.engine_config.num_kv_blocks is None:
        blocks = group.min_int(runner.block_manager.num_blocks)
        if blocks != runner.block_manager.num_blocks:  # the extra cache blocks stay unused
            runner.block_manager = BlockManager(blocks, runner.block_size)
    return runner
