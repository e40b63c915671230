"""Skinny matmuls (decode: few rows, large weights) as split-K Triton kernels, chosen by measurement.

A decode step multiplies M <= 128 rows by every weight matrix once, so its matmuls read the weights
and do little else: the floor is weight bytes over HBM bandwidth. cuBLAS tiles such products into
too few thread blocks when N is small (o_proj, down_proj: N = 4096 gives 32 tiles of 128 on 132
multiprocessors) and reaches 0.76-0.86 of the floor on an H200. Here the K dimension is split across
`split_k` programs as well, each writing an fp32 partial that one small kernel sums (deterministic,
no atomics), so every multiprocessor streams weights.

`linear(x, weight, bias, out_dtype)` measures, the first time it sees a (M, N, K, dtype) shape outside
graph capture, a handful of tile shapes and split factors against cuBLAS (inside a CUDA graph, as a
decode step runs them, over rotating weight copies larger than L2 so that the cache does not flatter
either side) and keeps the fastest; shapes first seen during capture, or that no kernel beats, go to
cuBLAS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.nn import functional as F

from helix.engine.model.kernel_timing import graph_time_ms

MAX_ROWS = 128  # wider products are compute-bound: cuBLAS
L2_FLUSH_BYTES = 256 << 20


@triton.jit
def _gemm_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    M,
    N,
    K_PER_SPLIT,
    stride_xm,
    stride_wn,
    stride_om,
    stride_os,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    k0 = pid_k * K_PER_SPLIT
    x_ptrs = x_ptr + rm[:, None] * stride_xm + (k0 + rk)[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + (k0 + rk)[None, :]
    m_mask = rm[:, None] < M
    n_mask = rn[:, None] < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for _ in range(0, K_PER_SPLIT, BLOCK_K):
        x = tl.load(x_ptrs, mask=m_mask, other=0.0)
        w = tl.load(w_ptrs, mask=n_mask, other=0.0)
        acc += tl.dot(x, tl.trans(w))
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    out_ptrs = out_ptr + pid_k * stride_os + rm[:, None] * stride_om + rn[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask & (rn[None, :] < N))


@triton.jit
def _sum_splits_kernel(
    part_ptr, bias_ptr, out_ptr, total, N, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.load(part_ptr + offs, mask=mask, other=0.0)
    for s in range(1, SPLIT):
        acc += tl.load(part_ptr + s * total + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True, slots=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


def gemm(
    x: torch.Tensor,  # [M, K], rows contiguous
    weight: torch.Tensor,  # [N, K], rows contiguous
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: GemmConfig,
) -> torch.Tensor:  # [M, N]
    """x @ weight.T (+ bias) with one tile shape and split factor."""
    m, k = x.shape
    n = weight.shape[0]
    c = config
    k_per_split = k // c.split_k
    grid = (triton.cdiv(n, c.block_n), c.split_k, triton.cdiv(m, c.block_m))
    out = torch.empty(m, n, dtype=out_dtype, device=x.device)
    if c.split_k == 1 and bias is None:
        target, stride_split = out, 0
    else:
        target = torch.empty(c.split_k, m, n, dtype=torch.float32, device=x.device)
        stride_split = m * n
    _gemm_kernel[grid](
        x, weight, target, m, n, k_per_split, x.stride(0), weight.stride(0), n, stride_split,
        BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, SPLIT=c.split_k,
        num_warps=c.num_warps, num_stages=c.num_stages,
    )  # fmt: skip
    if target is not out:
        total, block = m * n, 1024
        _sum_splits_kernel[(triton.cdiv(total, block),)](
            target, bias if bias is not None else target, out, total, n,
            SPLIT=c.split_k, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4,
        )  # fmt: skip
    return out


def candidate_configs(m: int, n: int, k: int, num_sms: int) -> list[GemmConfig]:
    """Tile shapes and split factors worth timing for an [m, k] x [k, n] product."""
    block_m = min(max(16, triton.next_power_of_2(m)), 64 if m <= 64 else 128)
    out: list[GemmConfig] = []
    shapes = ((32, 128, 4, 4), (64, 128, 4, 4), (64, 256, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3))
    for block_n, block_k, warps, stages in shapes:
        if k % block_k:
            continue
        tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
        splits = [s for s in (1, 2, 4, 8, 16) if (k // block_k) % s == 0]
        fill = [s for s in splits if tiles * s >= num_sms] or splits[-1:]
        for split in sorted({fill[0], *(s for s in fill[1:2])}):
            out.append(GemmConfig(block_m, block_n, block_k, split, warps, stages))
    return out


class GemmChooser:
    """Per shape, the fastest of cuBLAS and the candidate kernels, measured once (see module docstring)."""

    def __init__(self) -> None:
        self.choices: dict[tuple, GemmConfig | None] = {}
        self.timings: dict[tuple, dict[str, float]] = {}
        self.tuning = False  # measure unseen shapes (set while decode graphs warm up)

    def choose(self, x: torch.Tensor, weight: torch.Tensor, bias, out_dtype) -> GemmConfig | None:
        m, k = x.shape
        key = (m, weight.shape[0], k, x.dtype, out_dtype, bias is not None)
        if key in self.choices:
            return self.choices[key]
        if not self.tuning or torch.cuda.is_current_stream_capturing():
            return None  # steps outside the decode graphs' warm-up: never a measuring stall
        self.choices[key] = self._measure(key, x, weight, bias, out_dtype)
        return self.choices[key]

    def _measure(self, key, x, weight, bias, out_dtype) -> GemmConfig | None:
        m, n, k = key[:3]
        copies = max(1, min(8, math.ceil(L2_FLUSH_BYTES / (weight.numel() * weight.element_size()))))
        weights = [weight if i == 0 else weight.clone() for i in range(copies)]

        def cublas(a, w):
            return F.linear(a, w, bias).to(out_dtype)

        timings = {"cublas": graph_time_ms(lambda i: cublas(x, weights[i % copies]))}
        best, best_ms = None, timings["cublas"]
        num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        reference = cublas(x, weight).float()
        for config in candidate_configs(m, n, k, num_sms):
            try:
                got = gemm(x, weight, bias, out_dtype, config).float()
                error = (got - reference).norm() / reference.norm().clamp_min(1e-30)
                if not bool(error < 2e-2):
                    continue
                ms = graph_time_ms(lambda i, c=config: gemm(x, weights[i % copies], bias, out_dtype, c))
            except (triton.runtime.errors.OutOfResources, RuntimeError):
                continue
            timings[str(config)] = ms
            if ms < best_ms:
                best, best_ms = config, ms
        self.timings[key] = timings
        weights.clear()
        return best


#: One chooser per process: kernel choices depend only on the device and the shape (like cuBLAS's
#: own heuristics cache), and every stage in the process shares them.
CHOOSER = GemmChooser()


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, out_dtype=None
) -> torch.Tensor:
    """x @ weight.T + bias through the fastest measured kernel for the shape; x [M, K]."""
    out_dtype = out_dtype or x.dtype
    if x.shape[0] <= MAX_ROWS and x.is_contiguous() and weight.is_contiguous():
        config = CHOOSER.choose(x, weight, bias, out_dtype)
        if config is not None:
            return gemm(x, weight, bias, out_dtype, config)
    out = F.linear(x, weight, bias)
    return out if out.dtype == out_dtype else out.to(out_dtype)
