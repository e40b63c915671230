"""Attention kernels over the paged KV cache (Triton; CUDA only, imported when Triton is available).

- `paged_decode_attention`: one new token per sequence (flash-decoding). Programs are (sequence, KV head,
  split): each loads the query heads of its KV group [G, D] once, walks its share of the context in
  tiles of BLOCK_N tokens (looking each token's block up in the block table) with an online softmax, and
  writes an fp32 partial and its log-sum-exp; a second kernel merges the splits. K/V are read from HBM
  exactly once and nothing is gathered. Splitting the context keeps every multiprocessor busy when the
  batch is small (batch 1 has only `Hkv` sequence-heads).
- `varlen_prefill_attention`: the prompt chunks of a step, any lengths, in one launch. Programs are
  (query tile, query head, chunk); keys and values come from the paged cache (the new tokens' K/V are
  written there first), so a chunk whose first tokens are already cached (chunked prefill, prefix-cache
  hits) needs no dense mask and no gather: row i of a chunk with c cached tokens sees keys [0, c + i].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    tables_ptr,
    lens_ptr,
    out_ptr,  # [B, Hq, SPLITS, D] float32
    lse_ptr,  # [B, Hq, SPLITS] float32
    scale,
    stride_qb,
    stride_qh,
    stride_kblock,
    stride_kslot,
    stride_kh,
    stride_tb,
    NUM_HEADS: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLITS,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(lens_ptr + seq)
    per_split = tl.cdiv(tl.cdiv(context_len, SPLITS), BLOCK_N) * BLOCK_N
    begin = split * per_split
    end = tl.minimum(begin + per_split, context_len)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    g_mask = g < GROUP
    heads = kv_head * GROUP + g
    q_offs = seq * stride_qb + heads[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=g_mask[:, None], other=0.0)
    m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
    for start in range(begin, end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = n < end
        block = tl.load(tables_ptr + seq * stride_tb + n // BLOCK_SIZE, mask=n_mask, other=0)
        offs = block.to(tl.int64) * stride_kblock + (n % BLOCK_SIZE) * stride_kslot + kv_head * stride_kh
        k = tl.load(k_ptr + offs[:, None] + d[None, :], mask=n_mask[:, None], other=0.0)
        v = tl.load(v_ptr + offs[:, None] + d[None, :], mask=n_mask[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale  # [GROUP_PAD, BLOCK_N] float32
        s = tl.where(n_mask[None, :], s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    row = (seq * NUM_HEADS + heads) * SPLITS + split  # [GROUP_PAD]
    safe_l = tl.where(l_i > 0, l_i, 1.0)
    tl.store(out_ptr + row[:, None] * HEAD_DIM + d[None, :], acc / safe_l[:, None], mask=g_mask[:, None])
    lse = tl.where(l_i > 0, m_i + tl.log(safe_l), -1.0e30)
    tl.store(lse_ptr + row, lse, mask=g_mask)


@triton.jit
def _merge_splits_kernel(
    part_ptr, lse_ptr, out_ptr, stride_ob, stride_oh, NUM_HEADS: tl.constexpr, SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    base = (seq * NUM_HEADS + head) * SPLITS
    lse = tl.load(lse_ptr + base + s, mask=s < SPLITS, other=-1.0e30)
    m = tl.max(lse, 0)
    w = tl.where(s < SPLITS, tl.exp(lse - m), 0.0)
    part = tl.load(part_ptr + (base + s)[:, None] * HEAD_DIM + d[None, :], mask=(s < SPLITS)[:, None])
    out = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + d, out.to(out_ptr.dtype.element_ty))


def decode_splits(batch: int, num_kv_heads: int, num_sms: int, max_splits: int = 16) -> int:
    """Context splits per sequence so that about four programs run per multiprocessor."""
    want = -(-4 * num_sms // max(1, batch * num_kv_heads))
    return max(1, min(max_splits, triton.next_power_of_2(want)))


@dataclass(frozen=True, slots=True)
class DecodeConfig:
    splits: int
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2


class DecodeChooser:
    """Per decode shape, the fastest of a few tile shapes and split counts, measured once (opt-in:
    `enabled`; a choice that differs between processes would change results in the last bits).

    Measured outside graph capture, inside a CUDA graph, on a synthetic cache of `CONTEXT` tokens per
    sequence (the captured graphs serve every context length, so one representative length decides).
    """

    CONTEXT = 512

    def __init__(self) -> None:
        self.choices: dict[tuple, DecodeConfig] = {}
        self.timings: dict[tuple, dict[str, float]] = {}
        self.enabled = False  # off: the default shape, the same in every process (same numerics)

    def choose(self, q: torch.Tensor, k_cache: torch.Tensor) -> DecodeConfig:
        batch, num_heads, head_dim = q.shape
        key = (batch, num_heads, *k_cache.shape[1:], q.dtype)
        if key in self.choices:
            return self.choices[key]
        if not q.is_cuda:  # Triton's interpreter (tests): no timing
            return DecodeConfig(decode_splits(batch, k_cache.shape[2], 132))
        num_sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        default = DecodeConfig(decode_splits(batch, k_cache.shape[2], num_sms))
        if not self.enabled or torch.cuda.is_current_stream_capturing():
            return default
        self.choices[key] = self._measure(key, q, k_cache, default)
        return self.choices[key]

    def _measure(self, key, q, k_cache, default: DecodeConfig) -> DecodeConfig:
        from helix.engine.model.kernel_timing import graph_time_ms

        batch, _, head_dim = q.shape
        block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
        per_seq = -(-self.CONTEXT // block_size)
        shape = (batch * per_seq, block_size, num_kv_heads, head_dim)
        k = torch.randn(shape, dtype=q.dtype, device=q.device)
        v = torch.randn_like(k)
        tables = torch.randperm(batch * per_seq, device=q.device).int().view(batch, per_seq)
        lens = torch.full((batch,), self.CONTEXT, dtype=torch.int32, device=q.device)
        qs = torch.randn_like(q)
        splits = sorted({max(1, default.splits // 2), default.splits, min(32, 2 * default.splits)})
        timings, best, best_ms = {}, default, float("inf")
        for block_n in (32, 64, 128):
            for warps, stages in ((4, 2), (4, 3), (8, 3)):
                for split in splits:
                    config = DecodeConfig(split, block_n, warps, stages)
                    try:
                        ms = graph_time_ms(
                            lambda _, c=config: paged_decode_attention(qs, k, v, tables, lens, 1.0, config=c)
                        )
                    except (triton.runtime.errors.OutOfResources, RuntimeError):
                        continue
                    timings[str(config)] = ms
                    if ms < best_ms:
                        best, best_ms = config, ms
        self.timings[key] = timings
        return best


#: One chooser per process (kernel choices depend only on the device and the shape).
DECODE_CHOOSER = DecodeChooser()


def paged_decode_attention(
    q: torch.Tensor,  # [B, Hq, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    context_lens: torch.Tensor,  # [B] int32, >= 1
    scale: float,
    splits: int | None = None,
    config: DecodeConfig | None = None,
) -> torch.Tensor:  # [B, Hq, D]
    """Attention of one new token per sequence over its paged context.

    `config` fixes the kernel's shape; otherwise `splits` (if given) with the default tiles, else
    the measured choice for this shape (`DECODE_CHOOSER`)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1 and q.stride(-1) == 1
    if config is None:
        config = DecodeConfig(splits) if splits is not None else DECODE_CHOOSER.choose(q, k_cache)
    splits = config.splits
    part = torch.empty(batch, num_heads, splits, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(batch, num_heads, splits, dtype=torch.float32, device=q.device)
    _paged_decode_kernel[(batch, num_kv_heads, splits)](
        q, k_cache, v_cache, block_tables, context_lens, part, lse, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0),
        NUM_HEADS=num_heads, BLOCK_SIZE=k_cache.shape[1], GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_N=config.block_n,
        SPLITS=splits, num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    out = torch.empty_like(q)
    _merge_splits_kernel[(batch, num_heads)](
        part, lse, out, out.stride(0), out.stride(1), NUM_HEADS=num_heads, SPLITS=splits,
        SPLITS_PAD=max(2, triton.next_power_of_2(splits)), HEAD_DIM=head_dim, num_warps=1,
    )  # fmt: skip
    return out


@triton.jit
def _varlen_prefill_kernel(
    q_ptr,  # [T, Hq, D]
    k_ptr,
    v_ptr,
    out_ptr,  # [T, Hq, D]
    starts_ptr,  # [S] int32: first packed row of each chunk
    num_new_ptr,  # [S] int32
    num_cached_ptr,  # [S] int32
    tables_ptr,  # [S, max_blocks] int32
    scale,
    stride_qt,
    stride_qh,
    stride_kblock,
    stride_kslot,
    stride_kh,
    stride_tb,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    chunk = tl.program_id(2)
    num_new = tl.load(num_new_ptr + chunk)
    if tile * BLOCK_M >= num_new:
        return
    start_row = tl.load(starts_ptr + chunk)
    cached = tl.load(num_cached_ptr + chunk)
    kv_head = head // GROUP
    i = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # row within the chunk
    d = tl.arange(0, HEAD_DIM)
    i_mask = i < num_new
    rows = (start_row + i).to(tl.int64)
    q_offs = rows[:, None] * stride_qt + head * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=i_mask[:, None], other=0.0)
    pos = cached + i  # absolute position of each query row
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    last_key = tl.minimum(cached + (tile + 1) * BLOCK_M, cached + num_new)  # exclusive
    full_end = ((cached + tile * BLOCK_M) // BLOCK_N) * BLOCK_N  # tiles before this need no mask
    for start in range(0, last_key, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        n_mask = n < last_key
        block = tl.load(tables_ptr + chunk * stride_tb + n // BLOCK_SIZE, mask=n_mask, other=0)
        offs = block.to(tl.int64) * stride_kblock + (n % BLOCK_SIZE) * stride_kslot + kv_head * stride_kh
        k = tl.load(k_ptr + offs[:, None] + d[None, :], mask=n_mask[:, None], other=0.0)
        v = tl.load(v_ptr + offs[:, None] + d[None, :], mask=n_mask[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        if start + BLOCK_N > full_end:
            s = tl.where((n[None, :] <= pos[:, None]) & n_mask[None, :], s, -1.0e30)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / l_i[:, None]
    o_ptrs = out_ptr + rows[:, None] * stride_ot + head * stride_oh + d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=i_mask[:, None])


def varlen_prefill_attention(
    q: torch.Tensor,  # [T, Hq, D]: the prompt rows of the step, packed
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D] (new K/V already written)
    v_cache: torch.Tensor,
    starts: torch.Tensor,  # [S] int32
    num_new: torch.Tensor,  # [S] int32
    num_cached: torch.Tensor,  # [S] int32
    block_tables: torch.Tensor,  # [S, max_blocks] int32
    max_new: int,
    scale: float,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal attention of every prompt chunk of a step in one launch (see the module docstring)."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    out = torch.empty_like(q)
    grid = (triton.cdiv(max_new, block_m), num_heads, starts.shape[0])
    _varlen_prefill_kernel[grid](
        q, k_cache, v_cache, out, starts, num_new, num_cached, block_tables, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=2,
    )  # fmt: skip
    return out
