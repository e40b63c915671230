"""The fused Triton kernels against the PyTorch modules (needs Triton; CUDA or interpreter)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

from helix.engine.model.attention import write_kv
from helix.engine.model.layers import RMSNorm, RotaryEmbedding

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
TOL = {"atol": 3e-2, "rtol": 3e-2} if DEVICE == "cuda" else {"atol": 1e-5, "rtol": 1e-5}


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, DTYPE)


def test_rms_norm_and_silu_mul():
    from helix.engine.model.triton_ops import rms_norm, silu_mul

    norm = RMSNorm(96, 1e-5).to(DEVICE, DTYPE)
    norm.weight.data = _randn(96, seed=1)
    x = _randn(5, 96)
    torch.testing.assert_close(rms_norm(x, norm.weight, 1e-5), norm(x), **TOL)
    gate_up = _randn(3, 2 * 80, seed=2)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gate_up), F.silu(gate) * up, **TOL)


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), [(8, 2, 64), (9, 3, 64)])
def test_rope_store_kv(num_heads, num_kv_heads, head_dim):
    from helix.engine.model.triton_ops import rope_store_kv

    rotary = RotaryEmbedding(head_dim, 64, 10000.0, None).to(DEVICE)
    rotary.reset_tables()
    tokens, q_size, kv_size = 6, num_heads * head_dim, num_kv_heads * head_dim
    qkv = _randn(tokens, q_size + 2 * kv_size, seed=3)
    positions = torch.tensor([0, 1, 7, 30, 63, 5], device=DEVICE)
    slots = torch.tensor([3, 9, 0, 17, 30, 4], device=DEVICE)
    cache_shape = (4, 8, num_kv_heads, head_dim)
    k_cache, v_cache = (
        torch.zeros(cache_shape, dtype=DTYPE, device=DEVICE),
        torch.zeros_like(torch.empty(cache_shape, dtype=DTYPE, device=DEVICE)),
    )
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
    q_ref, k_rot = rotary(
        positions, q.reshape(tokens, num_heads, head_dim), k.reshape(tokens, num_kv_heads, head_dim)
    )
    write_kv(k_ref, v_ref, k_rot, v.reshape(tokens, num_kv_heads, head_dim), slots)
    q_out = rope_store_kv(
        qkv, positions, slots, rotary.cos, rotary.sin, k_cache, v_cache, num_heads, num_kv_heads, head_dim
    )
    torch.testing.assert_close(q_out, q_ref, **TOL)
    torch.testing.assert_close(k_cache, k_ref, **TOL)
    torch.testing.assert_close(v_cache, v_ref, **TOL)


def test_add_rms_norm_equals_add_then_norm():
    from helix.engine.model.triton_ops import add_rms_norm

    norm = RMSNorm(96, 1e-5).to(DEVICE, DTYPE)
    norm.weight.data = _randn(96, seed=3)
    x, residual = _randn(5, 96, seed=4), _randn(5, 96, seed=5)
    out, total = add_rms_norm(x, residual, norm.weight, 1e-5)
    torch.testing.assert_close(total, x + residual, atol=0, rtol=0)
    torch.testing.assert_close(out, norm(x + residual), **TOL)


@pytest.mark.parametrize("rows", [1, 7, 64, 128])
def test_split_k_gemm_matches_linear(rows):
    from helix.engine.model.triton_gemm import candidate_configs, gemm

    weight, x = _randn(384, 512, seed=6), _randn(rows, 512, seed=7)
    bias = _randn(384, seed=8)
    want = F.linear(x.float(), weight.float(), bias.float())
    for config in candidate_configs(rows, 384, 512, num_sms=132):
        got = gemm(x, weight, bias, torch.float32, config)
        torch.testing.assert_close(got, want, atol=5e-2, rtol=2e-2)
        assert gemm(x, weight, None, DTYPE, config).dtype == DTYPE
