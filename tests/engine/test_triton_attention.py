"""The Triton paged decode kernel against the gather + SDPA path (needs Triton; CUDA or interpreter)."""

from __future__ import annotations

import os

import pytest
import torch

from helix.engine.model.attention import decode_attention_sdpa

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), [(8, 2, 64), (9, 3, 64), (4, 4, 32)])
def test_paged_decode_kernel_matches_sdpa(num_heads, num_kv_heads, head_dim):
    from helix.engine.model.triton_attention import paged_decode_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    num_blocks, block_size, lens = 40, 16, [1, 17, 100, 64]
    k_cache = torch.randn(num_blocks, block_size, num_kv_heads, head_dim, device=device, generator=generator)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(num_blocks, generator=generator, device=device).tolist()
    tables = torch.tensor([perm[i * 8 : (i + 1) * 8] for i in range(4)], dtype=torch.int32, device=device)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn(4, num_heads, head_dim, device=device, generator=generator)
    expected = decode_attention_sdpa(q, k_cache, v_cache, tables, context_lens, max(lens), head_dim**-0.5)
    got = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, head_dim**-0.5)
    torch.testing.assert_close(got, expected, atol=2e-2 if device == "cuda" else 1e-4, rtol=0)
