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


@pytest.mark.parametrize("splits", [1, 3, 16])
def test_split_k_decode_matches_sdpa(splits):
    from helix.engine.model.triton_attention import paged_decode_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(1)
    k_cache = torch.randn(64, 16, 2, 64, device=device, generator=generator)
    v_cache = torch.randn_like(k_cache)
    perm = torch.randperm(64, generator=generator, device=device).tolist()
    lens = [1, 200, 33, 129]
    tables = torch.tensor([perm[i * 16 : (i + 1) * 16] for i in range(4)], dtype=torch.int32, device=device)
    context_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    q = torch.randn(4, 8, 64, device=device, generator=generator)
    expected = decode_attention_sdpa(q, k_cache, v_cache, tables, context_lens, max(lens), 0.125)
    got = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, 0.125, splits=splits)
    torch.testing.assert_close(got, expected, atol=2e-2 if device == "cuda" else 1e-4, rtol=0)


def test_varlen_prefill_matches_per_chunk_sdpa():
    """Ragged chunks, some with cached prefixes (chunked prefill / prefix hits), in one launch."""
    from helix.engine.batch import PrefillSegment
    from helix.engine.model.attention import prefill_attention
    from helix.engine.model.triton_attention import varlen_prefill_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(2)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    k_cache = torch.randn(96, 16, 2, 64, device=device, generator=generator).to(dtype)
    v_cache = torch.randn(96, 16, 2, 64, device=device, generator=generator).to(dtype)
    perm = torch.randperm(96, generator=generator, device=device).tolist()
    chunks = [(0, 70), (40, 9), (0, 1), (100, 130)]  # (cached, new)
    tables = torch.tensor([perm[i * 24 : (i + 1) * 24] for i in range(4)], dtype=torch.int32, device=device)
    total = sum(n for _, n in chunks)
    q = torch.randn(total, 8, 64, device=device, generator=generator).to(dtype)
    starts, expected, row = [], [], 0
    for index, (cached, new) in enumerate(chunks):
        starts.append(row)
        pos = torch.arange(cached, cached + new, device=device)
        slots = tables[index].long()[pos // 16] * 16 + pos % 16
        k, v = k_cache.view(-1, 2, 64)[slots], v_cache.view(-1, 2, 64)[slots]
        seg = PrefillSegment(row, new, cached, tables[index].long() if cached else None)
        expected.append(prefill_attention(q[row : row + new], k, v, k_cache, v_cache, seg, 0.125))
        row += new

    def ints(values):
        return torch.tensor(values, dtype=torch.int32, device=device)

    got = varlen_prefill_attention(
        q, k_cache, v_cache, ints(starts), ints([n for _, n in chunks]), ints([c for c, _ in chunks]),
        tables, max(n for _, n in chunks), 0.125,
    )  # fmt: skip
    torch.testing.assert_close(got.float(), torch.cat(expected).float(), atol=3e-2, rtol=0)
