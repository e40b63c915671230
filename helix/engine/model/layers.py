"""Building blocks: RMSNorm, rotary position embedding (with LLaMA-3 scaling), the SwiGLU MLP.

Tensors are packed over tokens: `[T, ...]` with T the number of tokens in the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from helix.engine.config import RopeScaling


class Linear(nn.Linear):
    """`nn.Linear` whose CUDA path may use the measured split-K kernels for few rows (`skinny`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.skinny = False  # set by the runner on CUDA (see `helix.engine.model.triton_gemm`)

    def forward(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        if self.skinny:
            from helix.engine.model.triton_gemm import linear

            return linear(x, self.weight, self.bias, out_dtype)
        out = F.linear(x, self.weight, self.bias)
        return out if out_dtype is None or out.dtype == out_dtype else out.to(out_dtype)


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in float32 like the reference implementation."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.fused = False  # one Triton kernel (set by the runner on CUDA)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        if self.fused:
            from helix.engine.model.triton_ops import rms_norm

            return rms_norm(x, self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual); one kernel on the fused path."""
        if self.fused:
            from helix.engine.model.triton_ops import add_rms_norm

            return add_rms_norm(x, residual, self.weight, self.eps)
        total = x + residual
        return self.forward(total), total


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] (float32), LLaMA-3 scaled when `scaling` is given."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    if scaling is None:
        return inv_freq
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Holds cos/sin tables [max_positions, head_dim / 2] (float32) and rotates q and k."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling | None):
        super().__init__()
        self.head_dim, self.max_positions = head_dim, max_positions
        self.theta, self.scaling = theta, scaling
        self.register_buffer("cos", torch.empty(max_positions, head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(max_positions, head_dim // 2), persistent=False)
        self.reset_tables()

    @torch.no_grad()
    def reset_tables(self) -> None:
        """(Re)compute the tables on the buffers' device (call after `to_empty`)."""
        if self.cos.is_meta:
            return
        device = self.cos.device
        shape = (self.max_positions, self.head_dim // 2)
        self.cos = torch.empty(shape, dtype=torch.float32, device=device)  # float32 whatever the model
        self.sin = torch.empty(shape, dtype=torch.float32, device=device)
        inv_freq = rope_inv_freq(self.head_dim, self.theta, self.scaling)
        positions = torch.arange(self.max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq).to(device)
        self.cos.copy_(freqs.cos())
        self.sin.copy_(freqs.sin())

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] int64; q [T, Hq, D], k [T, Hkv, D] -> rotated (same shapes and dtype)."""
        cos = self.cos[positions].to(q.dtype).unsqueeze(1)  # [T, 1, D/2]
        sin = self.sin[positions].to(q.dtype).unsqueeze(1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class SwiGLUMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one projection [2 * I, H]."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)
        self.fused = False  # one Triton kernel for silu(gate) * up (set by the runner on CUDA)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, H] -> [T, H]
        if self.fused:
            from helix.engine.model.triton_ops import silu_mul

            return self.down_proj(silu_mul(self.gate_up_proj(x)))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
