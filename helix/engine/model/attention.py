"""Grouped-query attention over a paged KV cache.

Cache layout per layer: k_cache, v_cache [num_blocks + 1, block_size, Hkv, D]; the last block is a
scratch block that padded rows of a captured decode graph write to. On CUDA (`triton` backend) all
prompt chunks of a step attend in one varlen kernel that reads K/V from the paged cache, and decode rows
use the split-K paged decode kernel. The reference path (CPU, `sdpa`): each prompt chunk attends with
SDPA (causal; with an explicit bottom-right mask when part of the prompt is already cached) and decode
rows gather their pages and run one masked SDPA for the whole batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from helix.engine.batch import AttentionMetadata, PrefillSegment
from helix.engine.model.layers import Linear, RotaryEmbedding


class Attention(nn.Module):
    """Fused QKV projection, RoPE, paged-cache write, attention, output projection."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.qkv_proj = Linear(hidden, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = Linear(self.q_size, hidden, bias=False)
        self.scale = head_dim**-0.5
        self.fused = False  # Triton kernels for RoPE + cache write (set by the runner on CUDA)
        self.decode_splits: int | None = None  # context splits of the decode kernel; None: by batch

    def forward(
        self,
        x: torch.Tensor,  # [T, H]
        positions: torch.Tensor,  # [T] int64
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
        rotary: RotaryEmbedding,
    ) -> torch.Tensor:  # [T, H]
        num_tokens = x.shape[0]
        k_cache, v_cache = kv_cache
        if self.fused:
            q, k, v = self._project_fused(x, positions, k_cache, v_cache, meta, rotary)
        else:
            q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(num_tokens, self.num_heads, self.head_dim)
            k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
            v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
            q, k = rotary(positions, q, k)
            write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        out = self._attend(q, k, v, k_cache, v_cache, meta)
        return self.o_proj(out.reshape(num_tokens, self.q_size))

    def _project_fused(self, x, positions, k_cache, v_cache, meta: AttentionMetadata, rotary):
        """One kernel for RoPE and the cache write; prompt rows read their k/v back from the cache."""
        from helix.engine.model.triton_ops import rope_store_kv

        q = rope_store_kv(
            self.qkv_proj(x), positions, meta.slot_mapping, rotary.cos, rotary.sin, k_cache, v_cache,
            self.num_heads, self.num_kv_heads, self.head_dim,
        )  # fmt: skip
        if not meta.num_prefill_tokens or meta.prefill_tables is not None:
            return q, None, None  # decode and the varlen kernel read K/V from the cache
        rows = meta.slot_mapping[: meta.num_prefill_tokens]
        k = k_cache.view(-1, self.num_kv_heads, self.head_dim)[rows]
        v = v_cache.view(-1, self.num_kv_heads, self.head_dim)[rows]
        return q, k, v

    def _attend(self, q, k, v, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        if meta.num_prefill_tokens == 0:
            return self._decode(q, k_cache, v_cache, meta)
        if meta.prefill_tables is not None:
            from helix.engine.model.triton_attention import varlen_prefill_attention

            num_prefill = meta.num_prefill_tokens
            prompt_out = varlen_prefill_attention(
                q[:num_prefill], k_cache, v_cache, meta.prefill_starts, meta.prefill_num_new,
                meta.prefill_num_cached, meta.prefill_tables, meta.max_prefill_new, self.scale,
            )  # fmt: skip
            if meta.decode_context_lens is None:
                return prompt_out
            return torch.cat([prompt_out, self._decode(q[num_prefill:], k_cache, v_cache, meta)])
        out = torch.empty_like(q)
        for seg in meta.prefill:
            rows = slice(seg.start, seg.start + seg.num_new)
            out[rows] = prefill_attention(q[rows], k[rows], v[rows], k_cache, v_cache, seg, self.scale)
        if meta.decode_context_lens is not None:
            rows = slice(meta.num_prefill_tokens, q.shape[0])
            out[rows] = self._decode(q[rows], k_cache, v_cache, meta)
        return out

    def _decode(self, q, k_cache, v_cache, meta: AttentionMetadata) -> torch.Tensor:
        assert meta.decode_block_tables is not None and meta.decode_context_lens is not None
        if meta.decode_backend == "triton":
            from helix.engine.model.triton_attention import paged_decode_attention

            return paged_decode_attention(
                q, k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens, self.scale,
                splits=self.decode_splits,
            )  # fmt: skip
        return decode_attention_sdpa(
            q,
            k_cache,
            v_cache,
            meta.decode_block_tables,
            meta.decode_context_lens,
            meta.max_decode_context_len,
            self.scale,
        )


def write_kv(k_cache, v_cache, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Store new keys/values [T, Hkv, D] at cache slots `slot_mapping` [T]."""
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    k_cache.view(num_slots, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(num_slots, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def _gather_slots(cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """K or V of token positions [0, num_tokens) of one sequence: [num_tokens, Hkv, D]."""
    block_size = cache.shape[1]
    pos = torch.arange(num_tokens, device=cache.device)
    slots = block_table[pos // block_size] * block_size + pos % block_size
    return cache.view(-1, *cache.shape[2:])[slots]


def prefill_attention(q, k, v, k_cache, v_cache, seg: PrefillSegment, scale: float) -> torch.Tensor:
    """Causal attention of a prompt chunk. q [n, Hq, D], k/v [n, Hkv, D] -> [n, Hq, D]."""
    if seg.num_cached == 0:
        return _sdpa(q, k, v, scale, is_causal=True)
    assert seg.block_table is not None
    total = seg.num_cached + seg.num_new
    keys = _gather_slots(k_cache, seg.block_table, total)  # [total, Hkv, D]
    values = _gather_slots(v_cache, seg.block_table, total)
    # Row i (position num_cached + i) sees keys 0 .. num_cached + i.
    mask = torch.ones(seg.num_new, total, dtype=torch.bool, device=q.device).tril(seg.num_cached)
    return _sdpa(q, keys.to(q.dtype), values.to(q.dtype), scale, attn_mask=mask)


def _sdpa(q, k, v, scale: float, **kwargs) -> torch.Tensor:
    """SDPA over one sequence. q [n, Hq, D], k/v [m, Hkv, D] -> [n, Hq, D].

    On CUDA the KV heads are expanded and the call is 4-D without `enable_gqa`, which keeps SDPA on
    its fused (flash / memory-efficient) kernels; the CPU uses grouped-query attention directly.
    """
    if q.is_cuda and k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        scale=scale,
        enable_gqa=k.shape[1] != q.shape[1],
        **kwargs,
    )
    return out[0].transpose(0, 1)


def decode_attention_sdpa(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    context_lens: torch.Tensor,  # [B] int32
    max_context_len: int,
    scale: float,
) -> torch.Tensor:  # [B, Hq, D]
    """One new token per sequence: gather each sequence's pages, mask past its length, one SDPA."""
    batch, block_size = q.shape[0], k_cache.shape[1]
    num_blocks = -(-max_context_len // block_size)
    tables = block_tables[:, :num_blocks].long()
    span = num_blocks * block_size
    keys = k_cache[tables].view(batch, span, *k_cache.shape[2:]).transpose(1, 2)  # [B, Hkv, S, D]
    values = v_cache[tables].view(batch, span, *v_cache.shape[2:]).transpose(1, 2)
    mask = torch.arange(span, device=q.device)[None, :] < context_lens[:, None]  # [B, S]
    out = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        keys.to(q.dtype),
        values.to(q.dtype),
        attn_mask=mask[:, None, None, :],
        scale=scale,
        enable_gqa=True,
    )
    return out.squeeze(2)
