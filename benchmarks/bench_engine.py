"""Engine benchmark: decode and prefill throughput of a LLaMA-3-8B-shaped model against rooflines.

Random bf16 weights, one stage holding all layers (and the same model as 4 stages back to back).
Measured in the same run: HBM bandwidth (a large device-to-device copy, bytes read + written) and
peak bf16 matmul FLOP/s (8192^3). Decode rooflines = bytes read per step (all weights + the KV of
every context) / bandwidth. Baseline: Hugging Face `generate` on the same GPU and config.

    python benchmarks/bench_engine.py --out benchmarks/results/engine_h100.json     # on a GPU
    python benchmarks/bench_engine.py --tiny --device cpu --out /tmp/engine_cpu.json  # smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
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

LLAMA3_8B = LLAMA3_8B_HF_CONFIG
TINY = LLAMA3_8B | {
    "vocab_size": 512,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}


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


def decode_tokens_per_s(engine: LLMEngine, batch: int, prompt_len: int, steps: int, device) -> dict:
    """Admit `batch` random prompts, prefill them, then time `steps` decode steps."""
    generator = torch.Generator().manual_seed(batch)
    params = SamplingParams(temperature=0, max_tokens=steps + 2, ignore_eos=True)
    vocab = engine.runners[0].model.config.vocab_size
    ids = [
        engine.add_request(torch.randint(0, vocab, (prompt_len,), generator=generator).tolist(), params)
        for _ in range(batch)
    ]
    while any(s.num_computed_tokens == 0 or s.num_pending_tokens > 1 for s in engine.scheduler.running) or (
        engine.scheduler.waiting
    ):
        engine.step()
    engine.step()  # one untimed decode step
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(device)
    seconds = time.perf_counter() - start
    graphs = engine.runners[0].graphs
    replay_ms = None
    if len(engine.runners) == 1 and graphs is not None and graphs.bucket_for(batch):
        replay_ms = 1000 * timed_median_s(lambda: graphs.replay_only(batch), device, repeats=20)
    for seq_id in ids:
        engine.cancel(seq_id)
    return {
        "batch": batch,
        "tokens_per_s": batch * steps / seconds,
        "step_ms": 1000 * seconds / steps,
        "mean_context_tokens": prompt_len + 1 + steps / 2,
        "graph_replay_ms": replay_ms,
    }


def with_roofline(row: dict, config: ModelConfig, bandwidth: float, itemsize: int) -> dict:
    kv_bytes = row["batch"] * row["mean_context_tokens"] * config.num_layers
    kv_bytes *= config.kv_bytes_per_token_per_layer(itemsize)
    step_s = (weight_bytes(config, itemsize) + kv_bytes) / bandwidth
    roofline = row["batch"] / step_s
    return row | {
        "roofline_tokens_per_s": roofline,
        "roofline_step_ms": 1000 * step_s,
        "fraction_of_roofline": row["tokens_per_s"] / roofline,
    }


def make_engine(config: ModelConfig, ranges: list[LayerRange], args, device, dtype) -> LLMEngine:
    max_len = args.prompt_len + args.steps + 16
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


def prefill(engine: LLMEngine, args, device, peak_flops: float) -> dict:
    config, tokens = engine.runners[0].model.config, args.prefill_len * args.prefill_batch
    batch = StepBatch(tuple(SeqChunk(10_000 + i, 0, args.prefill_len) for i in range(args.prefill_batch)))
    inputs = torch.randint(0, config.vocab_size, (tokens,), device=device)

    def run() -> None:
        x = inputs
        for runner in engine.runners:
            x = runner.execute(batch, x)
        for runner in engine.runners:
            for chunk in batch.chunks:
                runner.free(chunk.seq_id)

    seconds = timed_median_s(run, device, repeats=5)
    matmul = 2 * tokens * config.num_layers * (config.layer_param_count() - 2 * config.hidden_size)
    attention = 4 * config.num_layers * config.q_size * args.prefill_batch * args.prefill_len**2 / 2
    head = 2 * args.prefill_batch * config.hidden_size * config.vocab_size
    flops = matmul + attention + head
    return {
        "prompt_tokens": args.prefill_len,
        "num_prompts": args.prefill_batch,
        "ms": 1000 * seconds,
        "tokens_per_s": tokens / seconds,
        "tflops": flops / seconds / 1e12,
        "fraction_of_peak": flops / seconds / peak_flops,
    }


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
    parser.add_argument("--tiny", action="store_true", help="a tiny config (smoke test on CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine_h100.json"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 32, 64, 128])
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prefill-len", type=int, default=2048)
    parser.add_argument("--prefill-batch", type=int, default=4)
    parser.add_argument("--hf-batch", type=int, default=32)
    parser.add_argument("--hf-tokens", type=int, default=17)
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--skip-hf", action="store_true")
    return parser.parse_args()


def bench_engine(name: str, num_stages: int, config: ModelConfig, args, device, dtype, ceilings) -> dict:
    """Decode rows (with rooflines) and prefill of the model split into `num_stages` stages."""
    bandwidth, peak = ceilings
    itemsize = torch.empty((), dtype=dtype).element_size()
    engine = make_engine(config, even_split(config.num_layers, num_stages), args, device, dtype)
    rows = []
    for batch in args.batches:
        row = decode_tokens_per_s(engine, batch, args.prompt_len, args.steps, device)
        rows.append(with_roofline(row, config, bandwidth, itemsize))
        print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    result = {"decode": rows, "prefill": prefill(engine, args, device, peak)}
    print(name, "prefill", result["prefill"], flush=True)
    del engine
    release()
    return result


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf_dict = TINY if args.tiny else LLAMA3_8B
    config = ModelConfig.from_hf_dict(hf_dict)
    big = device.type == "cuda" and not args.tiny
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "dtype": str(dtype),
        "model": hf_dict,
        "args": vars(args) | {"out": str(args.out)},
    }
    bandwidth = measure_bandwidth_bytes_per_s(device, (4 << 30) if big else (64 << 20))
    peak = measure_peak_flops(device, 8192 if big else 512, dtype)
    result |= {"hbm_bandwidth_gb_per_s": bandwidth / 1e9, "peak_matmul_tflops": peak / 1e12}
    print(f"bandwidth {bandwidth / 1e9:.0f} GB/s, peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    if not args.skip_hf:
        try:
            result["hf_generate"] = hf_generate_baseline(hf_dict, args.hf_batch, args, device, dtype)
        except Exception as exc:  # the baseline is optional: record why it did not run
            result["hf_generate_error"] = repr(exc)
        print("hf", result.get("hf_generate", result.get("hf_generate_error")), flush=True)
        release()
    for name, num_stages in (("single_stage", 1), ("four_stages", 4)):
        result[name] = bench_engine(name, num_stages, config, args, device, dtype, (bandwidth, peak))
    result["summary"] = summarize(result, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


def summarize(result: dict, args) -> dict:
    single = {r["batch"]: r for r in result["single_stage"]["decode"]}
    four = {r["batch"]: r for r in result["four_stages"]["decode"]}
    summary = {
        "decode_fraction_of_roofline_by_batch": {
            b: round(r["fraction_of_roofline"], 3) for b, r in single.items()
        },
        "target_roofline_fraction_at_64": 0.6,
        "prefill_fraction_of_peak": round(result["single_stage"]["prefill"]["fraction_of_peak"], 3),
        "target_prefill_fraction_of_peak": 0.5,
        "four_stage_over_single_by_batch": {
            b: round(four[b]["tokens_per_s"] / single[b]["tokens_per_s"], 3) for b in single if b in four
        },
        "target_four_stage_ratio": 0.9,
    }
    if "hf_generate" in result and args.hf_batch in single:
        hf = result["hf_generate"]["tokens_per_s"]
        summary["speedup_over_hf_generate_at_batch"] = {
            args.hf_batch: round(single[args.hf_batch]["tokens_per_s"] / hf, 2)
        }
        summary["target_speedup_over_hf"] = 3.0
    return summary


if __name__ == "__main__":
    main()
