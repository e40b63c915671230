"""Engine benchmark: decode and prefill of a LLaMA-3-8B-shaped model against the HBM and matmul rooflines.

Random weights (bf16, or --dtype float16), one stage holding all layers and the same model as 4
stages back to back. Measured in the same run: HBM bandwidth (a 4 GiB device-to-device copy, bytes
read + written) and peak matmul FLOP/s (8192^3). Decode roofline = bytes one step must read (all
weights + the KV of every context) / bandwidth. Before any timing, the CUDA paths are checked against
the float32 reference path on a small model (ragged prefill batch, chunked prefill, paged decode,
prefix-cache hit vs miss, bf16 and fp16). Host time per step is measured apart from the GPU's:
`host_ms_per_step` is the time `step()` spends on the CPU (waits for the device excluded), and the
synchronous rows give `step - graph replay`. Baseline: Hugging Face `generate` on the same GPU.

    python benchmarks/bench_engine.py --out benchmarks/results/engine_h200.json      # on a GPU
    python benchmarks/bench_engine.py --tiny --device cpu --out /tmp/engine_cpu.json   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from helix.engine import (
    EngineConfig,
    LayerRange,
    LLMEngine,
    ModelConfig,
    ModelRunner,
    SamplingParams,
    SeqChunk,
    StepBatch,
    build_stage,
    even_split,
)
from helix.engine.config import LLAMA3_8B_HF_CONFIG
from helix.engine.model.kernel_timing import graph_time_ms

LLAMA3_8B = LLAMA3_8B_HF_CONFIG
TINY = LLAMA3_8B | {
    "vocab_size": 512,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_median_s(fn, device: torch.device, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def graph_time_s(fn, calls: int = 10, repeats: int = 20) -> float:
    """Device time of one `fn()` call: `calls` calls captured in a CUDA graph, median replay / calls."""
    return graph_time_ms(lambda _i: fn(), calls, repeats) / 1000


def measure_bandwidth_bytes_per_s(device: torch.device, size_bytes: int) -> float:
    src = torch.randn(size_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    seconds = timed_median_s(lambda: dst.copy_(src), device)
    return 2 * size_bytes / seconds  # read + write


def measure_peak_flops(device: torch.device, n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return 2 * n**3 / timed_median_s(lambda: a @ b, device)


def weight_bytes(config: ModelConfig, itemsize: int) -> int:
    """Bytes of weights one decode step reads: every layer, the final norm and the LM head."""
    return (
        config.num_layers * config.layer_param_count() + config.hidden_size * (config.vocab_size + 1)
    ) * itemsize


# ---- correctness on the device ----
def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - want).norm() / want.norm())


def _run_chain(runners, batch, inputs):
    x = inputs
    for runner in runners:
        x = runner.execute(batch, x)
    return x.float().cpu()


def _equality_cases(runners, device) -> dict[str, torch.Tensor]:
    """Logits of: a ragged prefill batch, then 3 decode steps; a prompt prefilled in two chunks."""
    generator = torch.Generator().manual_seed(0)
    lengths = (5, 70, 33)
    prompts = [torch.randint(0, 512, (n,), generator=generator) for n in lengths]
    out = {}
    batch = StepBatch(tuple(SeqChunk(i, 0, n) for i, n in enumerate(lengths)))
    out["ragged_prefill"] = _run_chain(runners, batch, torch.cat(prompts).to(device))
    decodes = []
    for step in range(3):
        tokens = torch.randint(0, 512, (len(lengths),), generator=generator)
        batch = StepBatch(tuple(SeqChunk(i, n + step, 1) for i, n in enumerate(lengths)))
        decodes.append(_run_chain(runners, batch, tokens.to(device)))
    out["paged_decode"] = torch.stack(decodes)
    prompt = torch.randint(0, 512, (90,), generator=generator)
    _run_chain(runners, StepBatch((SeqChunk(50, 0, 40),)), prompt[:40].to(device))
    # the second chunk rides with a decode row of sequence 0
    mixed = StepBatch((SeqChunk(50, 40, 50), SeqChunk(0, lengths[0] + 3, 1)))
    out["chunked_prefill_with_decode"] = _run_chain(
        runners, mixed, torch.cat([prompt[40:], torch.tensor([7])]).to(device)
    )
    # prefix-cache hit: a prompt sharing 48 tokens (3 blocks) with one already computed
    shared = torch.randint(0, 512, (60,), generator=generator)
    _run_chain(runners, StepBatch((SeqChunk(60, 0, 60),)), shared.to(device))
    tokens = shared[:48].tolist() + torch.randint(0, 512, (20,), generator=generator).tolist()
    for runner in runners:
        runner.block_manager.commit(60, shared.tolist(), 60)
        assert runner.block_manager.match_prefix(tokens) == 3
        runner.block_manager.allocate(61, 68, tokens, num_cached_blocks=3)
    out["prefix_cache_hit"] = _run_chain(
        runners, StepBatch((SeqChunk(61, 48, 20),)), torch.tensor(tokens[48:]).to(device)
    )
    out["prefix_cache_miss"] = _run_chain(
        runners, StepBatch((SeqChunk(62, 0, 68),)), torch.tensor(tokens).to(device)
    )
    for runner in runners:
        for seq_id in (0, 1, 2, 50, 60, 61, 62):
            runner.free(seq_id)
    return out


def gpu_equalities(device: torch.device) -> dict:
    """The CUDA paths (graphs, Triton kernels, split-K matmuls, async engine) vs float32 on CPU."""
    config = ModelConfig.from_hf_dict(TINY)
    ranges = [LayerRange(0, 2), LayerRange(2, 4)]
    cpu_stages = [build_stage(config, r, seed=i) for i, r in enumerate(ranges)]
    reference_config = EngineConfig(num_kv_blocks=64, attention_backend="sdpa", use_cuda_graphs=False)
    reference = _equality_cases([ModelRunner(s, reference_config) for s in cpu_stages], torch.device("cpu"))
    result = {}
    for name, dtype in DTYPES.items():
        stages = []
        for stage in cpu_stages:
            moved = copy.deepcopy(stage).to(device=device, dtype=dtype)
            moved.rotary.reset_tables()
            stages.append(moved)
        engine_config = EngineConfig(num_kv_blocks=64, max_graph_batch_size=8, max_model_len=256)
        runners = [ModelRunner(s, engine_config) for s in stages]
        assert runners[0].graphs is not None and runners[0].decode_backend == "triton"
        got = _equality_cases(runners, device)
        result[name] = {case: _rel_error(got[case], want) for case, want in reference.items()}
        result[name]["prefix_hit_vs_miss_on_device"] = _rel_error(
            got["prefix_cache_hit"], got["prefix_cache_miss"]
        )
        prompts = [[int(t) for t in torch.randint(0, 512, (n,)).tolist()] for n in (9, 40, 3)]
        params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
        outs = {}
        for mode in (True, False):
            engine = LLMEngine(runners)
            engine.config = EngineConfig(**{**_fields(engine_config), "async_scheduling": mode})
            outs[mode] = [o.output_token_ids for o in engine.generate(prompts, params)]
        result[name]["async_equals_sync_greedy"] = outs[True] == outs[False]
    result["passed"] = all(
        (v is True) or (isinstance(v, float) and v < 2e-2)
        for per_dtype in (result["bfloat16"], result["float16"])
        for v in per_dtype.values()
    )
    return result


def _fields(config: EngineConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


# ---- decode ----
def _admit_and_prefill(engine: LLMEngine, batch: int, prompt_len: int, max_tokens: int) -> list[int]:
    generator = torch.Generator().manual_seed(batch)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    vocab = engine.runners[0].model.config.vocab_size
    ids = [
        engine.add_request(torch.randint(0, vocab, (prompt_len,), generator=generator).tolist(), params)
        for _ in range(batch)
    ]
    while engine.scheduler.waiting or any(
        s.num_computed_tokens < len(s.prompt_token_ids) for s in engine.scheduler.running
    ):
        engine.step()
    for _ in range(2):
        engine.step()  # untimed decode steps
    return ids


def _timed_steps(engine: LLMEngine, steps: int, device) -> tuple[float, float]:
    sync(device)
    host_before = engine.host_s
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(device)
    return (time.perf_counter() - start) / steps, (engine.host_s - host_before) / steps


def decode_row(engine: LLMEngine, batch: int, args, device) -> dict:
    """Admit `batch` prompts, prefill them, time `steps` async decode steps, then `steps` sync ones."""
    ids = _admit_and_prefill(engine, batch, args.prompt_len, 4 * args.steps + 64)
    base = engine.config
    engine.config = EngineConfig(**{**_fields(base), "async_scheduling": True})
    step_s, host_s = _timed_steps(engine, args.steps, device)
    engine.step()  # drain the step in flight
    engine.config = EngineConfig(**{**_fields(base), "async_scheduling": False})
    sync_step_s, sync_host_s = _timed_steps(engine, args.steps, device)
    engine.config = base
    graphs = engine.runners[0].graphs
    replay_ms = None
    if len(engine.runners) == 1 and graphs is not None and graphs.bucket_for(batch):
        replay_ms = 1000 * timed_median_s(lambda: graphs.replay_only(batch), device, repeats=20)
    for seq_id in ids:
        engine.cancel(seq_id)
    engine.step()
    row = {
        "batch": batch,
        "tokens_per_s": batch / step_s,
        "step_ms": 1000 * step_s,
        "host_ms_per_step": 1000 * host_s,
        "sync_step_ms": 1000 * sync_step_s,
        "sync_host_ms_per_step": 1000 * sync_host_s,
        "mean_context_tokens": args.prompt_len + 3 + args.steps,
        "graph_replay_ms": replay_ms,
    }
    if replay_ms is not None:
        row["host_ms_beyond_replay"] = row["step_ms"] - replay_ms
        row["sync_host_ms_beyond_replay"] = row["sync_step_ms"] - replay_ms
    return row


def with_roofline(row: dict, config: ModelConfig, bandwidth: float, itemsize: int) -> dict:
    kv_bytes = row["batch"] * row["mean_context_tokens"] * config.num_layers
    kv_bytes *= config.kv_bytes_per_token_per_layer(itemsize)
    step_s = (weight_bytes(config, itemsize) + kv_bytes) / bandwidth
    out = row | {
        "roofline_step_ms": 1000 * step_s,
        "roofline_tokens_per_s": row["batch"] / step_s,
        "fraction_of_roofline": row["tokens_per_s"] * step_s / row["batch"],
    }
    if row.get("graph_replay_ms"):
        out["replay_fraction_of_roofline"] = 1000 * step_s / row["graph_replay_ms"]
    return out


def make_engine(config: ModelConfig, ranges: list[LayerRange], args, device, dtype) -> LLMEngine:
    max_len = args.prompt_len + 4 * args.steps + 96
    blocks = max(args.batches) * (-(-max_len // 16)) + 64
    blocks = max(blocks, 2 * (-(-args.prefill_len // 16)) * args.prefill_batch)
    engine_config = EngineConfig(
        num_kv_blocks=blocks,
        max_model_len=max(max_len, args.prefill_len + 16),
        max_num_batched_tokens=args.prefill_len * args.prefill_batch,
        max_num_seqs=max(args.batches),
        max_graph_batch_size=max(args.batches),
        use_cuda_graphs=not args.no_graphs,
    )
    runners = []
    for i, layer_range in enumerate(ranges):
        stage = build_stage(
            config, layer_range, device=device, dtype=dtype, seed=i, max_positions=engine_config.max_model_len
        )
        runners.append(ModelRunner(stage, engine_config))
    return LLMEngine(runners)


def prefill(engine: LLMEngine, args, device, peak_flops: float, varlen: bool) -> dict:
    """One step of `prefill_batch` prompts of `prefill_len` tokens (varlen kernel or SDPA per prompt)."""
    config, tokens = engine.runners[0].model.config, args.prefill_len * args.prefill_batch
    batch = StepBatch(tuple(SeqChunk(10_000 + i, 0, args.prefill_len) for i in range(args.prefill_batch)))
    inputs = torch.randint(0, config.vocab_size, (tokens,), device=device)
    saved = [r.varlen_prefill for r in engine.runners]
    for runner in engine.runners:
        runner.varlen_prefill = varlen and runner.decode_backend == "triton"

    def run() -> None:
        x = inputs
        for runner in engine.runners:
            x = runner.execute(batch, x)
        for runner in engine.runners:
            for chunk in batch.chunks:
                runner.free(chunk.seq_id)

    seconds = timed_median_s(run, device, repeats=5)
    for runner, value in zip(engine.runners, saved, strict=True):
        runner.varlen_prefill = value
    matmul = 2 * tokens * config.num_layers * (config.layer_param_count() - 2 * config.hidden_size)
    attention = 4 * config.num_layers * config.q_size * args.prefill_batch * args.prefill_len**2 / 2
    head = 2 * args.prefill_batch * config.hidden_size * config.vocab_size
    flops = matmul + attention + head
    return {
        "attention": "varlen" if varlen else "sdpa_per_prompt",
        "prompt_tokens": args.prefill_len,
        "num_prompts": args.prefill_batch,
        "ms": 1000 * seconds,
        "tokens_per_s": tokens / seconds,
        "tflops": flops / seconds / 1e12,
        "fraction_of_peak": flops / seconds / peak_flops,
    }


def matmul_only(config: ModelConfig, batches: list[int], bandwidth: float, itemsize: int) -> dict:
    """Per batch, the step's weight matmuls alone, from the chooser's own timings (cuBLAS vs chosen)."""
    from helix.engine.model.triton_gemm import CHOOSER

    h, layers = config.hidden_size, config.num_layers
    shapes = {
        (config.q_size + 2 * config.kv_size, h): layers,
        (h, config.q_size): layers,
        (2 * config.intermediate_size, h): layers,
        (h, config.intermediate_size): layers,
        (config.vocab_size, h): 1,
    }
    out = {}
    for batch in batches:
        bucket = batch
        cublas = chosen = 0.0
        missing = False
        for (n, k), count in shapes.items():
            timing = next((t for key, t in CHOOSER.timings.items() if key[:3] == (bucket, n, k)), None)
            if timing is None:
                missing = True
                continue
            cublas += count * timing["cublas"]
            chosen += count * min(timing.values())
        if missing:
            continue
        floor = weight_bytes(config, itemsize) / bandwidth * 1000
        out[batch] = {
            "cublas_ms": cublas,
            "chosen_ms": chosen,
            "weight_roofline_ms": floor,
            "cublas_fraction": floor / cublas,
            "chosen_fraction": floor / chosen,
        }
    return out


def prefix_cache_bench(engine: LLMEngine, args, device) -> dict:
    """Shared-system-prompt workload: requests one after another, each a common system prompt and
    its own question; TTFT and hit rate with prefix caching off, then on (same engine)."""
    generator = torch.Generator().manual_seed(5)
    vocab = engine.runners[0].model.config.vocab_size
    system = torch.randint(0, vocab, (args.system_prompt_tokens,), generator=generator).tolist()
    prompts = [system + torch.randint(0, vocab, (64,), generator=generator).tolist() for _ in range(12)]
    managers = [r.block_manager for r in engine.runners]
    base = engine.config
    out = {"system_prompt_tokens": len(system), "question_tokens": 64, "requests": len(prompts)}
    for caching in (False, True):
        engine.config = engine.scheduler.config = EngineConfig(
            **{**_fields(base), "enable_prefix_caching": caching}
        )
        for manager in managers:
            manager.enable_caching = caching
        hit_before, queried_before = managers[0].hit_tokens, managers[0].queried_tokens
        ttfts = []
        for prompt in prompts:
            seq_id = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
            sync(device)
            start = time.perf_counter()
            while not any(o.seq_id == seq_id for o in engine.step()):
                pass
            sync(device)
            ttfts.append(time.perf_counter() - start)
        queried = managers[0].queried_tokens - queried_before
        out["on" if caching else "off"] = {
            "ttft_ms_p50_after_first": 1000 * statistics.median(ttfts[1:]),
            "ttft_ms_first": 1000 * ttfts[0],
            "hit_rate": (managers[0].hit_tokens - hit_before) / max(1, queried),
        }
    engine.config = engine.scheduler.config = base
    for manager in managers:
        manager.enable_caching = base.enable_prefix_caching
    out["ttft_speedup"] = out["off"]["ttft_ms_p50_after_first"] / out["on"]["ttft_ms_p50_after_first"]
    print("prefix cache", out, flush=True)
    return out


def loader_bench(config: ModelConfig, device, dtype, num_layers: int = 4) -> dict:
    """Load time per GB: a Hugging Face-named checkpoint of the embedding and `num_layers` layers in
    two safetensors files, written here, then loaded as one stage onto the device."""
    import tempfile

    from safetensors.torch import save_file

    from helix.engine.weights import SafetensorsSource

    h, q, kv, inter = config.hidden_size, config.q_size, config.kv_size, config.intermediate_size
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h)}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (inter, h),
            p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        names = list(shapes)
        half = len(names) // 2
        for index, part in enumerate((names[:half], names[half:])):
            save_file(
                {n: torch.randn(shapes[n], dtype=dtype) * 0.02 for n in part}, f"{tmp}/m{index}.safetensors"
            )
        size = sum(os.path.getsize(f"{tmp}/m{i}.safetensors") for i in range(2))
        os.sync()
        start = time.perf_counter()
        source = SafetensorsSource(Path(tmp))
        stage = build_stage(config, LayerRange(0, num_layers), device=device, dtype=dtype, source=source)
        sync(device)
        seconds = time.perf_counter() - start
        source.close()
        del stage
    return {
        "bytes": size,
        "load_s": seconds,
        "s_per_gb": seconds / (size / 1e9),
        "gb_per_s": size / 1e9 / seconds,
        "note": "files just written: read from the page cache",
    }


def kernel_variants(engine: LLMEngine, args, device, config, bandwidth, itemsize) -> dict:
    """The same engine re-captured with one choice changed: split-K Triton matmuls where measured
    faster; decode-attention tiles measured per batch; attention without context splits."""
    from helix.engine.model.attention import Attention

    runner = engine.runners[0]
    out = {}

    def rows() -> list[dict]:
        runner.capture_graphs()
        result = []
        for batch in args.variant_batches:
            row = with_roofline(decode_row(engine, batch, args, device), config, bandwidth, itemsize)
            result.append(
                {k: row[k] for k in ("batch", "step_ms", "graph_replay_ms", "fraction_of_roofline")}
            )
        return result

    from helix.engine.model.triton_attention import DECODE_CHOOSER

    runner.model.use_fused_kernels(True, skinny_gemm=True)
    out["split_k_triton_matmuls_where_faster"] = rows()
    runner.model.use_fused_kernels(True, skinny_gemm=False)
    DECODE_CHOOSER.enabled = True
    out["attention_measured_tiles"] = rows()
    DECODE_CHOOSER.enabled = False
    attentions = [m for m in runner.model.modules() if isinstance(m, Attention)]
    for module in attentions:
        module.decode_splits = 1
    out["attention_one_split"] = rows()
    for module in attentions:
        module.decode_splits = None
    runner.capture_graphs()
    print("variants", out, flush=True)
    return out


def profile_replay(engine: LLMEngine, batch: int, args, device) -> dict:
    """Kernel time per decode step (torch profiler over graph replays), grouped by kernel name."""
    from torch.profiler import ProfilerActivity, profile

    ids = _admit_and_prefill(engine, batch, args.prompt_len, 4 * args.steps + 64)
    for _ in range(3):
        engine.step()  # fills the graph's buffers for this batch
    graphs = engine.runners[0].graphs
    replays = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graphs.replay_only(batch)
        sync(device)
    for seq_id in ids:
        engine.cancel(seq_id)
    engine.step()
    totals: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals.setdefault(event.name[:90], [0.0, 0])
            entry[0] += event.device_time_total / 1000 / replays
            entry[1] += 1 / replays
    table = sorted(
        ({"kernel": k, "ms_per_step": v[0], "calls_per_step": v[1]} for k, v in totals.items()),
        key=lambda r: -r["ms_per_step"],
    )
    return {
        "batch": batch,
        "total_kernel_ms_per_step": sum(r["ms_per_step"] for r in table),
        "top": table[:20],
    }


def attention_splits(device, dtype, config: ModelConfig, bandwidth: float, context: int) -> list[dict]:
    """The paged decode kernel alone over `context` tokens per sequence, by batch and split count."""
    from helix.engine.model.triton_attention import decode_splits, paged_decode_attention

    rows = []
    heads, kv_heads, dim = config.num_heads, config.num_kv_heads, config.head_dim
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    for batch in (1, 16, 64, 128):
        blocks_per_seq = -(-context // 16)
        caches = [
            torch.randn(batch * blocks_per_seq + 1, 16, kv_heads, dim, device=device, dtype=dtype)
            for _ in range(2)
        ]
        tables = torch.randperm(batch * blocks_per_seq, device=device).int().view(batch, blocks_per_seq)
        lens = torch.full((batch,), context, dtype=torch.int32, device=device)
        q = torch.randn(batch, heads, dim, device=device, dtype=dtype)
        kv_bytes = 2 * batch * context * kv_heads * dim * caches[0].element_size()
        for splits in (1, 2, 4, 8, 16):
            args = (q, caches[0], caches[1], tables, lens, dim**-0.5)
            seconds = graph_time_s(lambda s=splits, a=args: paged_decode_attention(*a, splits=s))
            rows.append(
                {
                    "batch": batch,
                    "splits": splits,
                    "chosen": splits == decode_splits(batch, kv_heads, num_sms),
                    "us": 1e6 * seconds,
                    "fraction_of_bandwidth": kv_bytes / seconds / bandwidth,
                }
            )
        del caches
    return rows


def hf_generate_baseline(hf_dict: dict, batch: int, args, device, dtype) -> dict:
    """Decode tokens/s of transformers' `generate` (eager, SDPA): (t(N) - t(1)) over N - 1 tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(**{k: v for k, v in hf_dict.items() if k != "architectures"})
    with torch.device(device):
        model = LlamaForCausalLM._from_config(hf_config, dtype=dtype, attn_implementation="sdpa").eval()
    prompt = torch.randint(0, hf_config.vocab_size, (batch, args.prompt_len), device=device)

    def gen(n: int) -> float:
        sync(device)
        start = time.perf_counter()
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        sync(device)
        return time.perf_counter() - start

    gen(2)
    n = args.hf_tokens
    t1, tn = min(gen(1) for _ in range(2)), gen(n)
    return {
        "batch": batch,
        "new_tokens": n,
        "tokens_per_s": batch * (n - 1) / (tn - t1),
        "step_ms": 1000 * (tn - t1) / (n - 1),
    }


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--tiny", action="store_true", help="a tiny config (smoke test on CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_h200.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32, 64, 128])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prefill-len", type=int, default=2048)
    parser.add_argument("--prefill-batch", type=int, default=4)
    parser.add_argument("--hf-batch", type=int, default=32)
    parser.add_argument("--hf-tokens", type=int, default=17)
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--system-prompt-tokens", type=int, default=1024)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-four-stages", action="store_true")
    parser.add_argument("--profile-batches", type=int, nargs="*", default=[1, 64, 128])
    parser.add_argument("--variant-batches", type=int, nargs="*", default=[1, 64, 128])
    return parser.parse_args()


def _section(result: dict, name: str, fn, out: Path) -> None:
    """Run one part; record its error instead of losing the run; save what exists so far."""
    started = time.perf_counter()
    try:
        value = fn()
        if value is not None:
            result[name] = value
    except Exception as exc:  # a failed part is reported in the JSON, the others still run
        result[name + "_error"] = "".join(traceback.format_exception(exc))[-3000:]
        print(result[name + "_error"], flush=True)
    result.setdefault("section_s", {})[name] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")


def bench_stages(name: str, num_stages: int, config, args, device, dtype, ceilings, result) -> None:
    bandwidth, peak = ceilings
    itemsize = torch.empty((), dtype=dtype).element_size()
    started = time.perf_counter()
    engine = make_engine(config, even_split(config.num_layers, num_stages), args, device, dtype)
    part: dict = {"build_s": time.perf_counter() - started, "decode": []}
    for batch in args.batches:
        row = with_roofline(decode_row(engine, batch, args, device), config, bandwidth, itemsize)
        part["decode"].append(row)
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    big = device.type == "cuda" and not args.tiny
    part["prefill"] = prefill(engine, args, device, peak, varlen=True)
    print(name, "prefill", part["prefill"], flush=True)
    if num_stages == 1:
        part["prefix_cache"] = prefix_cache_bench(engine, args, device)
        if engine.runners[0].decode_backend == "triton":
            part["prefill_sdpa_per_prompt"] = prefill(engine, args, device, peak, varlen=False)
            print(name, "prefill sdpa", part["prefill_sdpa_per_prompt"], flush=True)
        if big:
            if engine.runners[0].graphs is not None:
                part["profile"] = [profile_replay(engine, b, args, device) for b in args.profile_batches]
                for p in part["profile"]:
                    print("profile", p["batch"], round(p["total_kernel_ms_per_step"], 3), flush=True)
                    for r in p["top"][:8]:
                        print("   ", round(r["ms_per_step"], 3), round(r["calls_per_step"]), r["kernel"][:70])
                part["variants"] = kernel_variants(engine, args, device, config, bandwidth, itemsize)
            part["matmul_only_ms"] = matmul_only(config, args.variant_batches, bandwidth, itemsize)
    result[name] = part
    del engine
    release()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if device.type == "cuda" else torch.float32
    hf_dict = TINY if args.tiny else LLAMA3_8B
    config = ModelConfig.from_hf_dict(hf_dict)
    big = device.type == "cuda" and not args.tiny
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "dtype": str(dtype),
        "model": hf_dict,
        "args": vars(args) | {"out": str(args.out)},
        "loadavg_start": os.getloadavg(),
    }
    bandwidth = measure_bandwidth_bytes_per_s(device, (4 << 30) if big else (64 << 20))
    peak = measure_peak_flops(device, 8192 if big else 512, dtype)
    result |= {"hbm_bandwidth_gb_per_s": bandwidth / 1e9, "peak_matmul_tflops": peak / 1e12}
    print(f"bandwidth {bandwidth / 1e9:.0f} GB/s, peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    out = args.out
    if device.type == "cuda":
        _section(result, "gpu_equalities", lambda: gpu_equalities(device), out)
        print("equalities", result.get("gpu_equalities"), flush=True)
        _section(
            result, "attention_kernel", lambda: attention_splits(device, dtype, config, bandwidth, 544), out
        )
    ceilings = (bandwidth, peak)
    if big:
        _section(result, "loader", lambda: loader_bench(config, device, dtype), out)
        print("loader", result.get("loader"), flush=True)
    _section(
        result,
        "single_stage",
        lambda: bench_stages("single_stage", 1, config, args, device, dtype, ceilings, result),
        out,
    )
    if not args.skip_four_stages:
        _section(
            result,
            "four_stages",
            lambda: bench_stages("four_stages", 4, config, args, device, dtype, ceilings, result),
            out,
        )
    if not args.skip_hf:
        _section(
            result,
            "hf_generate",
            lambda: hf_generate_baseline(hf_dict, args.hf_batch, args, device, dtype),
            out,
        )
        release()
    if device.type == "cuda":
        from helix.engine.model.triton_attention import DECODE_CHOOSER
        from helix.engine.model.triton_gemm import CHOOSER

        result["decode_attention_choices"] = {str(k): str(v) for k, v in DECODE_CHOOSER.choices.items()}
        result["decode_attention_timings_ms"] = {str(k): v for k, v in DECODE_CHOOSER.timings.items()}
        for key, choice in DECODE_CHOOSER.choices.items():
            print("attention", key[0], choice, round(min(DECODE_CHOOSER.timings[key].values()), 4))
        result["gemm_choices"] = {str(k): str(v) for k, v in CHOOSER.choices.items()}
        result["gemm_timings_ms"] = {str(k): v for k, v in CHOOSER.timings.items()}
        for key, timing in CHOOSER.timings.items():
            if key[0] in (1, 64, 128):
                best = min(timing, key=timing.get)
                print(
                    "gemm",
                    key[:3],
                    "cublas",
                    round(timing["cublas"], 4),
                    "best",
                    round(timing[best], 4),
                    best,
                )
    result["summary"] = summarize(result, args)
    result["loadavg_end"] = os.getloadavg()
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))


def summarize(result: dict, args) -> dict:
    if "single_stage" not in result:
        return {}
    single = {r["batch"]: r for r in result["single_stage"]["decode"]}
    four = {r["batch"]: r for r in result.get("four_stages", {}).get("decode", [])}
    summary = {
        "decode_fraction_of_roofline_by_batch": {
            b: round(r["fraction_of_roofline"], 3) for b, r in single.items()
        },
        "target_decode_fraction_of_roofline": {1: 0.85, 64: 0.82, 128: 0.80},
        "replay_fraction_of_roofline_by_batch": {
            b: round(r["replay_fraction_of_roofline"], 3)
            for b, r in single.items()
            if "replay_fraction_of_roofline" in r
        },
        "target_replay_fraction_at_64": 0.88,
        "host_ms_beyond_replay_by_batch": {
            b: round(r["host_ms_beyond_replay"], 3) for b, r in single.items() if "host_ms_beyond_replay" in r
        },
        "sync_host_ms_beyond_replay_by_batch": {
            b: round(r["sync_host_ms_beyond_replay"], 3)
            for b, r in single.items()
            if "sync_host_ms_beyond_replay" in r
        },
        "host_ms_per_step_by_batch": {b: round(r["host_ms_per_step"], 3) for b, r in single.items()},
        "target_host_ms_beyond_replay": 0.25,
        "prefill_fraction_of_peak": round(result["single_stage"]["prefill"]["fraction_of_peak"], 3),
        "target_prefill_fraction_of_peak": 0.75,
        "four_stage_over_single_by_batch": {
            b: round(four[b]["tokens_per_s"] / single[b]["tokens_per_s"], 3) for b in single if b in four
        },
        "target_four_stage_ratio_at_64": 0.97,
        "engine_best_tokens_per_s": max(r["tokens_per_s"] for r in single.values()),
    }
    if "prefix_cache" in result["single_stage"]:
        cache = result["single_stage"]["prefix_cache"]
        summary["prefix_cache"] = {
            "hit_rate": round(cache["on"]["hit_rate"], 3),
            "ttft_ms_off": round(cache["off"]["ttft_ms_p50_after_first"], 2),
            "ttft_ms_on": round(cache["on"]["ttft_ms_p50_after_first"], 2),
        }
    if "prefill_sdpa_per_prompt" in result["single_stage"]:
        summary["prefill_sdpa_per_prompt_fraction_of_peak"] = round(
            result["single_stage"]["prefill_sdpa_per_prompt"]["fraction_of_peak"], 3
        )
    if "loader" in result:
        summary["loader_s_per_gb"] = round(result["loader"]["s_per_gb"], 3)
    if "gpu_equalities" in result:
        summary["gpu_equalities_passed"] = result["gpu_equalities"]["passed"]
    if "hf_generate" in result and args.hf_batch in single:
        hf = result["hf_generate"]["tokens_per_s"]
        summary["speedup_over_hf_generate_at_batch"] = {
            args.hf_batch: round(single[args.hf_batch]["tokens_per_s"] / hf, 2)
        }
    return summary


if __name__ == "__main__":
    main()
