"""Building one rank's share of a stage: a LLaMA stage of the rank's local shape, its weights cut
from the full tensors, and the collectives that make the ranks add up to the whole stage.

The model code is untouched: a rank's stage is a `LlamaStage` of `local_config` (its heads, KV heads
and MLP columns), with forward hooks that all-reduce the outputs of `o_proj` and `down_proj` (row
parallel) and all-gather the vocabulary-parallel LM head's logits. Weights come from a provider of
full tensors in the engine's fused naming (`qkv_proj` = q|k|v rows, `gate_up_proj` = gate|up rows),
so each rank reads the full tensor once and keeps its slice.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import torch

from helix.engine.config import LayerRange, ModelConfig
from helix.engine.model.layers import Linear
from helix.engine.model.llama import LlamaStage
from helix.engine.tp.group import TPGroup
from helix.engine.tp.plan import RankShard, local_config
from helix.engine.weights import SafetensorsSource, WeightSource
from helix.errors import HelixInputError

# (engine parameter name, Hugging Face tensor names it is made of, full shape) -> full tensor
FullTensorFn = Callable[[str, list[str], tuple[int, ...]], torch.Tensor]


def checkpoint_tensors(source: WeightSource) -> FullTensorFn:
    """Full tensors read from a checkpoint (q/k/v and gate/up concatenated as `load_weights` does)."""

    def get(name: str, parts: list[str], shape: tuple[int, ...]) -> torch.Tensor:
        missing = [p for p in parts if p not in source.names()]
        if missing:
            raise HelixInputError(f"checkpoint lacks {missing[0]}", where=source.where)
        tensors = [source.get(p) for p in parts]
        full = torch.cat(tensors, dim=0) if len(tensors) > 1 else tensors[0]
        if tuple(full.shape) != shape:
            raise HelixInputError(
                f"tensor {parts[0]} has shape {tuple(full.shape)}, expected {shape}",
                where=source.where,
                fix="check that config.json matches the weights",
            )
        return full

    return get


def split_invariant_seed(seed: int, parts: list[str]) -> int:
    """The generator seed of a tensor made of HF tensors `parts` (one home for the rule)."""
    return seed * 1_000_003 + zlib.crc32("|".join(parts).encode())


def split_invariant_tensors(seed: int, device: torch.device, dtype: torch.dtype, std: float = 0.02):
    """Random full tensors that depend only on their names: unit norms, N(0, std) elsewhere.

    The same values as `helix.runtime.processes.init_split_invariant_weights` gives an unsharded stage.
    """

    def get(name: str, parts: list[str], shape: tuple[int, ...]) -> torch.Tensor:
        if name.endswith("layernorm.weight") or name == "norm.weight":
            return torch.ones(shape, dtype=dtype, device=device)
        generator = torch.Generator(device=device).manual_seed(split_invariant_seed(seed, parts))
        return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=generator)

    return get


def model_dir_tensors(model_dir: str | Path) -> FullTensorFn:
    return checkpoint_tensors(SafetensorsSource(Path(model_dir)))


def shard_tensor(name: str, full: torch.Tensor, config: ModelConfig, shard: RankShard) -> torch.Tensor:
    """The rows / columns of `full` (engine parameter `name` of the full model) that `shard` holds."""
    d = config.head_dim
    (q0, q1), (k0, k1), (i0, i1) = shard.q_heads, shard.kv_heads, shard.mlp
    if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
        q, k, v = full.split([config.q_size, config.kv_size, config.kv_size], dim=0)
        return torch.cat([q[q0 * d : q1 * d], k[k0 * d : k1 * d], v[k0 * d : k1 * d]], dim=0)
    if name.endswith("o_proj.weight"):
        return full[:, q0 * d : q1 * d]
    if name.endswith("gate_up_proj.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate[i0:i1], up[i0:i1]], dim=0)
    if name.endswith("down_proj.weight"):
        return full[:, i0:i1]
    if name == "lm_head.weight" and shard.vocab is not None:
        return full[shard.vocab[0] : shard.vocab[1]]
    return full  # embedding, norms: replicated


@torch.no_grad()
def build_rank_stage(
    config: ModelConfig,
    layer_range: LayerRange,
    shard: RankShard,
    group: TPGroup | None,
    full_tensor: FullTensorFn,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    max_positions: int | None = None,
) -> LlamaStage:
    """Rank `shard.rank`'s stage on `device`; `group` None only for a one-rank stage (no collectives)."""
    layer_range.validate(config.num_layers)
    positions = max_positions or config.max_position_embeddings
    with torch.device("meta"):
        full_meta = LlamaStage(config, layer_range, positions)
        model = LlamaStage(local_config(config, shard), layer_range, positions)
        if model.lm_head is not None and shard.vocab is not None:
            model.lm_head = Linear(config.hidden_size, shard.vocab[1] - shard.vocab[0], bias=False)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.rotary.reset_tables()
    full_shapes = {name: tuple(p.shape) for name, p in full_meta.named_parameters()}
    params = dict(model.named_parameters())
    for name, parts in full_meta.hf_weight_names().items():
        piece = shard_tensor(name, full_tensor(name, parts, full_shapes[name]), config, shard)
        assert tuple(piece.shape) == tuple(params[name].shape), (name, piece.shape, params[name].shape)
        params[name].copy_(piece)
    if shard.world > 1:
        assert group is not None, "a stage split over several ranks needs their process group"
        install_collectives(model, group, vocab_parallel=shard.vocab is not None)
    return model.eval().requires_grad_(False)


def install_collectives(model: LlamaStage, group: TPGroup, *, vocab_parallel: bool) -> None:
    """All-reduce after each attention output and MLP; all-gather of vocabulary-parallel logits."""

    def all_reduce(_module, _args, out: torch.Tensor) -> torch.Tensor:
        group.all_reduce(out)
        return out

    for layer in model.layers:
        layer.self_attn.o_proj.register_forward_hook(all_reduce)
        layer.mlp.down_proj.register_forward_hook(all_reduce)
    if vocab_parallel and model.lm_head is not None:
        model.lm_head.register_forward_hook(lambda _m, _a, out: group.all_gather_last_dim(out))
