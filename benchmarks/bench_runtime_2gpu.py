"""Serving across GPUs: a two-worker plan (12 + 20 layers) against one worker holding all 32 layers.

LLaMA-3-8B shape, random bf16 weights that do not depend on the split (`init_split_invariant_weights`,
same seed everywhere). Workers are separate processes running the runtime's hot path (`Worker`,
`WorkerLoop`, ZeroMQ `HopBatch`es, `Coordinator` with the max-flow scheduler); worker i is pinned to
``cuda:(i % device_count)`` (``CUDA_VISIBLE_DEVICES``, as `helix serve --device` does), so on one GPU
both share it and on two each has its own. Lifecycle goes through `helix.runtime.processes` (pipes)
rather than Ray; requests are submitted to the coordinator in-process (no HTTP layer).

Measured: greedy output against the single-process engine on the same weights; an open-loop load
(Poisson arrivals at several rates, `helix.runtime.loadgen.summarise`) with TTFT / TPOT / decode
throughput; TPOT of a lone request (the per-token cost of the extra hop); and the hop's parts on this
host: device→host copy, pickling, ZeroMQ loopback transfer, unpickling, host→device copy.

    python benchmarks/bench_runtime_2gpu.py --out benchmarks/results/runtime_2gpu.json   # GPU host
    python benchmarks/bench_runtime_2gpu.py --tiny --out /tmp/runtime_2gpu.json            # CPU smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq

from helix.engine.config import LLAMA3_8B_HF_CONFIG, EngineConfig, LayerRange, ModelConfig
from helix.engine.llm_engine import LLMEngine
from helix.engine.loader import build_stage
from helix.engine.model_runner import ModelRunner
from helix.engine.sampling_params import SamplingParams
from helix.runtime.emulation import capacity_model
from helix.runtime.loadgen import LoadSpec, Sample, summarise
from helix.runtime.messages import DecodeRows, HopBatch, decode, encode
from helix.runtime.processes import (
    ProcessDeployment,
    ProcessWorkerSpec,
    init_split_invariant_weights,
    start_coordinator,
)
from helix.runtime.requests import ErrorEvent, FinishEvent, TokenEvent
from helix.runtime.stage_backend import StageConfig
from helix.runtime.transport import Inbox, Outbox
from helix.sim.workload import gamma_arrivals
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import model_from_hf_config
from helix.specs.placement import Placement

LLAMA3_8B = LLAMA3_8B_HF_CONFIG
TINY = LLAMA3_8B | {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
CLUSTER = {
    "name": "one-host-two-gpus",
    "coordinator": {"region": "local", "nic_gbps": 100},
    "regions": {"local": {"bandwidth_gbps": 100, "latency_ms": 0.05}},
    "nodes": [{"name": n, "gpu": "H100-80GB", "region": "local"} for n in ("n0", "n1")],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, repeats: int = 50) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def hop_parts(hidden_size: int, batches: list[int], device: torch.device) -> list[dict]:
    """Median ms of each part of one decode hop carrying `batch` tokens of bf16 hidden states."""
    context = zmq.Context.instance()
    inbox, outbox = Inbox(context), Outbox(context)
    rows = []
    for batch in batches:
        hidden = torch.randn(batch, hidden_size, device=device).to(torch.bfloat16)
        rows = DecodeRows.from_lists(list(range(batch)), [200 + i for i in range(batch)], [1] * batch)
        message = HopBatch([], hidden, time.time(), "n0", rows)
        host = hidden.cpu()
        frames = encode(message)
        message_on_host = HopBatch([], host, time.time(), "n0", rows)

        def d2h(hidden=hidden) -> None:
            hidden.cpu()

        def transfer(message_on_host=message_on_host) -> None:
            outbox.send(inbox.address, message_on_host)
            while not inbox.recv(1.0):
                pass

        def h2d(host=host) -> None:
            host.to(device, non_blocking=False)
            sync(device)

        transfer()
        wire = [bytes(f) for f in frames]
        rows.append(
            {
                "batch": batch,
                "payload_bytes": sum(len(f) for f in wire),
                "d2h_copy_ms": median_ms(d2h),
                "encode_ms_incl_d2h": median_ms(lambda m=message: encode(m)),
                "encode_host_ms": median_ms(lambda m=message_on_host: encode(m)),
                "zmq_send_recv_incl_codec_ms": median_ms(transfer),
                "decode_ms": median_ms(lambda w=wire: decode(w)),
                "h2d_copy_ms": median_ms(h2d),
            }
        )
    inbox.close()
    outbox.close()
    return rows


def reference_outputs(hf: dict, prompts: list[list[int]], max_tokens: int, args, device) -> list[list[int]]:
    """Greedy tokens of the single-process engine (one stage, all layers) on the same weights."""
    config = ModelConfig.from_hf_dict(hf, where="benchmark config")
    stage = build_stage(
        config,
        LayerRange(0, config.num_layers),
        device=device,
        dtype=args.dtype_t,
        max_positions=args.max_model_len,
    )
    init_split_invariant_weights(stage, args.seed)
    blocks = 64 * len(prompts)
    engine = LLMEngine(
        [ModelRunner(stage, EngineConfig(num_kv_blocks=blocks, max_model_len=args.max_model_len))]
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    out = [o.output_token_ids for o in engine.generate(prompts, params)]
    del engine, stage
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


class Collector:
    """Event sinks that fill `Sample`s (times relative to `start`); events after `close()` are dropped."""

    def __init__(self, start: float) -> None:
        self.start, self.done, self.closed = start, threading.Semaphore(0), False
        self.tokens: dict[int, list[int]] = {}

    def sink(self, sample: Sample, key: int):
        self.tokens[key] = []

        def emit(event) -> None:
            now = time.perf_counter() - self.start
            if self.closed:
                return
            if isinstance(event, TokenEvent):
                self.tokens[key].append(event.token_id)
                if hasattr(sample, "token_times_s"):
                    sample.token_times_s.append(now)
                if sample.ttft_s is None:
                    sample.ttft_s = now - sample.sent_s
            elif isinstance(event, (FinishEvent, ErrorEvent)):
                sample.e2e_s = now - sample.sent_s
                sample.tokens = len(self.tokens[key])
                if isinstance(event, ErrorEvent):
                    sample.error = event.message
                self.done.release()

        return emit


def run_requests(coordinator, arrivals_s, prompts, output_tokens: int, drain_s: float):
    """Submit prompt i at arrivals_s[i] (open loop); wait up to `drain_s` after the last arrival, then
    cancel what is left (reported as unfinished). Returns samples, tokens per request, wall seconds."""
    params = SamplingParams(temperature=0.0, max_tokens=output_tokens, ignore_eos=True)
    start = time.perf_counter()
    collector, samples, seq_ids = Collector(start), [], []
    for key, (at, prompt) in enumerate(zip(arrivals_s, prompts, strict=True)):
        delay = at - (time.perf_counter() - start)
        if delay > 0:
            time.sleep(delay)
        sample = Sample(sent_s=time.perf_counter() - start)
        samples.append(sample)
        seq_ids.append(coordinator.submit(prompt, params, collector.sink(sample, key)))
    deadline = time.perf_counter() + drain_s
    finished = 0
    while finished < len(samples) and collector.done.acquire(
        timeout=max(0.0, deadline - time.perf_counter())
    ):
        finished += 1
    wall_s = time.perf_counter() - start
    if finished < len(samples):
        collector.closed = True
        for seq_id in seq_ids:
            coordinator.cancel(seq_id)
        time.sleep(2.0)  # let in-flight iterations return and free their KV
    return samples, collector.tokens, wall_s


def worker_specs(
    ranges, hf: dict, args, devices, *, threads: int = 1, max_graph_batch_size: int = 256, device_turns=True
) -> list[ProcessWorkerSpec]:
    """One `ProcessWorkerSpec` per layer range (workers n0, n1, …, the i-th on `devices[i]`): random
    weights of the `hf` shape, a KV cache of `args.kv_tokens` tokens each."""
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    specs = []
    for i, (s, e) in enumerate(ranges):
        kv_bytes = args.kv_tokens * (e - s) * 2 * hf["num_key_value_heads"] * head_dim * args.itemsize
        stage = StageConfig(
            "random",
            s,
            e,
            devices[i],
            args.dtype,
            kv_bytes,
            args.max_model_len,
            threads,
            max_graph_batch_size=max_graph_batch_size,
        )
        specs.append(ProcessWorkerSpec(f"n{i}", stage, hf, args.seed, device_turns=device_turns))
    return specs


def serve_config(label: str, ranges, hf: dict, prompts_check, reference, args) -> dict:
    """Start the workers of one plan, check greedy output, then run the load at every rate."""
    count = torch.cuda.device_count() if args.device == "cuda" else 0
    names = [f"n{i}" for i in range(len(ranges))]
    devices = [f"cuda:{i % count}" if count else "cpu" for i in range(len(ranges))]
    specs = worker_specs(ranges, hf, args, devices, threads=args.threads)
    cluster = cluster_from_dict(CLUSTER, where="benchmark cluster")
    model = model_from_hf_config(hf, name="llama-3-8b-shape")
    placement = Placement.from_pairs(dict(zip(names, ranges, strict=True)))
    started = time.perf_counter()
    deployment = ProcessDeployment(specs)
    result: dict = {"plan": {n: list(r) for n, r in zip(names, ranges, strict=True)}}
    try:
        coordinator = start_coordinator(
            deployment,
            cluster,
            model,
            placement,
            capacity_model(cluster, model),
            max_model_len=args.max_model_len,
        )
        result["startup_s"] = time.perf_counter() - started
        result["workers"] = {
            n: {k: i[k] for k in ("device", "visible_devices", "device_name", "load_s", "kv_blocks", "pid")}
            for n, i in deployment.info.items()
        }
        try:
            result |= measure(coordinator, deployment, prompts_check, reference, args)
        finally:
            coordinator.close()
    finally:
        deployment.shutdown()
    print(
        f"[{label}] {json.dumps({k: v for k, v in result.items() if k != 'load'}, default=str)[:600]}",
        flush=True,
    )
    return result


def measure(coordinator, deployment, prompts_check, reference, args) -> dict:
    rng = np.random.default_rng(args.seed)
    out: dict = {}
    samples, tokens, _ = run_requests(
        coordinator, [0.0] * len(prompts_check), prompts_check, args.check_tokens, 300
    )
    got = [tokens[i] for i in range(len(prompts_check))]
    out["greedy_identical_to_engine"] = got == reference
    out["greedy_tokens_matching"] = sum(
        a == b for g, r in zip(got, reference, strict=True) for a, b in zip(g, r, strict=False)
    )
    vocab = args.vocab

    def prompts(n: int) -> list[list[int]]:
        return [rng.integers(0, vocab, args.prompt_tokens).tolist() for _ in range(n)]

    run_requests(coordinator, [0.0] * 8, prompts(8), 8, 300)  # warm-up (graphs, allocator)
    lone = []
    for _ in range(3):
        s, _, _ = run_requests(coordinator, [0.0], prompts(1), args.lone_tokens, 300)
        lone.append((s[0].e2e_s - s[0].ttft_s) / (s[0].tokens - 1))
    out["lone_request"] = {"ttft_s": s[0].ttft_s, "tpot_ms_median": 1000 * statistics.median(lone)}
    before = deployment.stats()
    out["load"] = []
    for rate in args.rates:
        arrivals = gamma_arrivals(rate, 1.0, args.duration_s, rng)
        samples, _, wall_s = run_requests(
            coordinator, arrivals, prompts(len(arrivals)), args.output_tokens, args.drain_s
        )
        spec = LoadSpec(
            base_url="in-process",
            model="llama-3-8b-shape",
            rate_per_s=rate,
            duration_s=args.duration_s,
            prompt_tokens=args.prompt_tokens,
            output_tokens=args.output_tokens,
            warmup_s=args.warmup_s,
        )
        row = summarise(spec, samples, wall_s)
        out["load"].append(row)
        print(
            f"  rate {rate}: {row['completed']}/{row['sent']} ok, {row['decode_tokens_per_s']:.0f} tok/s, "
            f"TTFT p50 {row['ttft_s']['p50']}, TPOT p50 {row['tpot_s']['p50']}",
            flush=True,
        )
    after = deployment.stats()
    out["worker_steps"] = {
        n: {
            "steps": after[n]["steps"] - before[n]["steps"],
            "tokens": after[n]["tokens"] - before[n]["tokens"],
            "ms_per_step": 1000
            * (after[n]["busy_s"] - before[n]["busy_s"])
            / max(1, after[n]["steps"] - before[n]["steps"]),
        }
        for n in after
    }
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime_2gpu.json"))
    parser.add_argument("--rates", type=float, nargs="+", default=[4.0, 16.0, 48.0, 96.0])
    parser.add_argument("--duration-s", type=float, default=12.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--drain-s", type=float, default=15.0)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--lone-tokens", type=int, default=64)
    parser.add_argument("--check-tokens", type=int, default=32)
    parser.add_argument("--kv-tokens", type=int, default=65536)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    return resolve_device(parser.parse_args())


def resolve_device(args: argparse.Namespace) -> argparse.Namespace:
    """`args` with the device (CPU with ``--tiny`` or without CUDA), its dtype (float32 / bfloat16), the
    dtype's torch type and item size, and one thread per worker; the GPU serving benchmarks share it."""
    args.device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    args.dtype_t = getattr(torch, args.dtype)
    args.itemsize = torch.empty((), dtype=args.dtype_t).element_size()
    args.threads = 1
    return args


def main() -> None:
    args = parse_args()
    hf = TINY if args.tiny else LLAMA3_8B
    args.vocab = hf["vocab_size"]
    layers = hf["num_hidden_layers"]
    split = (0, 3 * layers // 8), (3 * layers // 8, layers)  # 12 + 20 for 32 layers
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    count = torch.cuda.device_count() if args.device == "cuda" else 0
    result: dict = {
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_devices": count,
            "device_names": [torch.cuda.get_device_name(i) for i in range(count)],
        },
        "model": {"shape": "llama-3-8b" if not args.tiny else "tiny", "dtype": args.dtype, "seed": args.seed},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "dtype_t")},
        "placement_rule": "worker i on cuda:(i % device_count)",
    }
    result["hop_parts"] = hop_parts(hf["hidden_size"], [1, 16, 64], device)
    print("hop parts:", json.dumps(result["hop_parts"]), flush=True)
    rng = np.random.default_rng(args.seed + 1)
    check = [rng.integers(0, args.vocab, n).tolist() for n in (7, 33, 100, 250)]
    reference = reference_outputs(hf, check, args.check_tokens, args, device)
    result["configs"] = {}
    for label, ranges in (("one_worker", ((0, layers),)), ("two_workers", split)):
        result["configs"][label] = serve_config(label, ranges, hf, check, reference, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
    one, two = result["configs"]["one_worker"], result["configs"]["two_workers"]
    hop = next(r for r in result["hop_parts"] if r["batch"] == 1)
    extra_ms = two["lone_request"]["tpot_ms_median"] - one["lone_request"]["tpot_ms_median"]
    result["hop_overhead_per_token_ms"] = {
        "measured_tpot_difference": extra_ms,
        "d2h_copy": hop["d2h_copy_ms"],
        "serialisation_excl_d2h": hop["encode_ms_incl_d2h"] - hop["d2h_copy_ms"] + hop["decode_ms"],
        "zmq_loopback_transfer": hop["zmq_send_recv_incl_codec_ms"]
        - hop["encode_host_ms"]
        - hop["decode_ms"],
        "h2d_copy": hop["h2d_copy_ms"],
    }
    parts = result["hop_overhead_per_token_ms"]
    parts["scheduling_and_second_step_remainder"] = extra_ms - sum(
        parts[k] for k in ("d2h_copy", "serialisation_excl_d2h", "zmq_loopback_transfer", "h2d_copy")
    )
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["hop_overhead_per_token_ms"], indent=1))
    for label, cfg in result["configs"].items():
        for row in cfg["load"]:
            print(
                f"{label:12s} rate {row['offered_rate_per_s']:5.1f}  "
                f"{row['decode_tokens_per_s']:8.1f} tok/s  "
                f"TTFT p50 {1000 * (row['ttft_s']['p50'] or 0):7.1f} ms  "
                f"TPOT p50 {1000 * (row['tpot_s']['p50'] or 0):6.1f} ms"
            )
        print(
            f"{label:12s} lone TPOT {cfg['lone_request']['tpot_ms_median']:.2f} ms, greedy identical: "
            f"{cfg['greedy_identical_to_engine']}"
        )


if __name__ == "__main__":
    main()
