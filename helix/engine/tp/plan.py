"""How a stage is cut across tensor-parallel ranks: heads, KV heads, MLP columns, vocabulary rows.

Megatron-style: q/k/v and gate/up are column parallel (each rank computes its heads / its slice of
the intermediate dimension), o_proj and down_proj are row parallel (each rank's partial sums are
all-reduced), the LM head is vocabulary parallel (each rank computes its rows of the vocabulary,
then the logits are all-gathered) when the vocabulary divides evenly, replicated otherwise. The
embedding and the norms are replicated.

Heads are split by KV group so grouped-query attention stays exact on every rank:

- `world <= num_kv_heads`: each rank gets a contiguous run of whole KV groups (runs differ by at
  most one group), with all their query heads;
- `world > num_kv_heads`: each KV group gets `world / num_kv_heads` ranks (± 1) and its query heads
  are split over them; every such rank holds a replica of that one KV head (as vLLM does when KV heads
  are fewer than ranks). Needs at least as many query heads per group as ranks per group.

So an even split (heads and KV heads divisible by `world`) is vLLM's, and models such as
SmolLM2-135M (9 heads, 3 KV heads) still split over 2 or 4 ranks, unevenly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from helix.engine.config import ModelConfig
from helix.errors import HelixInputError


@dataclass(frozen=True, slots=True)
class RankShard:
    """What rank `rank` of `world` holds: half-open ranges over the full model's dimensions.

    q_heads / kv_heads: attention (query) heads and KV heads; mlp: columns of the intermediate
    dimension; vocab: rows of the LM head, or None when the head is replicated.
    """

    rank: int
    world: int
    q_heads: tuple[int, int]
    kv_heads: tuple[int, int]
    mlp: tuple[int, int]
    vocab: tuple[int, int] | None

    @property
    def num_q_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]


def split_evenly(total: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering [0, total), sizes differing by at most one (larger first)."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def shard_plan(config: ModelConfig, world: int) -> list[RankShard]:
    """The shards of `world` ranks (see the module docstring); `HelixInputError` if it cannot split."""
    if world < 1:
        raise HelixInputError(f"tensor-parallel size must be >= 1, got {world}", field="tensor_parallel")
    heads, kv = config.num_heads, config.num_kv_heads
    group = heads // kv  # query heads per KV head
    if config.intermediate_size < world:
        raise _cannot(config, world, f"the MLP has only {config.intermediate_size} columns")
    mlp = split_evenly(config.intermediate_size, world)
    vocab = split_evenly(config.vocab_size, world) if config.vocab_size % world == 0 else [None] * world
    if world <= kv:
        runs = split_evenly(kv, world)
        attn = [((a * group, b * group), (a, b)) for a, b in runs]
    else:
        attn = []
        for kv_head, (r0, r1) in enumerate(split_evenly(world, kv)):
            ranks_here = r1 - r0
            if ranks_here > group:
                raise _cannot(config, world, f"a KV group has {group} query heads for {ranks_here} ranks")
            for a, b in split_evenly(group, ranks_here):
                attn.append(((kv_head * group + a, kv_head * group + b), (kv_head, kv_head + 1)))
    return [
        RankShard(rank, world, attn[rank][0], attn[rank][1], mlp[rank], vocab[rank]) for rank in range(world)
    ]


def local_config(config: ModelConfig, shard: RankShard) -> ModelConfig:
    """The per-rank model shape: a rank's stage is a LLaMA stage of this config (plus its hooks)."""
    return dataclasses.replace(
        config,
        num_heads=shard.num_q_heads,
        num_kv_heads=shard.num_kv_heads,
        intermediate_size=shard.mlp[1] - shard.mlp[0],
    )


def max_local_kv_heads(config: ModelConfig, world: int) -> int:
    """KV heads of the rank holding the most (it bounds the node's KV blocks: ranks share block ids)."""
    return max(s.num_kv_heads for s in shard_plan(config, world))


def _cannot(config: ModelConfig, world: int, why: str) -> HelixInputError:
    return HelixInputError(
        f"cannot split {config.num_heads} heads / {config.num_kv_heads} KV heads over {world} "
        f"tensor-parallel ranks: {why}",
        field="tensor_parallel",
        fix="use fewer GPUs for this node",
    )
