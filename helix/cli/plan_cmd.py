"""`helix plan` and `helix evaluate`."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

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
from helix.flow.graph import FlowOptions
from helix.flow.maxflow import compute_upper_bound, evaluate_placement
from helix.placement.milp.objective import OBJECTIVES
from helix.placement.plan_io import check_plan_matches, load_plan, plan_from_result, plan_to_dict, save_plan
from helix.placement.planner import available_methods, plan
from helix.placement.plot import plot_placement
from helix.placement.result import PlannerOptions

MAX_TIME_LIMIT_S = 7 * 24 * 3600.0
MAX_THREADS = 1024


class PlanProgress:
    """The planner's incumbent / bound / gap on one live line of stderr, redrawn several times a second
    (the elapsed time keeps moving while the solver works between two reports)."""

    def __init__(self, console: Console, time_limit_s: float) -> None:
        from rich.live import Live

        self._info: dict[str, Any] = {}
        self._started = time.perf_counter()
        self._limit_s = time_limit_s
        self._live = Live(console=console, refresh_per_second=4, get_renderable=self._render)

    def update(self, info: dict[str, Any]) -> None:
        self._info = dict(info)

    def _render(self) -> Text:
        info = self._info
        gap, bound = info.get("gap"), info.get("bound")
        gap_text = f"{100 * gap:.2f}%" if gap is not None else "-"
        bound_text = f"{bound:10.3f}" if bound is not None else "         -"
        elapsed = time.perf_counter() - self._started
        return Text(
            f"[{elapsed:6.1f}s / {self._limit_s:g}s] incumbent {info.get('incumbent', 0.0):10.3f}  "
            f"bound {bound_text}  gap {gap_text}  {info.get('phase', '')}"
        )

    def __enter__(self) -> PlanProgress:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()


def plan_command(
    cluster: str = ClusterOpt,
    model: str = ModelOpt,
    method: str = typer.Option("milp", "--method", help="milp | petals | swarm | homogeneous | separate"),
    output: Path = typer.Option(Path("plan.json"), "--output", "-o", help="Plan JSON to write."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write a PNG of the placement here."),
    profiles: Path | None = ProfilesOpt,
    capacity: str = CapacityOpt,
    partial_overlap: bool = typer.Option(False, "--partial-overlap", help="Allow s_j <= e_i < e_j links."),
    time_limit: float = typer.Option(60.0, "--time-limit", help="Seconds for search-based methods."),
    threads: int = typer.Option(
        2, "--threads", help="Solver threads, and processes for the served objective's simulated checks."
    ),
    seed: int = typer.Option(0, "--seed"),
    mip_gap: float = typer.Option(1e-4, "--mip-gap", help="Stop at this relative gap."),
    objective: str = typer.Option(
        "served",
        "--objective",
        help="milp: served (expected decode tokens/s under KV admission, checked in the simulator), "
        "max-flow (Helix's formulation, with its proofs), or throughput.",
    ),
    workload: str = typer.Option(
        "azure_conversation", "--workload", help="served: request lengths (dataset name or CSV)."
    ),
    fidelity: str = typer.Option("improved", "--fidelity", help="served: simulator preset (helix|improved)."),
    check: int = typer.Option(
        3, "--check", help="served: simulate this many best candidates before choosing (0: estimate only)."
    ),
    check_duration: float = typer.Option(180.0, "--check-duration", help="Seconds simulated per check."),
    confirm: int = typer.Option(
        0, "--confirm", help="served: re-simulate this many best checked candidates on seeds 0-4."
    ),
    solver_log: Path | None = typer.Option(
        None, "--solver-log", help="HiGHS console log (default: <output>.solver.log)."
    ),
    helix_units: bool = HelixUnitsOpt,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Place a model's layers on a cluster's nodes and write the plan (and optionally a PNG)."""
    console = Console(stderr=True, quiet=quiet)
    if method not in available_methods():
        raise HelixInputError(
            f"unknown method {method!r}", field="--method", fix=f"use one of {', '.join(available_methods())}"
        )
    check_choice("--objective", objective, OBJECTIVES)
    check_number("--time-limit", time_limit, low=0, low_open=True, high=MAX_TIME_LIMIT_S)
    check_number("--threads", threads, low=1, high=MAX_THREADS)
    check_number(
        "--mip-gap", mip_gap, low=0, high=1, high_open=True, fix="pass --mip-gap in [0, 1), e.g. 1e-4"
    )
    check_output_path("--output", output)
    check_output_path("--plot", plot)
    cluster_spec, model_spec, capacity_model = load_inputs(cluster, model, profiles, capacity, helix_units)
    if confirm < 0:
        raise HelixInputError("must be >= 0", field="--confirm", fix="pass --confirm 0 (none) or e.g. 2")
    serving, checkers = _served_inputs(
        cluster_spec,
        model_spec,
        capacity_model,
        workload,
        fidelity,
        check,
        check_duration,
        partial_overlap,
        threads,
    )
    options = PlannerOptions(
        serving=serving,
        checker=checkers[0][0] if checkers else None,
        checker_description=checkers[0][1] if checkers else "",
        check_candidates=check,
        confirm_checker=checkers[1][0] if checkers and confirm else None,
        confirm_description=checkers[1][1] if checkers and confirm else "",
        confirm_candidates=confirm,
        solver_log=str(solver_log or output.with_suffix(".solver.log")),
        method=method,
        time_limit_s=time_limit,
        threads=threads,
        seed=seed,
        mip_gap=mip_gap,
        objective=objective,
        partial_overlap=partial_overlap,
    )
    display = PlanProgress(console, time_limit) if not quiet else contextlib.nullcontext()
    if not quiet:
        options = replace(options, progress=display.update)
    with display:  # the planner sends HiGHS's console output to --solver-log
        result = plan(cluster_spec, model_spec, options, capacity_model)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    record = plan_from_result(
        result,
        cluster_spec,
        model_spec,
        capacity_description=capacity_model.description,
        partial_overlap=partial_overlap,
        sources={
            "cluster": str(cluster),
            "model": model,
            "profiles": str(profiles) if profiles else None,
            "capacity": capacity,
            "helix_units": helix_units,
        },
    )
    save_plan(record, output)
    if plot is not None:
        plot_placement(
            cluster_spec,
            model_spec,
            result.placement,
            result.flow,
            plot,
            title=f"{cluster_spec.name} / {model_spec.name} / {method}: "
            f"{result.flow_tokens_per_s:.1f} tokens/s",
        )
    summary = {
        "method": method,
        "objective": result.details.get("objective", objective) if method == "milp" else None,
        "max_flow_tokens_per_s": round(result.flow_tokens_per_s, 3),
        "upper_bound_tokens_per_s": result.upper_bound_tokens_per_s,
        "bound_source": result.bound_source,
        "gap": result.gap,
        "expected": _expected(result, serving),
        "stopped_by": result.details.get("stopped_by"),
        "solver_log": result.details.get("solver_log"),
        "nodes_used": len(result.placement),
        "nodes": len(cluster_spec.nodes),
        "plan": str(output),
        "plot": str(plot) if plot else None,
    }
    typer.echo(json.dumps(summary))


def _served_inputs(cluster, model, capacity, workload, fidelity, check, duration_s, partial_overlap, workers):
    """(ServingSetup, [(checker, description) on seed 0, (checker, description) on seeds 0-4]) for the
    served objective; no checkers when `check` is 0. The two share their simulations."""
    from helix.scheduling.kv import KVParameters
    from helix.sim.config import KV_PARAMS, SimConfig
    from helix.sim.select import serving_setup, simulation_checker
    from helix.sim.workload import load_lengths

    if fidelity not in KV_PARAMS:
        raise HelixInputError(
            f"unknown fidelity {fidelity!r}", field="--fidelity", fix="use `helix` or `improved`"
        )
    if check < 0 or not duration_s > 0:
        raise HelixInputError("must be >= 0 (and a positive duration)", field="--check")
    lengths = load_lengths(workload)
    setup = serving_setup(lengths, fidelity)
    if check == 0:
        return setup, []
    config = SimConfig.preset(fidelity, warmup_s=60.0, duration_s=duration_s)
    cache: dict = {}
    out = []
    for seeds in ((0,), (0, 1, 2, 3, 4)):
        checker = simulation_checker(
            cluster,
            model,
            capacity,
            lengths,
            config,
            seeds=seeds,
            kv_params=KVParameters(*KV_PARAMS[fidelity]),
            partial_overlap=partial_overlap,
            cache=cache,
            setup=setup,
            workers=workers,
        )
        seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {list(seeds)}"
        windows = f"60 s (longer while KV fills) + {duration_s:g} s"
        out.append((checker, f"offline simulation, {fidelity} preset, {windows}, {seed_text}"))
    return setup, out


def _expected(result, serving) -> dict[str, Any] | None:
    """What the plan is expected to serve, and the bound on decode tokens/s that the max-flow bound implies
    (every request's prompt and decode tokens cross every layer: decode ≤ F* · D / (I + D))."""
    served = result.details.get("served")
    if not served:
        return None
    bound = result.upper_bound_tokens_per_s
    share = serving.decode_iterations / (serving.prompt_tokens + serving.decode_iterations)
    return {
        "decode_tokens_per_s_estimate": served["decode_tokens_per_s"],
        "decode_tokens_per_s_simulated": served.get("checked_decode_tokens_per_s"),
        "checked_by": result.details.get("checked_by"),
        "decode_tokens_per_s_confirmed": served.get("confirmed_decode_tokens_per_s"),
        "confirmed_by": result.details.get("confirmed_by"),
        "ttft_s_estimate": served["ttft_s"],
        "tpot_s_estimate": served["tpot_s"],
        "binding": served["binding"],
        "decode_upper_bound_tokens_per_s": None if bound is None else round(bound * share, 3),
    }


def evaluate_command(
    plan_path: Path = typer.Argument(..., help="Plan JSON written by `helix plan`."),
    cluster: str | None = typer.Option(None, "--cluster", "-c", help="Defaults to the plan's source."),
    model: str | None = typer.Option(None, "--model", "-m", help="Defaults to the plan's model."),
    profiles: Path | None = ProfilesOpt,
    capacity: str | None = typer.Option(None, "--capacity", help="Defaults to the plan's."),
    helix_units: bool | None = typer.Option(None, "--helix-units/--si-units"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Evaluate a plan: max flow, bottleneck, per-node layers and flow, and the compute upper bound."""
    overridden = any(v is not None for v in (cluster, model, profiles, capacity, helix_units))
    record = load_plan(plan_path)
    sources = record.extra.get("sources", {})
    if not isinstance(sources, dict) or not all(
        isinstance(v, (str, bool, type(None))) for v in sources.values()
    ):
        raise HelixInputError(
            "must map cluster, model, profiles and capacity to strings",
            where=str(plan_path),
            field="sources",
            fix="re-create the plan with `helix plan`, or pass --cluster and --model",
        )
    cluster = cluster or sources.get("cluster")
    if not cluster:
        raise HelixInputError(
            "the plan does not say which cluster it is for",
            where=str(plan_path),
            field="sources.cluster",
            fix="pass --cluster",
        )
    profiles = profiles or (Path(sources["profiles"]) if sources.get("profiles") else None)
    cluster_spec, model_spec, capacity_model = load_inputs(
        cluster,
        model or sources.get("model") or record.model_name,
        profiles,
        capacity or sources.get("capacity", "auto"),
        sources.get("helix_units", True) if helix_units is None else helix_units,
    )
    check_plan_matches(record, cluster_spec, model_spec, where=str(plan_path))
    flow = evaluate_placement(
        cluster_spec, model_spec, record.placement, capacity_model, FlowOptions(record.partial_overlap)
    )
    if flow.value_tokens_per_s <= 0:
        _no_flow(record, cluster_spec, model_spec, capacity_model, str(plan_path))
    bound = compute_upper_bound(cluster_spec, model_spec, capacity_model)
    # The planner's proven bound holds for the plan's own inputs; with any of them overridden, only ours.
    upper, source = round(bound, 6), "compute bound (every node at its best layer count)"
    planned = record.upper_bound_tokens_per_s
    if not overridden and planned is not None and planned < upper:
        upper, source = round(planned, 6), str(record.extra.get("bound_source") or "the planner's bound")
    report = {
        "plan": str(plan_path),
        "max_flow_tokens_per_s": round(flow.value_tokens_per_s, 6),
        "upper_bound_tokens_per_s": upper,
        "bound_source": source,
        "gap": round(1 - flow.value_tokens_per_s / upper, 6) if upper > 0 else None,
        "compute_upper_bound_tokens_per_s": round(bound, 6),
        "bottleneck": flow.describe_bottleneck(),
        "nodes": [
            {
                "name": n,
                "gpu": cluster_spec.node(n).gpu.name,
                "layers": [r.start, r.end],
                "inflow_tokens_per_s": round(flow.node_inflow.get(n, 0.0), 3),
            }
            for n, r in record.placement.items()
        ],
        "unused_nodes": [n for n in cluster_spec.node_names if n not in record.placement],
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_report(report)


def _no_flow(record, cluster_spec, model_spec, capacity_model, where: str) -> None:
    """A plan that carries nothing is an error: say why, and what partial-overlap links would carry."""
    fix = "plan again with `helix plan` (every layer range must chain: one node's end is the next's start)"
    if not record.partial_overlap:
        partial = evaluate_placement(
            cluster_spec, model_spec, record.placement, capacity_model, FlowOptions(True)
        ).value_tokens_per_s
        if partial > 0:
            fix = (
                f"the ranges overlap without chaining; with partial-overlap links (s_j <= e_i < e_j) they "
                f"carry "
                f"{partial:.1f} tokens/s: plan with `helix plan --partial-overlap`"
            )
    raise HelixInputError(
        "the plan carries no flow: no chain of nodes takes a token from layer 0 to the last layer",
        where=where,
        field="placement",
        fix=fix,
    )


def _print_report(report: dict[str, Any]) -> None:
    console = Console()
    table = Table(
        title=f"{report['plan']}: max flow {report['max_flow_tokens_per_s']:.3f} tokens/s "
        f"(upper bound {report['upper_bound_tokens_per_s']:.3f}, gap {100 * (report['gap'] or 0):.2f}%)"
    )
    for column in ("node", "gpu", "layers", "flow tok/s"):
        table.add_column(column)
    for node in report["nodes"]:
        start, end = node["layers"]
        table.add_row(node["name"], node["gpu"], f"[{start}, {end})", f"{node['inflow_tokens_per_s']:.1f}")
    console.print(table)
    console.print(f"bound: {report['bound_source']}", highlight=False)
    console.print(f"bottleneck: {', '.join(report['bottleneck']) or 'none (no flow)'}")
    if report["unused_nodes"]:
        console.print(f"unused nodes: {', '.join(report['unused_nodes'])}")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
    app.command("evaluate")(evaluate_command)


__all__ = ["plan_to_dict", "register"]
