"""Tensor parallelism inside one node: a stage's layers split over the node's GPUs (or CPU ranks).

- `shard_plan(config, world)`: which heads, KV heads, MLP columns and vocabulary rows each rank holds.
- `build_rank_stage`: one rank's `LlamaStage` (its local shape, its weight slices, all-reduce hooks).
- `start_tp_runner(spec, devices)`: from the process that becomes rank 0, spawn the other ranks and
  return a `TPRunner`, which drives all ranks through the `ModelRunner` interface.
"""

from helix.engine.tp.launch import start_tp_runner
from helix.engine.tp.plan import RankShard, local_config, shard_plan
from helix.engine.tp.runner import TPRunner
from helix.engine.tp.shard import build_rank_stage
from helix.engine.tp.stage import TPStageSpec, tp_kv_blocks

__all__ = [
    "RankShard",
    "TPRunner",
    "TPStageSpec",
    "build_rank_stage",
    "local_config",
    "shard_plan",
    "start_tp_runner",
    "tp_kv_blocks",
]
