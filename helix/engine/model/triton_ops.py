"""Fused element-wise kernels for the CUDA path (Triton; imported only when the model uses them).

Decode steps are short: each PyTorch element-wise op is a kernel of a few microseconds, and RMSNorm
and RoPE alone are about twenty of them per layer. These kernels do each in one pass:
- `rms_norm`: y = w * (x / sqrt(mean(x^2) + eps)), in float32 inside;
- `add_rms_norm`: h = x + residual (rounded to the model's dtype, as the unfused add is), then
  rms_norm(h); returns both, so the residual adds of a layer cost no kernel of their own;
- `silu_mul`: silu(gate) * up of the fused gate/up projection;
- `rope_store_kv`: rotate q and k of the fused qkv projection and write k and v into the paged cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, stride_x, stride_out, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (x * rstd).to(w.dtype) * w
    tl.store(out_ptr + row * stride_out + cols, y, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # [T, H] -> [T, H]
    out = torch.empty_like(x)
    block = triton.next_power_of_2(x.shape[-1])
    _rms_norm_kernel[(x.shape[0],)](
        x, weight, out, x.stride(0), out.stride(0), x.shape[-1], eps, BLOCK=block, num_warps=8
    )
    return out


@triton.jit
def _add_rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, sum_ptr, stride_x, stride_r, n_cols, eps, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
    h = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
    tl.store(sum_ptr + row * n_cols + cols, h, mask=mask)
    h32 = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h32 * h32, 0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * n_cols + cols, (h32 * rstd).to(w.dtype) * w, mask=mask)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:  # [T, H], [T, H] -> (rms_norm(x + residual), x + residual)
    num_tokens, n_cols = x.shape
    out = torch.empty(num_tokens, n_cols, dtype=x.dtype, device=x.device)
    total = torch.empty_like(out)
    block = triton.next_power_of_2(n_cols)
    _add_rms_norm_kernel[(num_tokens,)](
        x, residual, weight, out, total, x.stride(0), residual.stride(0), n_cols, eps,
        BLOCK=block, num_warps=8,
    )  # fmt: skip
    return out, total


@triton.jit
def _silu_mul_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:  # [T, 2 * I] -> [T, I]
    num_tokens, n_cols = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(num_tokens, n_cols, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    grid = (num_tokens, triton.cdiv(n_cols, block))
    _silu_mul_kernel[grid](gate_up, out, n_cols, gate_up.stride(0), out.stride(0), BLOCK=block, num_warps=4)
    return out


@triton.jit
def _rotate_rows(src, dst, heads_pad: tl.constexpr, num_heads, head_stride, cos, sin, HALF: tl.constexpr):
    h = tl.arange(0, heads_pad)[:, None]
    d = tl.arange(0, HALF)[None, :]
    mask = h < num_heads
    x1 = tl.load(src + h * head_stride + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + h * head_stride + HALF + d, mask=mask, other=0.0).to(tl.float32)
    ty = dst.dtype.element_ty
    tl.store(dst + h * head_stride + d, (x1 * cos - x2 * sin).to(ty), mask=mask)
    tl.store(dst + h * head_stride + HALF + d, (x2 * cos + x1 * sin).to(ty), mask=mask)


@triton.jit
def _rope_store_kv_kernel(
    qkv_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    positions_ptr,
    slots_ptr,
    cos_ptr,
    sin_ptr,
    stride_qkv,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    HALF: tl.constexpr = HEAD_DIM // 2
    t = tl.program_id(0)
    pos = tl.load(positions_ptr + t)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF)[None, :]
    cos = tl.load(cos_ptr + pos * HALF + d)
    sin = tl.load(sin_ptr + pos * HALF + d)
    row = qkv_ptr + t * stride_qkv
    q_size: tl.constexpr = NUM_HEADS * HEAD_DIM
    kv_size: tl.constexpr = NUM_KV_HEADS * HEAD_DIM
    _rotate_rows(row, q_ptr + t * q_size, HEADS_PAD, NUM_HEADS, HEAD_DIM, cos, sin, HALF)
    _rotate_rows(
        row + q_size, k_cache_ptr + slot * kv_size, KV_HEADS_PAD, NUM_KV_HEADS, HEAD_DIM, cos, sin, HALF
    )
    e = tl.arange(0, KV_HEADS_PAD * HEAD_DIM)
    v = tl.load(row + q_size + kv_size + e, mask=e < kv_size)
    tl.store(v_cache_ptr + slot * kv_size + e, v.to(v_cache_ptr.dtype.element_ty), mask=e < kv_size)


def rope_store_kv(
    qkv: torch.Tensor,  # [T, (Hq + 2 Hkv) * D], rows contiguous
    positions: torch.Tensor,  # [T] int64
    slot_mapping: torch.Tensor,  # [T] int64
    cos: torch.Tensor,  # [max_positions, D / 2] float32
    sin: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D], contiguous
    v_cache: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> torch.Tensor:  # rotated q [T, Hq, D]
    """Rotate q and k, write k and v to their cache slots; returns q."""
    assert qkv.stride(1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    q = torch.empty(qkv.shape[0], num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    _rope_store_kv_kernel[(qkv.shape[0],)](
        qkv,
        q,
        k_cache,
        v_cache,
        positions,
        slot_mapping,
        cos,
        sin,
        qkv.stride(0),
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEADS_PAD=triton.next_power_of_2(num_heads),
        KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM=head_dim,
        num_warps=4,
    )
    return q
