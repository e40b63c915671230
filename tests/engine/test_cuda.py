"""The CUDA paths (bf16, Triton decode, CUDA graphs) against the float32 CPU engine. Needs a GPU."""

from __future__ import annotations

import pytest
import torch

from helix.engine import EngineConfig, LayerRange, ModelRunner, SeqChunk, StepBatch, build_stage

from .conftest import TinyModel, run_chain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _runners(model: TinyModel, device: str, dtype, **kwargs) -> list[ModelRunner]:
    config = EngineConfig(**({"num_kv_blocks": 64} | kwargs))
    return [
        ModelRunner(
            build_stage(model.config, LayerRange(a, b), device=device, dtype=dtype, source=model.source),
            config,
        )
        for a, b in [(0, 3), (3, 6)]
    ]


def _decode_logits(runners, prompts, num_steps, device):
    batch = StepBatch(tuple(SeqChunk(i, 0, len(p)) for i, p in enumerate(prompts)))
    logits = run_chain(runners, batch, torch.cat(prompts).to(device))
    out = [logits.float().cpu()]
    generator = torch.Generator().manual_seed(1)  # the same decode tokens on every path
    for step in range(num_steps):
        tokens = torch.randint(0, 320, (len(prompts),), generator=generator)
        batch = StepBatch(tuple(SeqChunk(i, len(p) + step, 1) for i, p in enumerate(prompts)))
        out.append(run_chain(runners, batch, tokens.to(device)).float().cpu())
    return out


def test_graphs_and_triton_match_cpu_reference(tiny_llama: TinyModel):
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 320, (n,), generator=generator) for n in (5, 33, 17)]
    reference = _decode_logits(tiny_llama.runners([(0, 3), (3, 6)]), prompts, 4, "cpu")
    graphed = _runners(tiny_llama, "cuda", torch.bfloat16, max_graph_batch_size=8)
    assert graphed[0].graphs is not None and graphed[0].decode_backend == "triton"
    eager = _runners(tiny_llama, "cuda", torch.bfloat16, use_cuda_graphs=False)
    for runners in (graphed, eager):
        got = _decode_logits(runners, prompts, 4, "cuda")
        for want, have in zip(reference, got, strict=True):
            error = (have - want).norm() / want.norm()
            assert error < 2e-2, error


def test_capacity_from_gpu_memory(tiny_llama: TinyModel):
    stage = build_stage(tiny_llama.config, LayerRange(0, 6), device="cuda", dtype=torch.bfloat16)
    runner = ModelRunner(stage, EngineConfig(gpu_memory_utilization=0.05, use_cuda_graphs=False))
    assert runner.block_manager.num_blocks > 100
