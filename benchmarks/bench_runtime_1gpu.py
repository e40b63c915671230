"""Serving on one GPU up to saturation: one worker (32 layers), two chained workers (12 + 20), the engine.

LLaMA-3-8B shape, random bf16 weights that do not depend on the split (`init_split_invariant_weights`,
one seed). Workers are separate processes on the runtime's hot path (`Worker`, `WorkerLoop`, ZeroMQ
`HopBatch`es over the deployment's private Unix-domain sockets, `Coordinator` with the max-flow
scheduler), all on the one GPU; requests go to the coordinator in-process (no HTTP). Workers and the
engine alike replay decode graphs of up to `--max-graph-batch` requests. Each deployment is swept over
Poisson arrival rates up to and past saturation (decode tok/s, TTFT and TPOT p50/p99 per rate), after a
check that its greedy output equals the single-process engine's.

What the runtime is compared with, in the same run, same weights, same KV capacity:
- `engine_serving`: the single-process `LLMEngine` (CUDA graphs for pure-decode steps, asynchronous
  scheduling, at most `max_step_tokens` tokens per step like a worker's loop) served the same workload:
  the same arrival times and prompts at every rate, in real time, tokens timed as they come out of
  `step()`. Its best decode tok/s over the rates is the engine's best on this workload mix (every
  request brings a 128-token prompt to prefill beside its 128 output tokens).
  `saturation_over_engine_best` = a deployment's best decode tok/s of its sweep / that figure.
- `engine`: the engine's pure-decode throughput at fixed batch sizes (no prompts in the steps), an upper
  bound no workload with prompts reaches; `saturation_over_engine_decode_best` divides by its best.
The hop's cost per token is the lone request's TPOT on two workers minus on one.

Prefix caching in the workers (`prefix_cache` per deployment): TTFT of lone requests sharing a
384-token system prompt (hits after the first) against requests of the same lengths with distinct system
prompts (misses), in the same deployment.

The serving path measured is the default one: routes decode on their own (the last stage feeds each
token back to the first, `CoordinatorConfig.pipeline_decode`, routes of any length) and workers on one
GPU step in turn (`helix.runtime.device_turn`); `two_workers_without_turns` is the same deployment with
the turns off, its two CUDA contexts time-sliced by the driver, and `two_workers_coordinator_decode`
the same deployment with the coordinator starting every token (`pipeline_decode_max_stages=1`).

    python benchmarks/bench_runtime_1gpu.py --out benchmarks/results/runtime_1gpu.json   # GPU host
    python benchmarks/bench_runtime_1gpu.py --tiny --out /tmp/runtime_1gpu.json            # CPU smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime_2gpu import (  # noqa: E402
    LLAMA3_8B,
    TINY,
    reference_outputs,
    resolve_device,
    run_requests,
    worker_specs,
)

from helix.engine.config import EngineConfig, LayerRange, ModelConfig  # noqa: E402
from helix.engine.llm_engine import LLMEngine  # noqa: E402
from helix.engine.loader import build_stage  # noqa: E402
from helix.engine.model_runner import ModelRunner  # noqa: E402
from helix.engine.sampling_params import SamplingParams  # noqa: E402
from helix.runtime.emulation import capacity_model  # noqa: E402
from helix.runtime.loadgen import LoadSpec, Sample, summarise  # noqa: E402
from helix.runtime.processes import (  # noqa: E402
    ProcessDeployment,
    init_split_invariant_weights,
    start_coordinator,
)
from helix.sim.workload import gamma_arrivals  # noqa: E402
from helix.specs.cluster_yaml import cluster_from_dict  # noqa: E402
from helix.specs.model import model_from_hf_config  # noqa: E402
from helix.specs.placement import Placement  # noqa: E402

CLUSTER = {
    "name": "one-gpu",
    "coordinator": {"region": "local", "nic_gbps": 100},
    "regions": {"local": {"bandwidth_gbps": 100, "latency_ms": 0.05}},
    "nodes": [{"name": n, "gpu": "H200", "region": "local"} for n in ("n0", "n1")],
}


def engine_best(hf: dict, args, device: torch.device) -> dict:
    """The single-process engine's decode tok/s at each batch (same weights, prompt length, KV)."""
    config = ModelConfig.from_hf_dict(hf, where="benchmark config")
    stage = build_stage(
        config,
        LayerRange(0, config.num_layers),
        device=device,
        dtype=args.dtype_t,
        max_positions=args.max_model_len,
    )
    init_split_invariant_weights(stage, args.seed)
    blocks = max(args.engine_batches) * (-(-args.max_model_len // 16)) + 16
    engine_config = EngineConfig(
        num_kv_blocks=blocks, max_model_len=args.max_model_len, max_num_seqs=max(args.engine_batches)
    )
    engine = LLMEngine([ModelRunner(stage, engine_config)])
    rng = np.random.default_rng(args.seed + 7)
    rows = []
    for batch in args.engine_batches:
        params = SamplingParams(temperature=0.0, max_tokens=args.engine_steps + 40, ignore_eos=True)
        ids = [
            engine.add_request(rng.integers(0, args.vocab, args.prompt_tokens).tolist(), params)
            for _ in range(batch)
        ]
        while engine.scheduler.waiting or any(
            s.num_computed_tokens < len(s.prompt_token_ids) for s in engine.scheduler.running
        ):
            engine.step()
        for _ in range(3):
            engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.engine_steps):
            engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.engine_steps
        rows.append({"batch": batch, "tokens_per_s": batch / seconds, "step_ms": 1000 * seconds})
        print("engine", rows[-1], flush=True)
        for seq_id in ids:
            engine.cancel(seq_id)
        engine.step()
    del engine, stage
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    best = max(rows, key=lambda r: r["tokens_per_s"])
    return {"by_batch": rows, "best_tokens_per_s": best["tokens_per_s"], "best_batch": best["batch"]}


def workload(rate: float, args) -> tuple[np.ndarray, list[list[int]]]:
    """Arrival times and prompts of one rate, the same for every deployment and for the engine."""
    rng = np.random.default_rng([args.seed, int(rate * 1000)])
    arrivals = gamma_arrivals(rate, 1.0, args.duration_s, rng)
    return arrivals, [rng.integers(0, args.vocab, args.prompt_tokens).tolist() for _ in arrivals]


def engine_serving(hf: dict, args, device: torch.device) -> dict:
    """The single-process engine on the sweep's workload (see the module docstring)."""
    config = ModelConfig.from_hf_dict(hf, where="benchmark config")
    stage = build_stage(
        config,
        LayerRange(0, config.num_layers),
        device=device,
        dtype=args.dtype_t,
        max_positions=args.max_model_len,
    )
    init_split_invariant_weights(stage, args.seed)
    engine_config = EngineConfig(
        num_kv_blocks=args.kv_tokens // 16,
        max_model_len=args.max_model_len,
        max_num_seqs=args.kv_tokens // (args.prompt_tokens + args.output_tokens),
        max_num_batched_tokens=args.max_step_tokens,
        max_graph_batch_size=args.max_graph_batch,
    )
    engine = LLMEngine([ModelRunner(stage, engine_config)])
    params = SamplingParams(temperature=0.0, max_tokens=args.output_tokens, ignore_eos=True)
    rng = np.random.default_rng(args.seed + 3)
    engine.generate(
        [rng.integers(0, args.vocab, args.prompt_tokens).tolist() for _ in range(32)],
        SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
    )  # warm-up
    out: dict = {
        "config": {
            k: getattr(engine_config, k)
            for k in ("num_kv_blocks", "max_num_seqs", "max_num_batched_tokens", "max_graph_batch_size")
        },
        "load": [],
    }
    for rate in args.rates:
        arrivals, prompts = workload(rate, args)
        samples: list[Sample] = []
        by_seq: dict[int, Sample] = {}
        start, nxt = time.perf_counter(), 0
        steps = 0
        while True:
            now = time.perf_counter() - start
            while nxt < len(arrivals) and arrivals[nxt] <= now:
                sample = Sample(sent_s=now)
                samples.append(sample)
                by_seq[engine.add_request(prompts[nxt], params)] = sample
                nxt += 1
            if now > arrivals[-1] + args.drain_s:
                break
            if not engine.has_unfinished():
                if nxt == len(arrivals):
                    break
                time.sleep(min(0.001, max(0.0, arrivals[nxt] - now)))
                continue
            outputs = engine.step()
            steps += 1
            now = time.perf_counter() - start
            for o in outputs:
                sample = by_seq[o.seq_id]
                sample.token_times_s.append(now)
                if sample.ttft_s is None:
                    sample.ttft_s = now - sample.sent_s
                if o.finished:
                    sample.e2e_s, sample.tokens = now - sample.sent_s, len(o.output_token_ids)
        wall_s = time.perf_counter() - start
        for seq_id, sample in by_seq.items():
            if sample.e2e_s is None:
                engine.cancel(seq_id)
        while engine.has_unfinished():
            engine.step()
        spec = LoadSpec(
            base_url="in-process",
            model="llama-3-8b-shape",
            rate_per_s=rate,
            duration_s=args.duration_s,
            prompt_tokens=args.prompt_tokens,
            output_tokens=args.output_tokens,
            warmup_s=args.warmup_s,
        )
        row = summarise(spec, samples, wall_s) | {"steps": steps}
        out["load"].append(row)
        print(
            f"  [engine] rate {rate}: {row['completed']}/{row['sent']} ok, "
            f"{row['decode_tokens_per_s']:.0f} tok/s, "
            f"TTFT p50 {row['ttft_s']['p50']}, TPOT p50 {row['tpot_s']['p50']} p99 {row['tpot_s']['p99']}, "
            f"{steps} steps",
            flush=True,
        )
    out["saturation_decode_tokens_per_s"] = max(r["decode_tokens_per_s"] for r in out["load"])
    del engine, stage
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def sweep(
    label: str,
    ranges,
    hf: dict,
    check,
    reference,
    args,
    device_turns: bool = True,
    max_stages: int | None = None,
) -> dict:
    names = [f"n{i}" for i in range(len(ranges))]
    device = "cuda:0" if args.device == "cuda" else "cpu"
    specs = worker_specs(
        ranges,
        hf,
        args,
        [device] * len(ranges),
        threads=args.threads,
        max_graph_batch_size=args.max_graph_batch,
        device_turns=device_turns,
    )
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
            pipeline_decode_max_stages=max_stages
            if max_stages is not None
            else args.pipeline_decode_max_stages,
        )
        result["startup_s"] = time.perf_counter() - started
        result["workers"] = {
            n: {k: i[k] for k in ("load_s", "kv_blocks", "device_name")} for n, i in deployment.info.items()
        }
        try:
            result |= measure(coordinator, deployment, check, reference, args, label)
        finally:
            coordinator.close()
    finally:
        deployment.shutdown()
    return result


def measure(coordinator, deployment, check, reference, args, label: str) -> dict:
    rng = np.random.default_rng(args.seed)
    out: dict = {}
    _, tokens, _ = run_requests(coordinator, [0.0] * len(check), check, args.check_tokens, 300)
    out["greedy_identical_to_engine"] = [tokens[i] for i in range(len(check))] == reference

    def prompts(n: int) -> list[list[int]]:
        return [rng.integers(0, args.vocab, args.prompt_tokens).tolist() for _ in range(n)]

    run_requests(coordinator, [0.0] * 32, prompts(32), 16, 300)  # warm-up
    lone = []
    for _ in range(3):
        s, _, _ = run_requests(coordinator, [0.0], prompts(1), args.lone_tokens, 300)
        lone.append((s[0].e2e_s - s[0].ttft_s) / (s[0].tokens - 1))
    out["lone_request"] = {"ttft_s": s[0].ttft_s, "tpot_ms_median": 1000 * statistics.median(lone)}
    out["prefix_cache"] = prefix_cache(coordinator, rng, args)
    out["load"] = []
    for rate in args.rates:
        before = deployment.stats()
        arrivals, rate_prompts = workload(rate, args)
        samples, _, wall_s = run_requests(
            coordinator, arrivals, rate_prompts, args.output_tokens, args.drain_s
        )
        after = deployment.stats()
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
        row["worker_steps"] = {
            n: {
                "steps": after[n]["steps"] - before[n]["steps"],
                "tokens_per_step": (after[n]["tokens"] - before[n]["tokens"])
                / max(1, after[n]["steps"] - before[n]["steps"]),
                "busy_fraction": (after[n]["busy_s"] - before[n]["busy_s"]) / wall_s,
                "ms_per_step": 1000
                * (after[n]["busy_s"] - before[n]["busy_s"])
                / max(1, after[n]["steps"] - before[n]["steps"]),
            }
            for n in after
        }
        out["load"].append(row)
        print(
            f"  [{label}] rate {rate}: {row['completed']}/{row['sent']} ok, "
            f"{row['decode_tokens_per_s']:.0f} tok/s, "
            f"TTFT p50 {row['ttft_s']['p50']}, TPOT p50 {row['tpot_s']['p50']} p99 {row['tpot_s']['p99']}, "
            f"steps {json.dumps(row['worker_steps'])}",
            flush=True,
        )
    out["saturation_decode_tokens_per_s"] = max(r["decode_tokens_per_s"] for r in out["load"])
    return out


def prefix_cache(coordinator, rng: np.random.Generator, args) -> dict:
    """TTFT of lone requests that share a system prompt (prefix hits after the first) against requests
    of the same lengths whose system prompts all differ (misses), in the same deployment."""
    system = rng.integers(0, args.vocab, args.system_prompt_tokens).tolist()
    ttft: dict[str, list[float]] = {"shared": [], "unique": []}
    for _ in range(args.prefix_requests):
        question = rng.integers(0, args.vocab, args.question_tokens).tolist()
        unique = rng.integers(0, args.vocab, args.system_prompt_tokens).tolist()
        for kind, prompt in (("shared", system + question), ("unique", unique + question)):
            samples, _, _ = run_requests(coordinator, [0.0], [prompt], 1, 60)
            ttft[kind].append(samples[0].ttft_s)
    shared, unique = statistics.median(ttft["shared"][1:]), statistics.median(ttft["unique"])
    return {
        "system_prompt_tokens": args.system_prompt_tokens,
        "question_tokens": args.question_tokens,
        "requests": args.prefix_requests,
        "ttft_ms_shared_first": 1000 * ttft["shared"][0],
        "ttft_ms_shared_p50_after_first": 1000 * shared,
        "ttft_ms_unique_p50": 1000 * unique,
        "ttft_speedup": unique / shared,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime_1gpu.json"))
    parser.add_argument("--rates", type=float, nargs="+", default=[16.0, 48.0, 96.0, 144.0, 256.0])
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--drain-s", type=float, default=12.0)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--lone-tokens", type=int, default=64)
    parser.add_argument("--check-tokens", type=int, default=16)
    parser.add_argument("--kv-tokens", type=int, default=131072)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--engine-batches", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--engine-steps", type=int, default=32)
    parser.add_argument("--max-step-tokens", type=int, default=4096, help="the worker loop's default")
    parser.add_argument(
        "--max-graph-batch",
        type=int,
        default=640,
        help="largest decode step replayed from a CUDA graph, workers and engine alike (the KV holds "
        "512 requests of this workload at full length; the coordinator admits by expected KV, and up to "
        "578 were seen in one step)",
    )
    parser.add_argument(
        "--pipeline-decode-max-stages",
        type=int,
        default=None,
        help="routes of up to this many workers decode on their own (CoordinatorConfig; default: any "
        "route); the two_workers_coordinator_decode deployment sets 1",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["one_worker", "two_workers", "two_workers_coordinator_decode", "two_workers_without_turns"],
    )
    parser.add_argument("--system-prompt-tokens", type=int, default=384)
    parser.add_argument("--question-tokens", type=int, default=32)
    parser.add_argument("--prefix-requests", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = resolve_device(parser.parse_args())
    if args.device == "cpu":
        torch.set_num_threads(args.threads)  # the in-process engine like a worker process
    return args


def main() -> None:
    args = parse_args()
    hf = TINY if args.tiny else LLAMA3_8B
    args.vocab = hf["vocab_size"]
    layers = hf["num_hidden_layers"]
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    result: dict = {
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor(),
            "loadavg_start": os.getloadavg(),
        },
        "model": {"shape": "llama-3-8b" if not args.tiny else "tiny", "dtype": args.dtype, "seed": args.seed},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "dtype_t")},
    }
    result["engine"] = engine_best(hf, args, device)
    result["engine_serving"] = engine_serving(hf, args, device)
    rng = np.random.default_rng(args.seed + 1)
    check = [rng.integers(0, args.vocab, n).tolist() for n in (7, 33, 100)]
    reference = reference_outputs(hf, check, args.check_tokens, args, device)
    split = ((0, 3 * layers // 8), (3 * layers // 8, layers))
    plans = {
        "one_worker": ((0, layers),),
        "two_workers": split,
        "two_workers_without_turns": split,
        "two_workers_coordinator_decode": split,
    }
    result["configs"] = {}
    best = result["engine_serving"]["saturation_decode_tokens_per_s"]
    decode_best = result["engine"]["best_tokens_per_s"]
    for label in args.configs:
        try:
            turns = label != "two_workers_without_turns"  # the ablation: both contexts time-sliced
            stages = 1 if label == "two_workers_coordinator_decode" else None  # the ablation: every token
            config = sweep(
                label, plans[label], hf, check, reference, args, device_turns=turns, max_stages=stages
            )
            config["saturation_over_engine_best"] = config["saturation_decode_tokens_per_s"] / best
            config["saturation_over_engine_decode_best"] = (
                config["saturation_decode_tokens_per_s"] / decode_best
            )
        except Exception as exc:  # record and go on to the next deployment
            config = {"error": f"{type(exc).__name__}: {exc}"}
        result["configs"][label] = config
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
    configs = result["configs"]
    summary: dict = {
        "compares": "each deployment's best decode tok/s over the rate sweep / the single-process engine's "
        "best over the same sweep (same arrivals, prompts, weights, KV capacity, step token budget)",
        "engine_best_tokens_per_s": best,
        "engine_decode_only_best_tokens_per_s": decode_best,
        "target_saturation_over_engine_best": 0.85,
    }
    for label, config in configs.items():
        if "saturation_over_engine_best" in config:
            summary[label] = {
                "saturation_decode_tokens_per_s": config["saturation_decode_tokens_per_s"],
                "saturation_over_engine_best": config["saturation_over_engine_best"],
                "saturation_over_engine_decode_best": config["saturation_over_engine_decode_best"],
                "lone_tpot_ms": config["lone_request"]["tpot_ms_median"],
                "greedy_identical_to_engine": config["greedy_identical_to_engine"],
                "prefix_cache_ttft_speedup": config["prefix_cache"]["ttft_speedup"],
            }
    if "one_worker" in summary and "two_workers" in summary:
        one, two = summary["one_worker"], summary["two_workers"]
        summary["hop_ms_per_token"] = two["lone_tpot_ms"] - one["lone_tpot_ms"]
        summary["target_hop_ms_per_token"] = 0.25
        summary["two_over_one_worker"] = (
            two["saturation_decode_tokens_per_s"] / one["saturation_decode_tokens_per_s"]
        )
        summary["target_two_over_one_worker"] = 0.9
    if "two_workers" in summary and "two_workers_without_turns" in summary:
        summary["two_workers_over_without_turns"] = (
            summary["two_workers"]["saturation_decode_tokens_per_s"]
            / summary["two_workers_without_turns"]["saturation_decode_tokens_per_s"]
        )
    result["summary"] = summary
    result["host"]["loadavg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(summary, indent=1))
    rows = [("engine", c) for c in [result["engine_serving"]]] + list(configs.items())
    for label, config in rows:
        for row in config.get("load", []):
            print(
                f"{label:12s} rate {row['offered_rate_per_s']:6.1f} {row['decode_tokens_per_s']:8.1f} tok/s  "
                f"TTFT p50 {1000 * (row['ttft_s']['p50'] or 0):7.1f} ms  "
                f"TPOT p50 {1000 * (row['tpot_s']['p50'] or 0):6.1f}"
                f" p99 {1000 * (row['tpot_s']['p99'] or 0):6.1f} ms"
            )


if __name__ == "__main__":
    main()
