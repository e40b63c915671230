"""Where the time of chained workers on one GPU goes: a timeline of every worker step and the coordinator.

Starts the deployments of `bench_runtime_1gpu.py` (one worker; 12 + 20 layers) and serves one Poisson
rate for a few seconds. Inside each worker process the step loop's phases are timed (inbox receive and
frame decoding, admission, waiting for the GPU turn, launching the step's device work, the step's GPU
span between CUDA events, waiting for the read-back, frame encoding and sending); in the benchmark
process the coordinator's loop is timed the same way. Variants (``--variants``) switch the wire's CURVE
encryption and the coordinator's `pipeline_decode_max_stages`, so each suspect's share shows up as a
difference in one call. A short wire microbenchmark (encode, send, receive, decode of hop-sized
batches, with and without CURVE) runs first.

    python benchmarks/profile_runtime_hop.py --out /tmp/hop_profile.json            # GPU host
    python benchmarks/profile_runtime_hop.py --tiny --out /tmp/hop_profile.json     # CPU smoke
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime_1gpu import CLUSTER, workload  # noqa: E402
from bench_runtime_2gpu import LLAMA3_8B, TINY, resolve_device, run_requests, worker_specs  # noqa: E402

import helix.runtime.processes as processes  # noqa: E402
from helix.runtime import coordinator as coordinator_module  # noqa: E402
from helix.runtime import transport  # noqa: E402
from helix.runtime.emulation import capacity_model  # noqa: E402
from helix.runtime.keys import WireKeys  # noqa: E402
from helix.runtime.messages import DecodeRows, HopBatch  # noqa: E402
from helix.specs.cluster_yaml import cluster_from_dict  # noqa: E402
from helix.specs.model import model_from_hf_config  # noqa: E402
from helix.specs.placement import Placement  # noqa: E402

TRACE_ENV = "HELIX_HOP_TRACE_DIR"
NO_GC_ENV = "HELIX_HOP_NO_GC"


class Phases:
    """Seconds and calls per named phase, plus a per-step timeline."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.steps: list[dict] = []
        self.events: list[tuple[str, float, float]] = []  # label, start (perf_counter), seconds

    def add(self, label: str, start: float, seconds: float) -> None:
        self.seconds[label] += seconds
        self.calls[label] += 1
        self.events.append((label, start, seconds))

    def wrap(self, owner, name: str, label: str | None = None) -> None:
        original = getattr(owner, name)
        label = label or name

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if not threading.current_thread().name.startswith(("helix-worker", "helix-coordinator")):
                return original(*args, **kwargs)  # e.g. the ZAP handler's thread
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, start, time.perf_counter() - start)

        setattr(owner, name, timed)


def install_worker_tracing(phases: Phases) -> None:
    """Time the step loop's phases in this (worker) process."""
    from helix.runtime import worker as worker_module
    from helix.runtime import worker_loop
    from helix.runtime.device_turn import DeviceTurn

    phases.wrap(transport.zmq.Poller, "poll", "poll_wait")
    phases.wrap(transport, "decode", "frame_decode")
    phases.wrap(transport, "encode", "frame_encode")
    phases.wrap(transport.Outbox, "send", "send_total")
    phases.wrap(DeviceTurn, "acquire", "turn_wait")
    phases.wrap(worker_module.Worker, "_admit", "admit")
    phases.wrap(worker_module.Worker, "_account", "account")
    phases.wrap(worker_module.Worker, "_split_by_next_hop", "split")
    phases.wrap(torch.cuda.Event, "synchronize", "event_sync")
    phases.wrap(worker_loop.WorkerLoop, "_finish", "finish_total")
    from helix.runtime import stage_backend

    phases.wrap(worker_module._Inputs, "pack", "pack_inputs")  # pinned staging of the received inputs
    phases.wrap(stage_backend.StageBackend, "forward", "backend_forward")
    phases.wrap(stage_backend.StageBackend, "forward_decode", "backend_forward")
    phases.wrap(stage_backend.StageBackend, "sample_launch", "sample_launch")

    original_launch = worker_module.Worker._launch_device_work

    def launch(self, items, rows, inputs, errors, started):
        t0 = time.perf_counter()
        begin = torch.cuda.Event(enable_timing=True) if torch.cuda.is_available() else None
        if begin is not None:
            begin.record()
        out = original_launch(self, items, rows, inputs, errors, started)
        end = None
        if begin is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        t1 = time.perf_counter()
        phases.add("launch_host", t0, t1 - t0)
        phases.steps.append(
            {
                "t0": t0,
                "launched": t1,
                "tokens": sum(i.num_new_tokens for i in items) + len(rows.seq_ids),
                "items": len(items) + len(rows.seq_ids),
                "events": (begin, end),
            }
        )
        return out

    worker_module.Worker._launch_device_work = launch


def dump_worker(phases: Phases, name: str) -> None:
    directory = os.environ.get(TRACE_ENV)
    if not directory:
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    steps = []
    for step in phases.steps:
        begin, end = step.pop("events")
        step["gpu_ms"] = begin.elapsed_time(end) if begin is not None else None
        steps.append(step)
    out = {"events": phases.events, "steps": steps}
    Path(directory, f"{name}.json").write_text(json.dumps(out))


def traced_worker_main(spec, conn, *args) -> None:
    """`processes._worker_main` with the loop's phases timed; writes `<name>.json` when stopped."""
    phases = Phases()
    install_worker_tracing(phases)
    if os.environ.get(NO_GC_ENV):
        gc.freeze()  # the loaded stage's objects are never scanned again
        gc.disable()  # the variant that tells whether collections stall the step loop
    try:
        ORIGINAL_WORKER_MAIN(spec, conn, *args)
    finally:
        dump_worker(phases, spec.name)


ORIGINAL_WORKER_MAIN = processes._worker_main


def install_coordinator_tracing(phases: Phases) -> None:
    cls = coordinator_module.Coordinator
    for name in ("_on_result", "_admit_waiting", "_flush", "_watchdog"):
        phases.wrap(cls, name)
    original_recv = transport.Inbox.recv

    def recv(self, timeout_s, max_messages=1024):
        start = time.perf_counter()
        out = original_recv(self, timeout_s, max_messages)
        phases.seconds["inbox_recv"] += time.perf_counter() - start
        phases.calls["inbox_recv"] += 1
        phases.calls["messages"] += len(out)
        return out

    transport.Inbox.recv = recv


def wire_microbench(repeats: int) -> list[dict]:
    """Encode + send + receive + decode of one hop batch, per size, with and without CURVE."""
    rows = []
    for tokens in (1, 64, 256, 1024):
        for curve in (False, True):
            keys = WireKeys.generate() if curve else None
            rx, tx = transport.Wire(keys, "rx"), transport.Wire(keys, "tx")
            inbox, outbox = rx.inbox("127.0.0.1"), tx.outbox()
            hidden = torch.randn(tokens, 4096).to(torch.bfloat16)
            decodes = DecodeRows.from_lists(list(range(tokens)), [200] * tokens, [1] * tokens)
            message = HopBatch([], hidden, 0.0, "n0", decodes)
            times = []
            for _ in range(repeats + 2):
                start = time.perf_counter()
                outbox.send(inbox.address, message)
                got: list = []
                while not got:
                    got = inbox.recv(1.0)
                times.append(time.perf_counter() - start)
            outbox.close()
            inbox.close()
            tx.close()
            rx.close()
            rows.append({"tokens": tokens, "curve": curve, "ms_median": 1000 * float(np.median(times[2:]))})
            print("wire", rows[-1], flush=True)
    return rows


def run_variant(
    label: str,
    ranges,
    curve: bool,
    max_stages: int,
    graph_batch: int,
    hf: dict,
    args,
    trace_dir: Path,
    no_gc: bool = False,
) -> dict:
    names = [f"n{i}" for i in range(len(ranges))]
    device = "cuda:0" if args.device == "cuda" else "cpu"
    specs = worker_specs(ranges, hf, args, [device] * len(ranges), max_graph_batch_size=graph_batch)
    variant_dir = trace_dir / label
    variant_dir.mkdir(parents=True, exist_ok=True)
    os.environ[TRACE_ENV] = str(variant_dir)
    os.environ.pop(NO_GC_ENV, None)
    if no_gc:
        os.environ[NO_GC_ENV] = "1"
    processes._worker_main = traced_worker_main
    phases = Phases()
    saved = {
        n: getattr(coordinator_module.Coordinator, n)
        for n in ("_on_result", "_admit_waiting", "_flush", "_watchdog")
    }
    saved_recv = transport.Inbox.recv
    deployment = processes.ProcessDeployment(specs, ipc=not curve)  # CURVE on TCP, or private ipc://
    out: dict = {
        "label": label,
        "curve": curve,
        "pipeline_decode_max_stages": max_stages,
        "max_graph_batch_size": graph_batch,
    }
    try:
        cluster = cluster_from_dict(CLUSTER, where="profile cluster")
        model = model_from_hf_config(hf, name="llama-3-8b-shape")
        placement = Placement.from_pairs(dict(zip(names, ranges, strict=True)))
        coordinator = processes.start_coordinator(
            deployment,
            cluster,
            model,
            placement,
            capacity_model(cluster, model),
            max_model_len=args.max_model_len,
            pipeline_decode_max_stages=max_stages,
        )
        try:
            rng = np.random.default_rng(args.seed)
            warm = [rng.integers(0, args.vocab, args.prompt_tokens).tolist() for _ in range(32)]
            run_requests(coordinator, [0.0] * 32, warm, 16, 120)
            lone_started = time.perf_counter()
            lone = run_requests(coordinator, [0.0], warm[:1], 64, 60)[0][0]
            out["lone_window"] = (lone_started, time.perf_counter())
            out["lone_tpot_ms"] = 1000 * (lone.e2e_s - lone.ttft_s) / (lone.tokens - 1)
            install_coordinator_tracing(phases)
            out["rates"] = []
            for rate in args.rates:
                phases.seconds.clear()
                phases.calls.clear()
                arrivals, prompts = workload(rate, args)
                before = deployment.stats()
                started = time.perf_counter()
                samples, _, wall_s = run_requests(
                    coordinator, arrivals, prompts, args.output_tokens, args.drain_s
                )
                loop_s = time.perf_counter() - started
                after = deployment.stats()
                done = [s for s in samples if s.e2e_s is not None and s.tokens]
                out["rates"].append(
                    {
                        "rate": rate,
                        "window": (started, started + loop_s),
                        "sent": len(samples),
                        "completed": len(done),
                        "wall_s": wall_s,
                        "decode_tokens_per_s": sum(s.tokens for s in done) / wall_s,
                        "coordinator": {
                            "loop_s": loop_s,
                            "seconds": dict(phases.seconds),
                            "calls": dict(phases.calls),
                        },
                        "worker_stats": {
                            n: {k: after[n][k] - before[n][k] for k in ("steps", "tokens", "busy_s")}
                            for n in after
                        },
                    }
                )
        finally:
            for n, f in saved.items():
                setattr(coordinator_module.Coordinator, n, f)
            transport.Inbox.recv = saved_recv
            coordinator.close()
    finally:
        deployment.shutdown()
        processes._worker_main = ORIGINAL_WORKER_MAIN
    traces = {}
    for name in names:
        path = variant_dir / f"{name}.json"
        if path.exists():
            traces[name] = json.loads(path.read_text())
    if "lone_window" in out:  # a lone request's steps: where a token's time goes with nothing else running
        out["lone_workers"] = {n: summarise_worker(trace, out["lone_window"]) for n, trace in traces.items()}
        for name, w in out["lone_workers"].items():
            per_step = {k: round(1000 * v / max(1, w["steps"]), 3) for k, v in w["seconds"].items()}
            print("lone", label, name, w["steps"], "steps; ms per step", json.dumps(per_step), flush=True)
    for row in out.get("rates", []):
        row["workers"] = {name: summarise_worker(trace, row["window"]) for name, trace in traces.items()}
        print(json.dumps({k: v for k, v in row.items() if k != "workers"}), flush=True)
        for name, w in row["workers"].items():
            print(name, json.dumps({k: v for k, v in w.items() if k != "timeline_tail"}), flush=True)
    return out


def summarise_worker(trace: dict, window: tuple[float, float]) -> dict:
    """Phase totals and the step timeline within the load's `window` (perf_counter, shared by processes)."""
    lo, hi = window
    steps = [s for s in trace["steps"] if lo <= s["t0"] <= hi]
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for label, start, dt in trace["events"]:
        if lo <= start <= hi:
            seconds[label] += dt
            calls[label] += 1
    gpu = [s["gpu_ms"] for s in steps if s["gpu_ms"] is not None]
    summary = {
        "window_s": hi - lo,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "calls": dict(calls),
        "steps": len(steps),
        "tokens_per_step_mean": float(np.mean([s["tokens"] for s in steps])) if steps else 0,
        "gpu_ms_total": float(np.sum(gpu)) if gpu else None,
        "gpu_ms_per_step_mean": float(np.mean(gpu)) if gpu else None,
    }
    if steps:
        summary["first_t0"], summary["last_t0"] = steps[0]["t0"], steps[-1]["t0"]
        summary["timeline_tail"] = [
            {k: (round(v, 5) if isinstance(v, float) else v) for k, v in s.items()} for s in steps[-40:]
        ]
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rates", type=float, nargs="+", default=[64.0, 192.0])
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--drain-s", type=float, default=4.0)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--kv-tokens", type=int, default=131072)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--wire-repeats", type=int, default=30)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["one:ipc:1:512", "two:curve:1:512", "two:ipc:1:512", "two:ipc:2:512"],
        help="deployment:curve|ipc:pipeline_decode_max_stages:max_graph_batch_size[:nogc] (curve: CURVE "
        "sockets on TCP loopback; ipc: unencrypted sockets in a private directory)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = resolve_device(parser.parse_args())
    if args.tiny:
        args.kv_tokens = min(args.kv_tokens, 16384)
    return args


def main() -> None:
    args = parse_args()
    hf = TINY if args.tiny else LLAMA3_8B
    args.vocab = hf["vocab_size"]
    layers = hf["num_hidden_layers"]
    plans = {"one": ((0, layers),), "two": ((0, 3 * layers // 8), (3 * layers // 8, layers))}
    result: dict = {"wire": wire_microbench(args.wire_repeats), "variants": []}
    trace_dir = args.out.parent / (args.out.stem + "_traces")
    for variant in args.variants:
        deployment, wire, stages, graph, *extra = variant.split(":")
        try:
            row = run_variant(
                variant.replace(":", "_"),
                plans[deployment],
                wire == "curve",
                int(stages),
                int(graph),
                hf,
                args,
                trace_dir,
                no_gc="nogc" in extra,
            )
        except Exception as exc:
            row = {"label": variant, "error": f"{type(exc).__name__}: {exc}"}
            print(row, flush=True)
        result["variants"].append(row)
        args.out.write_text(json.dumps(result, indent=1))
    for variant in result["variants"]:
        for row in variant.get("rates", []):
            gpu_s = sum((w["gpu_ms_total"] or 0) for w in row["workers"].values()) / 1000
            window_s = row["window"][1] - row["window"][0]
            line = (
                f"{variant['label']:18s} rate {row['rate']:5.0f}: {row['decode_tokens_per_s']:7.0f} tok/s "
                f"{row['completed']}/{row['sent']} wall {row['wall_s']:5.1f} s "
                f"lone {variant['lone_tpot_ms']:.2f} ms "
                f"GPU busy {gpu_s:.2f}/{window_s:.2f} s"
            )
            for name, w in row["workers"].items():
                ms = {k: 1000 * v for k, v in w["seconds"].items()}
                line += (
                    f" | {name} {w['steps']} st {w['tokens_per_step_mean']:.0f} tok/st"
                    f" gpu {w['gpu_ms_total'] or 0:5.0f} launch {ms.get('launch_host', 0):5.0f}"
                    f" turn {ms.get('turn_wait', 0):5.0f} sync {ms.get('event_sync', 0):5.0f}"
                    f" dec {ms.get('frame_decode', 0):4.0f} send {ms.get('send_total', 0):4.0f}"
                    f" poll {ms.get('poll_wait', 0):5.0f}"
                )
            print(line)


if __name__ == "__main__":
    main()
