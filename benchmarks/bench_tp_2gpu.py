"""Tensor parallelism inside a node: one stage of all layers over two GPUs (TP=2) against one GPU (TP=1).

LLaMA-3-8B shape, bf16, random split-invariant weights (the same full tensors for both: each rank
keeps its slice), the engine's `ModelRunner` on every rank (paged KV cache, CUDA graphs when they can
be captured, else eager: the JSON says which). TP=2 is rank 0 in this process and rank 1 in a process
it starts (`helix.engine.tp.start_tp_runner`), exactly as a worker of a 2-GPU node runs.

Measured, in one run:
- decode step time at batch 1 and 64 (context `--context` tokens per sequence, median of `--steps`
  steps after `--warmup`, device-synchronised), TP=1 vs TP=2, and the speedup (target: >= 1.7x at
  batch 1);
- all-reduce time per layer: a separate two-process micro-benchmark of the two all-reduces a layer
  makes ([batch, hidden] in bf16, NCCL), median per layer;
- greedy equality: `--check-tokens` greedy tokens of 4 prompts through `LLMEngine` over the TP=2
  stage against the TP=1 stage (bf16: a near-tie may flip a token; the fraction of equal tokens and
  the first difference are recorded).

    python benchmarks/bench_tp_2gpu.py --out benchmarks/results/tp_2gpu.json   # a host with >= 2 GPUs
    python benchmarks/bench_tp_2gpu.py --tiny --out /tmp/tp_2gpu.json          # CPU, gloo, tiny model
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from helix.engine.batch import SeqChunk, StepBatch
from helix.engine.config import LLAMA3_8B_HF_CONFIG, EngineConfig, LayerRange, ModelConfig
from helix.engine.llm_engine import LLMEngine
from helix.engine.model_runner import ModelRunner
from helix.engine.sampling_params import SamplingParams
from helix.engine.tp import TPStageSpec, start_tp_runner
from helix.engine.tp.group import destroy_group, init_group
from helix.engine.tp.launch import HOST, child_environment
from helix.engine.tp.plan import shard_plan
from helix.engine.tp.shard import build_rank_stage, split_invariant_tensors
from helix.engine.tp.stage import DTYPES

TINY = LLAMA3_8B_HF_CONFIG | {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TARGET_BATCH1_SPEEDUP = 1.7
SEED = 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/tp_2gpu.json"))
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU ranks (gloo): a smoke run")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--check-tokens", type=int, default=32)
    p.add_argument("--allreduce-repeats", type=int, default=200)
    p.add_argument("--no-graphs", action="store_true", help="eager decode steps only")
    p.add_argument("--allreduce-peer", type=int, default=0, help=argparse.SUPPRESS)  # internal: rank 1
    p.add_argument("--peer-device", default="cpu", help=argparse.SUPPRESS)
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_config(args, graphs: bool) -> EngineConfig:
    tokens = max(args.batches) * (args.context + args.warmup + args.steps + 2)
    blocks = -(-tokens // 16) + 4 * -(-(300 + args.check_tokens) // 16) + 64
    return EngineConfig(
        num_kv_blocks=blocks,
        max_model_len=args.context + args.warmup + args.steps + 512,
        use_cuda_graphs=graphs,
        max_graph_batch_size=max(args.batches),
    )


def one_rank_runner(config: ModelConfig, args, device: str, graphs: bool) -> ModelRunner:
    """TP=1: the whole stage on one device, the same full tensors as the ranks slice."""
    dtype = DTYPES[args.dtype]
    tensors = split_invariant_tensors(SEED, torch.device(device), dtype)
    shard = shard_plan(config, 1)[0]
    stage = build_rank_stage(
        config, LayerRange(0, config.num_layers), shard, None, tensors, device=device, dtype=dtype,
        max_positions=engine_config(args, graphs).max_model_len,
    )  # fmt: skip
    return ModelRunner(stage, engine_config(args, graphs))


def two_rank_runner(config: ModelConfig, args, devices: list[str], graphs: bool):
    spec = TPStageSpec(
        config,
        LayerRange(0, config.num_layers),
        engine_config(args, graphs),
        args.dtype,
        engine_config(args, graphs).max_model_len,
        None,
        SEED,
    )
    return start_tp_runner(spec, devices, start_timeout_s=900)


def decode_times(runner, batch: int, args, vocab: int) -> dict:
    """Median / p10 / p90 ms of a decode step of `batch` sequences at `args.context` tokens of context."""
    base = 100_000
    for s in range(batch):
        runner.block_manager.allocate(base + s, args.context)
    generator = torch.Generator().manual_seed(batch)
    lengths = [args.context] * batch
    times = []
    for step in range(args.warmup + args.steps):
        chunks = tuple(SeqChunk(base + s, lengths[s], 1) for s in range(batch))
        ids = torch.randint(vocab, (batch,), generator=generator)
        sync(runner.device)
        start = time.perf_counter()
        runner.execute(StepBatch(chunks), ids)
        sync(runner.device)
        if step >= args.warmup:
            times.append(1000 * (time.perf_counter() - start))
        lengths = [n + 1 for n in lengths]
    for s in range(batch):
        runner.free(base + s)
    q = statistics.quantiles(times, n=10)
    return {"batch": batch, "median_ms": statistics.median(times), "p10_ms": q[0], "p90_ms": q[-1]}


def greedy(runner, prompts: list[list[int]], args) -> list[list[int]]:
    engine = LLMEngine([runner])
    params = SamplingParams(temperature=0.0, max_tokens=args.check_tokens, ignore_eos=True)
    return [o.output_token_ids for o in engine.generate(prompts, params)]


def measure(label: str, make, args, vocab: int, prompts) -> tuple[dict, list[list[int]]]:
    """Build a runner (CUDA graphs first, eager if they cannot be captured), greedy check, timings."""
    graphs_error = None
    for graphs in [False] if args.no_graphs else [True, False]:
        try:
            runner = make(graphs)
        except Exception as exc:  # e.g. collectives that cannot be captured: fall back to eager
            graphs_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"{label}: start with cuda graphs={graphs} failed: {graphs_error}", flush=True)
            continue
        break
    else:
        raise RuntimeError(f"{label}: could not start: {graphs_error}")
    try:
        tokens = greedy(runner, prompts, args)
        rows = [decode_times(runner, b, args, vocab) for b in args.batches]
        uses_graphs = getattr(runner, "local", runner).graphs is not None
    finally:
        close = getattr(runner, "close", None)
        if close is not None:
            close()
        del runner
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out = {"decode": rows, "cuda_graphs": uses_graphs, "graphs_error": graphs_error}
    print(label, json.dumps(out), flush=True)
    return out, tokens


# ---- all-reduce micro-benchmark (rank 0 here, rank 1 in a process of this script) ----
def allreduce_rank(rank: int, store, device: torch.device, hidden: int, args) -> list[dict]:
    group = init_group(store, rank, 2, device, 300)
    rows = []
    try:
        for batch in args.batches:
            x = torch.randn(batch, hidden, device=device).to(DTYPES[args.dtype])
            for _ in range(10):
                dist.all_reduce(x)
            group.barrier()
            sync(device)
            times = []
            for _ in range(args.allreduce_repeats):
                start = time.perf_counter()
                dist.all_reduce(x)
                dist.all_reduce(x)  # a layer: after the attention output and after the MLP
                sync(device)
                times.append(1000 * (time.perf_counter() - start))
            rows.append({"batch": batch, "bytes_per_call": x.numel() * x.element_size(),
                         "per_layer_ms_median": statistics.median(times)})  # fmt: skip
        group.barrier()
    finally:
        destroy_group()
    return rows


def allreduce_bench(devices: list[str], hidden: int, args) -> list[dict]:
    store = dist.TCPStore(HOST, 0, 2, True, timeout=datetime.timedelta(seconds=300), wait_for_workers=False)
    command = [sys.executable, __file__, "--allreduce-peer", str(store.port), "--peer-device", "cuda:0"]
    command[-1] = "cuda:0" if devices[1].startswith("cuda") else "cpu"
    command += ["--batches", *map(str, args.batches), "--allreduce-repeats", str(args.allreduce_repeats)]
    command += ["--tiny"] if args.tiny else []
    peer = subprocess.Popen(command, env=child_environment(devices[1], 1))
    try:
        rows = allreduce_rank(0, store, torch.device(devices[0]), hidden, args)
        peer.wait(timeout=120)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait()
    return rows


def main() -> None:
    args = parse_args()
    args.dtype = "float32" if args.tiny else "bfloat16"
    hf = TINY if args.tiny else LLAMA3_8B_HF_CONFIG
    config = ModelConfig.from_hf_dict(hf, where="benchmark config")
    if args.allreduce_peer:
        store = dist.TCPStore(HOST, args.allreduce_peer, 2, False, timeout=datetime.timedelta(seconds=300))
        allreduce_rank(1, store, torch.device(args.peer_device), config.hidden_size, args)
        return
    count = torch.cuda.device_count()
    if args.tiny:
        torch.set_num_threads(1)
        devices = ["cpu", "cpu"]
    elif count >= 2:
        devices = ["cuda:0", "cuda:1"]
    else:
        raise SystemExit(f"needs 2 GPUs, found {count} (use --tiny for the CPU smoke run)")
    result: dict = {
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_devices": count,
            "device_names": [torch.cuda.get_device_name(i) for i in range(count)],
            "loadavg_start": os.getloadavg(),
        },
        "model": {"shape": "tiny" if args.tiny else "llama-3-8b", "dtype": args.dtype, "seed": SEED},
        "settings": {k: str(v) for k, v in vars(args).items() if k not in ("allreduce_peer", "peer_device")},
        "devices": devices,
    }
    generator = torch.Generator().manual_seed(SEED + 1)
    prompts = [
        torch.randint(config.vocab_size, (n,), generator=generator).tolist() for n in (7, 33, 100, 250)
    ]
    tp1, tokens1 = measure("tp1", lambda g: one_rank_runner(config, args, devices[0], g), args,
                           config.vocab_size, prompts)  # fmt: skip
    tp2, tokens2 = measure("tp2", lambda g: two_rank_runner(config, args, devices, g), args,
                           config.vocab_size, prompts)  # fmt: skip
    result["configs"] = {"tp1": tp1, "tp2": tp2}
    result["speedup"] = {
        str(a["batch"]): a["median_ms"] / b["median_ms"]
        for a, b in zip(tp1["decode"], tp2["decode"], strict=True)
    }
    result["target"] = {"batch1_speedup": TARGET_BATCH1_SPEEDUP}
    if "1" in result["speedup"]:
        result["target"]["met"] = result["speedup"]["1"] >= TARGET_BATCH1_SPEEDUP
    equal = sum(a == b for s1, s2 in zip(tokens1, tokens2, strict=True) for a, b in zip(s1, s2, strict=True))
    first_diff = [next((i for i, (a, b) in enumerate(zip(s1, s2, strict=True)) if a != b), None)
                  for s1, s2 in zip(tokens1, tokens2, strict=True)]  # fmt: skip
    result["greedy"] = {
        "equal": tokens1 == tokens2,
        "token_match_fraction": equal / sum(map(len, tokens1)),
        "first_difference_per_prompt": first_diff,
        "prompt_lengths": [len(p) for p in prompts],
    }
    result["allreduce"] = allreduce_bench(devices, config.hidden_size, args)
    result["host"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({"speedup": result["speedup"], "greedy": result["greedy"]}, indent=2))


if __name__ == "__main__":
    main()
