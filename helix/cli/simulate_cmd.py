"""`helix simulate`: run the discrete-event simulator on a plan and write a JSON result and PNG plots."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from helix.cli.common import (
    CapacityOpt,
    ClusterOpt,
    HelixUnitsOpt,
    ModelOpt,
    ProfilesOpt,
    check_choice,
    check_number,
    check_output_path,
    load_inputs,
)
from helix.errors import HelixInputError
from helix.placement.plan_io import Plan, check_plan_matches, load_plan
from helix.reference import reference_file
from helix.scheduling.base import SCHEDULERS
from helix.scheduling.kv import KVParameters
from helix.sim.config import KV_PARAMS, MODES, SimConfig
from helix.sim.elastic import elastic_settings, write_membership_plot
from helix.sim.plots import write_plots
from helix.sim.run import simulate
from helix.sim.workload import (
    Lengths,
    bucket_arrivals,
    gamma_arrivals,
    load_bucket_counts,
    load_lengths,
    poisson_arrivals,
)
from helix.specs.helix_ini import load_helix_placement
from helix.specs.limits import check_simulation_size

ARRIVALS = ("poisson", "gamma", "azure-buckets", "trace")


def _load_plan_any(path: Path, cluster_nodes: tuple[str, ...], num_layers: int) -> Plan:
    bundled = reference_file("placements", f"{path}.ini")
    if not path.exists() and path.suffix == "" and bundled.exists():
        path = bundled
    if path.suffix == ".ini":
        placement = load_helix_placement(path)
        return Plan(placement, "helix-ini", num_layers, "", cluster_nodes, "helix-ini")
    return load_plan(path)


def _arrival_times(
    kind: str | None,
    lengths: Lengths,
    rate: float | None,
    cv: float,
    buckets: str,
    horizon_s: float,
    seed: int,
) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    kind = kind or ("trace" if lengths.times_s is not None else "poisson")
    if kind not in ARRIVALS:
        raise HelixInputError(f"unknown arrivals {kind!r}", field="--arrivals", fix=f"use one of {ARRIVALS}")
    if kind == "trace":
        if lengths.times_s is None:
            raise HelixInputError(
                "the workload has no timestamps",
                where=lengths.source,
                field="--arrivals",
                fix="use an Azure trace CSV with TIMESTAMP, or --arrivals poisson --rate R",
            )
        return lengths.times_s[lengths.times_s < horizon_s]
    if rate is None:
        raise HelixInputError(f"--arrivals {kind} needs a rate", field="--rate", fix="pass --rate REQ_PER_S")
    if kind == "poisson":
        return poisson_arrivals(rate, horizon_s, rng)
    if kind == "gamma":
        return gamma_arrivals(rate, cv, horizon_s, rng)
    return bucket_arrivals(load_bucket_counts(buckets), rate, horizon_s, rng)


MAX_INITIAL_REQUESTS = 1_000_000


def _check_options(o: dict) -> None:
    """Every flag's value, before anything is loaded or simulated."""
    check_choice("--mode", o["mode"], MODES)
    check_choice("--fidelity", o["fidelity"], tuple(KV_PARAMS))
    check_choice("--scheduler", o["scheduler"], tuple(sorted(SCHEDULERS)))
    if o["arrivals"] is not None:
        check_choice("--arrivals", o["arrivals"], ARRIVALS)
    check_number("--duration", o["duration"], low=0, low_open=True)
    check_number("--warmup", o["warmup"], low=0)
    check_number("--rate", o["rate"], low=0, low_open=True)
    check_number("--cv", o["cv"], low=0, low_open=True, high=100)
    check_number("--initial-requests", o["initial_requests"], low=1, high=MAX_INITIAL_REQUESTS)
    check_number("--feed-hwm", o["feed_hwm"], low=0, low_open=True, high=1)
    check_number(
        "--kv-hwm", o["kv_hwm"], low=0, low_open=True, high=1, fix="pass --kv-hwm in (0, 1], e.g. 0.9"
    )
    check_number("--kv-ratio", o["kv_ratio"], low=0, low_open=True, high=10, fix="pass --kv-ratio in (0, 10]")
    online = o["mode"] == "online"
    check_simulation_size(horizon_s=o["warmup"] + o["duration"], rate_per_s=o["rate"] if online else None)
    check_output_path("--output", o["output"], directory=True)


def simulate_command(
    cluster: str = ClusterOpt,
    model: str = ModelOpt,
    plan: Path = typer.Option(
        ..., "--plan", "-p", help="Plan JSON (`helix plan`), a Helix placement .ini, or a bundled one's name."
    ),
    scheduler: str = typer.Option(
        "maxflow", "--scheduler", "-s", help="maxflow | random | shortest-queue | swarm"
    ),
    workload: str = typer.Option(
        "azure_conversation",
        "--workload",
        "-w",
        help="Lengths: azure_conversation | azure_code | alpaca | sharegpt, or a CSV "
        "(input_tokens,output_tokens or Azure TIMESTAMP,ContextTokens,...).",
    ),
    mode: str = typer.Option("offline", "--mode", help="offline (closed loop) | online (open loop)."),
    duration: float = typer.Option(600.0, "--duration", help="Measured window (s)."),
    warmup: float = typer.Option(60.0, "--warmup", help="Warm-up before the window (s)."),
    arrivals: str | None = typer.Option(
        None, "--arrivals", help="Online: poisson | gamma | azure-buckets | trace."
    ),
    rate: float | None = typer.Option(None, "--rate", help="Online arrival rate (requests/s)."),
    cv: float = typer.Option(2.0, "--cv", help="Gamma arrivals: coefficient of variation of the gaps."),
    buckets: str = typer.Option("azure_conversation", "--buckets", help="Arrival buckets (name or CSV)."),
    initial_requests: int | None = typer.Option(
        None, "--initial-requests", help="Offline start population (20 maxflow, 240 others)."
    ),
    feed_hwm: float | None = typer.Option(None, "--feed-hwm", help="Offline KV feeding high-water mark."),
    kv_hwm: float | None = typer.Option(
        None, "--kv-hwm", help="Expected-KV admission high-water mark (0.85 helix, 0.9 improved)."
    ),
    kv_ratio: float | None = typer.Option(
        None, "--kv-ratio", help="Expected output-length ratio r (1.0 helix, 0.6 improved)."
    ),
    fidelity: str = typer.Option("helix", "--fidelity", help="helix (Helix-compatible) | improved."),
    profiles: Path | None = ProfilesOpt,
    capacity: str = CapacityOpt,
    helix_units: bool = HelixUnitsOpt,
    seed: int = typer.Option(0, "--seed"),
    events: Path | None = typer.Option(
        None,
        "--events",
        help="Membership trace: JSON/YAML list of {time_s, kind: fail, node} (e.g. a T4 failing at 600 s).",
    ),
    membership_trace: Path | None = typer.Option(
        None,
        "--membership",
        help="Elastic membership trace: JSON/YAML list of {time_s, kind: fail|join|drain, node}; every "
        "event re-plans warm-started (modelled planning + load times); writes membership.png.",
    ),
    move_weight: float = typer.Option(
        1e-3, "--move-weight", help="Re-plan: flow (fraction) given up per moved layer."
    ),
    load_gbps: float = typer.Option(8.0, "--load-gbps", help="Re-plan: read speed of new layers (Gbit/s)."),
    output: Path = typer.Option(Path("sim-out"), "--output", "-o", help="Output directory."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Simulate serving a plan: throughput, latency percentiles, utilisation, KV occupancy."""
    console = Console(stderr=True, quiet=quiet)
    _check_options(locals())
    cluster_spec, model_spec, capacity_model = load_inputs(
        cluster, model, profiles, capacity, helix_units, extrapolate=True
    )
    plan_record = _load_plan_any(plan, cluster_spec.node_names, model_spec.num_layers)
    check_plan_matches(plan_record, cluster_spec, model_spec, where=str(plan))
    lengths = load_lengths(workload)
    config = SimConfig.preset(
        fidelity,
        mode=mode,
        duration_s=duration,
        warmup_s=warmup,
        seed=seed,
        initial_requests=initial_requests
        if initial_requests is not None
        else (20 if scheduler == "maxflow" else 240),
    )
    if feed_hwm is not None:
        config = replace(config, feed_high_water=feed_hwm)
    times = None
    if mode == "online":
        times = _arrival_times(arrivals, lengths, rate, cv, buckets, warmup + duration, seed)
    default_hwm, default_ratio = KV_PARAMS.get(fidelity, KV_PARAMS["helix"])
    kv_params = KVParameters(
        kv_hwm if kv_hwm is not None else default_hwm, kv_ratio if kv_ratio is not None else default_ratio
    )
    horizon = warmup + duration
    membership = _membership_events(events, cluster_spec.node_names)
    elastic = None
    if membership_trace is not None:
        if events is not None:
            raise HelixInputError(
                "give either --events or --membership", field="--membership", fix="merge the two traces"
            )
        membership = _membership_events(membership_trace, cluster_spec.node_names, "--membership")
        elastic = elastic_settings(cluster_spec, move_weight, load_gbps)
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("{task.fields[t]:.0f} s"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        task = bar.add_task("sim", total=horizon, t=0.0)
        result = simulate(
            cluster_spec,
            model_spec,
            plan_record.placement,
            capacity_model,
            lengths,
            config,
            scheduler=scheduler,
            kv_params=kv_params,
            arrival_times_s=times,
            partial_overlap=plan_record.partial_overlap,
            progress=lambda t: bar.update(task, completed=t, t=t),
            membership_events=membership,
            elastic=elastic,
        )
        bar.update(task, completed=horizon, t=horizon)
    output.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in result.items() if not k.startswith("_")}
    record["inputs"] = {
        "cluster": cluster,
        "model": model,
        "plan": str(plan),
        "workload": workload,
        "capacity_model": capacity_model.description,
    }
    (output / "result.json").write_text(json.dumps(record, indent=1) + "\n")
    if plots:
        write_plots(result, output)
        if elastic is not None:
            write_membership_plot(result, output / "membership.png")
    s = result["summary"]
    console.print(
        f"decode {s['decode_tokens_per_s']:.1f} tok/s ({s['decode_efficiency'] or 0:.2f} of the "
        f"{s['decode_bound_tokens_per_s']:.1f} the max flow {s['max_flow_tokens_per_s']:.1f} allows), total "
        f"{s['total_tokens_per_s']:.1f} tok/s; "
        f"prompt latency mean {s['prompt_latency_s']['mean'] or 0:.3f} s, decode latency mean "
        f"{s['decode_latency_s']['mean'] or 0:.3f} s; wall {result['wall_s']:.1f} s → {output}",
        highlight=False,
    )


def _membership_events(path: Path | None, nodes: tuple[str, ...], flag: str = "--events") -> list:
    """Failure events from a JSON or YAML file (validated: time_s, kind, node)."""
    if path is None:
        return []
    import yaml

    from helix.scheduling.recovery import load_membership_events

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HelixInputError(f"cannot read the events file: {exc}", where=str(path), field=flag) from None
    return load_membership_events(raw, nodes, where=str(path))


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
