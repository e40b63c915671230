"""README figures come from the results JSON: each entry of `FIGURES` formats values read from a results
file into a README fragment, and the fragment must appear in README.md verbatim. A figure typed in by
hand, or left behind when a benchmark is re-run, fails here. Add a section's figures by adding rows."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


@cache
def _json(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def at(name: str, path: str) -> Callable[[], Any]:
    """The value at dotted `path` (list indices as numbers, ``key=value`` selects a list item) of `name`."""

    def get() -> Any:
        value = _json(name)
        for part in path.split("."):
            if isinstance(value, list) and "=" in part:
                key, wanted = part.split("=", 1)
                value = next(item for item in value if str(item.get(key)) == wanted)
            elif isinstance(value, list):
                value = value[int(part)]
            else:
                value = value[part]
        return value

    return get


def signed_pct(value: float) -> str:
    return f"{'−' if value < 0 else '+'}{abs(round(100 * value)):.0f} %"


def f1(v: float) -> str:
    return f"{v:.1f}"


def f2(v: float) -> str:
    return f"{v:.2f}"


def f0(v: float) -> str:
    return f"{v:.0f}"


def pct(v: float) -> str:
    return f"{100 * v:.1f} %"


RT = "runtime_cpu.json"
PL = "planner.json"
SIM = "simulation.json"
CAP = "capacity_model.json"
ENG = "engine_h100.json"
GPU2 = "runtime_2gpu.json"
H1 = "runtime_1gpu.json"
STAGE = "stage_step_h200.json"
HOP = "hop_profile_h200.json"
H200 = "engine_h200.json"


def _cpu_row(name: str, label: str, bold: bool, file: str = "runtime_cpu.json", prefix: str = "") -> tuple:
    s = f"{prefix}summary.{name}."
    cell = "**{}**" if bold else "{}"
    return (
        f"| {label} | {cell} | {{}} ({{}}) | {{}} s | {{}} s |",
        [
            (at(file, s + "decode_tokens_per_s"), f1),
            (at(file, s + "sim_decode_tokens_per_s"), f1),
            (at(file, s + "sim_error"), signed_pct),
            (at(file, s + "ttft_s.p50"), f1),
            (at(file, s + "tpot_s.p50"), f1),
        ],
    )


def _planner_row(instance: str, label: str, helix: str, bold_value: str) -> tuple:
    s = f"instances.instance={instance}."
    return (
        f"| {label} | {helix} | **{{}}{bold_value}** | {{}} | {{}} | {{}} s / {{}} s |",
        [
            (at(PL, s + "value_tokens_per_s"), f1),
            (at(PL, s + "upper_bound_tokens_per_s"), f1),
            (at(PL, s + "gap"), pct),
            (at(PL, s + "time_to_best_s"), f2),
            (at(PL, s + "elapsed_s"), f1),
        ],
    )


PS = "plans_served.json"


def _served_row(cluster: str, preset: str, mode: str) -> tuple:
    """A row of README's served-plans table: default and Helix's plan (mean ± sd decode tokens/s over the
    held-out seeds), the best other method and default ÷ it, default ÷ Helix."""
    s = f"clusters.{cluster}.presets.{preset}.{mode}."
    m = s + "methods."
    return (
        f"| {cluster}, {preset}, {mode} | {{}} ± {{}} | {{}} ± {{}} | {{}} ({{}}×) | **{{}}×** |",
        [
            (at(PS, m + "default.decode_tokens_per_s.mean"), f1),
            (at(PS, m + "default.decode_tokens_per_s.sd"), f1),
            (at(PS, m + "helix.decode_tokens_per_s.mean"), f1),
            (at(PS, m + "helix.decode_tokens_per_s.sd"), f1),
            (at(PS, s + "best_other_method"), str),
            (at(PS, s + "default_over_best_other"), f2),
            (at(PS, s + "default_over_helix"), f2),
        ],
    )


def _served_vs_baselines_row(cluster: str, preset: str, mode: str) -> tuple:
    """A row of README's table for a cluster without a Helix plan: default, the best other method, ratio."""
    s = f"clusters.{cluster}.presets.{preset}.{mode}."

    def best(field: str) -> Callable[[], float]:
        def get() -> float:
            block = _json(PS)["clusters"][cluster]["presets"][preset][mode]
            return block["methods"][block["best_other_method"]]["decode_tokens_per_s"][field]

        return get

    return (
        f"| {cluster}, {preset}, {mode} | {{}} ± {{}} | {{}} {{}} ± {{}} | **{{}}×** |",
        [
            (at(PS, s + "methods.default.decode_tokens_per_s.mean"), f1),
            (at(PS, s + "methods.default.decode_tokens_per_s.sd"), f1),
            (at(PS, s + "best_other_method"), str),
            (best("mean"), f1),
            (best("sd"), f1),
            (at(PS, s + "default_over_best_other"), f2),
        ],
    )


def _paper_row(cluster: str) -> tuple:
    """A row of README's paper-comparison table (bench_simulator.py): Helix's placement and ours in both
    presets (mean ± sd over the held-out seeds), then separate pipelines."""
    s = f"paper_comparison.{cluster}."

    def held(key: str) -> list:
        return [
            (at(SIM, s + key + ".decode_tokens_per_s"), f1),
            (at(SIM, s + key + ".decode_tokens_per_s_sd"), f1),
        ]

    return (
        f"| {cluster} | {{}} ± {{}} / {{}} ± {{}} (paper {{}}) | {{}} ± {{}} / {{}} ± {{}} "
        "| {} / {} / {} |",
        [
            *held("helix"),
            *held("helix_improved"),
            (at(SIM, s + "paper.helix"), f1),
            *held("ours_helix_preset"),
            *held("ours"),
            (at(SIM, s + "paper.separate"), f1),
            (at(SIM, s + "separate_random_helix_setup.decode_tokens_per_s"), f1),
            (at(SIM, s + "separate_random.decode_tokens_per_s"), f1),
        ],
    )


def _hop_parts() -> float:
    h = at(GPU2, "hop_overhead_per_token_ms")()
    return h["d2h_copy"] + h["serialisation_excl_d2h"] + h["zmq_loopback_transfer"] + h["h2d_copy"]


def _two_over_one(rate: float) -> Callable[[], float]:
    def get() -> float:
        loads = {
            k: {r["offered_rate_per_s"]: r for r in v["load"]} for k, v in _json(GPU2)["configs"].items()
        }
        one, two = loads["one_worker"][rate], loads["two_workers"][rate]
        return two["decode_tokens_per_s"] / one["decode_tokens_per_s"]

    return get


def _pct0(v: float) -> str:
    return f"{100 * v:.0f} %"


#: (README fragment with {} for each value, [(value getter, formatter), ...])
FIGURES: list[tuple[str, list[tuple[Callable[[], Any], Callable[[Any], str]]]]] = [
    # Serving benchmark (bench_runtime_cpu.py)
    _cpu_row("maxflow", "max-flow (IWRR)", True),
    _cpu_row("random", "random", False),
    _cpu_row("swarm", "swarm", False),
    _cpu_row("maxflow", "max-flow (IWRR)", True, "runtime_cpu_unpadded.json", "unpadded."),
    _cpu_row("random", "random", False, "runtime_cpu_unpadded.json", "unpadded."),
    _cpu_row("swarm", "swarm", False, "runtime_cpu_unpadded.json", "unpadded."),
    # Served plans (bench_plans_served.py)
    *(
        _served_row(c, p, m)
        for c in ("single24", "3cluster24", "cluster42")
        for p in ("helix", "improved")
        for m in ("offline", "online")
    ),
    *(
        _served_vs_baselines_row("synthetic200", p, m)
        for p in ("helix", "improved")
        for m in ("offline", "online")
    ),
    (
        "Its planning took {} s and {} s.",
        [
            (at(PS, f"clusters.synthetic200.planning.{p}.default.planner_s"), f1)
            for p in ("helix", "improved")
        ],
    ),
    (
        "The default's planning took {} s and {} s on single24, {} s and {} s on 3cluster24, "
        "{} s and {} s on cluster42",
        [
            (at(PS, f"clusters.{c}.planning.{p}.default.planner_s"), f1)
            for c in ("single24", "3cluster24", "cluster42")
            for p in ("helix", "improved")
        ],
    ),
    ("Max-flow delivers {}× random's decode throughput", [(at(RT, "maxflow_over_random"), f2)]),
    (
        "One ZeroMQ hop costs {} ms at p50 against {} ms for a Ray actor call",
        [
            (at(RT, "hop_overhead.zmq_one_way_ms_p50"), f2),
            (at(RT, "hop_overhead.ray_actor_call_round_trip_ms_p50"), f2),
        ],
    ),
    # Elastic membership (bench_elastic.py)
    (
        "cluster42 warm re-plan **{} s** (target ≤ 5 s); **{}** layers moved against {} from",
        [
            (at("elastic.json", "cluster42.warm_replan_s"), f2),
            (at("elastic.json", "cluster42.warm_moved_layers"), str),
            (at("elastic.json", "cluster42.scratch_moved_layers"), str),
        ],
    ),
    (
        "The loss re-plan served after\n  **{} s** (target ≤ 30 s;",
        [(at("elastic.json", "loss_to_new_plan_s"), f1)],
    ),
    (
        "**{} of {}** requests completed, **{} failed**; on the plan after the loss the runtime\n"
        "  served **{}**",
        [
            (at("elastic.json", "runtime.counts.completed"), str),
            (at("elastic.json", "runtime.counts.sent"), str),
            (at("elastic.json", "failed"), str),
            (at("elastic.json", "after_replan_over_sim"), f2),
        ],
    ),
    # Failover (bench_failover.py)
    (
        "{} accepted, {} completed, **{} failed**; {} decode tok/s",
        [
            (at("failover.json", "capacity_probe.accepted"), str),
            (at("failover.json", "capacity_probe.completed"), str),
            (at("failover.json", "capacity_probe.failed"), str),
            (at("failover.json", "capacity_probe.decode_tokens_per_s"), f1),
        ],
    ),
    (
        "{} accepted, {} completed, **{} failed**, {} re-routed",
        [
            (at("failover.json", "failover.accepted"), str),
            (at("failover.json", "failover.completed"), str),
            (at("failover.json", "failover.failed"), str),
            (at("failover.json", "failover.rerouted"), str),
        ],
    ),
    (
        "{} s after the kill at p50 (max {} s; target ≤ 2 s p50)",
        [
            (at("failover.json", "failover.kill_to_first_resumed_token_s.p50"), f2),
            (at("failover.json", "failover.kill_to_first_resumed_token_s.max"), f2),
        ],
    ),
    (
        "for the surviving topology: {} of the prediction (target ≥ 0.9)",
        [(at("failover.json", "failover.throughput.after_vs_prediction"), f2)],
    ),
    # Multi-GPU deployment (bench_runtime_2gpu.py)
    (
        "the hop between workers adds {} ms per token ({} ms of it",
        [(at(GPU2, "hop_overhead_per_token_ms.measured_tpot_difference"), f2), (_hop_parts, f2)],
    ),
    (
        "{} / {} of one worker at 64 / 128 req/s",
        [(_two_over_one(64.0), _pct0), (_two_over_one(128.0), _pct0)],
    ),
    # Capacity models (bench_capacity_model.py)
    (
        "node throughput within {}–{} % of the measured model",
        [
            (lambda: at(CAP, "summary_fitted.throughput_mape_range")()[0], f0),
            (lambda: at(CAP, "summary_fitted.throughput_mape_range")()[1], f0),
        ],
    ),
    (
        "per-layer batch times within {}–{} % for prefill and {}–{} % for decode",
        [
            (lambda: at(CAP, "summary_fitted.prefill_time_mape_range")()[0], f0),
            (lambda: at(CAP, "summary_fitted.prefill_time_mape_range")()[1], f0),
            (lambda: at(CAP, "summary_fitted.decode_time_mape_range")()[0], f0),
            (lambda: at(CAP, "summary_fitted.decode_time_mape_range")()[1], f0),
        ],
    ),
    # Placement planner (bench_planner.py)
    _planner_row("single24", "single24, LLaMA-2-70B", "1289.6 (476 s)", ", optimal"),
    _planner_row("3cluster24", "3cluster24 (full file), LLaMA-2-70B", "1212.2 (2655 s)", ""),
    _planner_row("cluster42", "cluster42, LLaMA-2-70B", "4137.5 (Swarm 4892.2)", ""),
    _planner_row("synthetic200", "synthetic, 200 nodes, 5 GPU types, 4 regions", "—", ""),
    (
        "(the cluster itself, with {} links, is built in {} s)",
        [
            (at(PL, "instances.instance=synthetic1000.links"), lambda v: f"{v:,}"),
            (at(PL, "instances.instance=synthetic1000.cluster_build_s"), f1),
        ],
    ),
    _planner_row(
        "synthetic1000", "synthetic, 1,000 nodes, 8 GPU types, 5 regions (roofline capacity model)", "—", ""
    ),
    # Simulator (bench_simulator.py)
    (
        "the `helix` preset gives {} decode tokens/s against Helix's {}",
        [
            (at(SIM, "reference_helix_compatible.decode_tokens_per_s"), f1),
            (at(SIM, "helix_reference.decode_tokens_per_s"), f1),
        ],
    ),
    (
        "mean prompt\nlatency {} s against {} s",
        [
            (at(SIM, "reference_helix_compatible.prompt_latency_s.mean"), f2),
            (at(SIM, "helix_reference.prompt_latency_mean_s"), f2),
        ],
    ),
    (
        "in about {} s of\nwall time (Helix: {} s) and {} MB of memory",
        [
            (at(SIM, "reference_helix_compatible.wall_s"), f0),
            (at(SIM, "helix_reference.wall_s"), f0),
            (lambda: at(SIM, "peak_rss_bytes")() / 1e6, f1),
        ],
    ),
    (
        "the `improved` preset reaches {} of the max flow",
        [(at(SIM, "reference_improved.decode_efficiency"), f2)],
    ),
    _paper_row("single24"),
    _paper_row("3cluster24"),
    _paper_row("cluster42"),
    # Inference engine (bench_engine.py)
    (
        "| fraction of the HBM roofline at batch 64 | {} |",
        [(at(ENG, "summary.decode_fraction_of_roofline_by_batch.64"), f2)],
    ),
    (
        "| prefill, 2,048-token prompts: fraction of peak FLOP/s | {} (",
        [(at(ENG, "summary.prefill_fraction_of_peak"), f2)],
    ),
    (
        "| 4 stages back to back / 1 stage, decode at batch 64 | {} |",
        [(at(ENG, "summary.four_stage_over_single_by_batch.64"), f2)],
    ),
    (
        "| vs Hugging Face `generate` at batch 32 ({} tokens/s) | {}× |",
        [
            (at(ENG, "hf_generate.tokens_per_s"), f0),
            (at(ENG, "summary.speedup_over_hf_generate_at_batch.32"), f1),
        ],
    ),
]


def ms1(v: float) -> str:
    return f1(1000 * v)


def fc(v: float) -> str:
    return f"{v:,.0f}"


def f3(v: float) -> str:
    return f"{v:.3f}"


FIGURES += [
    # The engine on one H200 (bench_engine.py)
    (
        "| decode, fraction of HBM roofline, batch 1 / 64 / 128 | 0.658 / 0.645 / 0.588 | {} / {} / {} |",
        [(at(H200, f"summary.decode_fraction_of_roofline_by_batch.{b}"), f3) for b in (1, 64, 128)],
    ),
    (
        "| 4 stages / 1 stage at batch 64 | 0.916 | {} |",
        [(at(H200, "summary.four_stage_over_single_by_batch.64"), f3)],
    ),
    # Serving on one H200 (bench_runtime_1gpu.py)
    (
        "the engine serving the same workload ({} tok/s; {} pure decode) | 5,404 tok/s (0.40 of pure decode) "
        "| {} tok/s ({}; {} of pure decode) |",
        [
            (at(H1, "summary.engine_best_tokens_per_s"), fc),
            (at(H1, "summary.engine_decode_only_best_tokens_per_s"), fc),
            (at(H1, "summary.one_worker.saturation_decode_tokens_per_s"), fc),
            (at(H1, "summary.one_worker.saturation_over_engine_best"), f3),
            (at(H1, "summary.one_worker.saturation_over_engine_decode_best"), f3),
        ],
    ),
    (
        "| {} tok/s ({} × one worker; {} with the GPU turns off, {} with the coordinator starting each "
        "token), {} ms |",
        [
            (at(H1, "summary.two_workers.saturation_decode_tokens_per_s"), fc),
            (at(H1, "summary.two_over_one_worker"), f3),
            (at(H1, "summary.two_workers_without_turns.saturation_decode_tokens_per_s"), fc),
            (at(H1, "summary.two_workers_coordinator_decode.saturation_decode_tokens_per_s"), fc),
            (at(H1, "summary.hop_ms_per_token"), f2),
        ],
    ),
    (
        "at 64 requests/s this holds a two-worker request's TPOT p50 at {} ms against {} ms with the "
        "coordinator starting each token.",
        [
            (at(H1, "configs.two_workers.load.0.tpot_s.p50"), ms1),
            (at(H1, "configs.two_workers_coordinator_decode.load.0.tpot_s.p50"), ms1),
        ],
    ),
    (
        "({} ms for the 12-layer stage and {} ms for the 20-layer one at batch 1, most of it in "
        "`cudaGraphLaunch` by the torch profile; `stage_step_h200.json`) and each hop a message through a "
        "socket ({} ms for one token's frames, encode to decode over loopback; `hop_profile_h200.json`)",
        [
            (at(STAGE, "stages.0-12.steps.0.launch_ms"), f2),
            (at(STAGE, "stages.12-32.steps.0.launch_ms"), f2),
            (at(HOP, "wire.0.ms_median"), f2),
        ],
    ),
    (
        "TTFT distinct → shared prompts | — | {} → {} ms ({}×) |",
        [
            (at(H1, "configs.one_worker.prefix_cache.ttft_ms_unique_p50"), f1),
            (at(H1, "configs.one_worker.prefix_cache.ttft_ms_shared_p50_after_first"), f1),
            (at(H1, "configs.one_worker.prefix_cache.ttft_speedup"), f2),
        ],
    ),
]


def _readme() -> str:
    return " ".join((ROOT / "README.md").read_text().split())  # line breaks do not matter


@pytest.mark.parametrize(("fragment", "values"), FIGURES, ids=[f[0][:48] for f in FIGURES])
def test_readme_figure_matches_its_json(fragment, values):
    text = fragment.format(*(fmt(get()) for get, fmt in values))
    assert " ".join(text.split()) in _readme(), f"README should say: {text!r}"
