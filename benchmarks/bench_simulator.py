"""Simulator benchmark: fidelity against Helix's simulator, speed, efficiency, and the paper comparison.

Writes benchmarks/results/simulation.json. Needs the Helix reference data (helix.reference.reference_dir()).
Run: python benchmarks/bench_simulator.py [--quick] [--milp-time-limit 60]

In the paper comparison, "ours" (plan and feed setting) is chosen on tuning seeds 0-4; it and Helix's
placement are reported as mean ± sd over held-out seeds 100-104.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

from helix.perf.helix_profile import profile_capacity_model
from helix.placement.baselines import separate_pipelines_placement
from helix.placement.planner import plan
from helix.placement.result import PlannerOptions
from helix.reference import reference_dir
from helix.scheduling.kv import KVParameters
from helix.sim.clamped import ClampedCapacityModel
from helix.sim.config import KV_PARAMS, SimConfig
from helix.sim.run import simulate
from helix.sim.select import plan_candidates, rank_by_simulation
from helix.sim.workload import load_lengths
from helix.specs.cluster import COORDINATOR, ClusterSpec
from helix.specs.helix_ini import load_helix_placement
from helix.specs.loading import load_cluster
from helix.specs.model import builtin_model
from helix.specs.placement import LayerRange, Placement

HELIX_REFERENCE = {
    "decode_tokens_per_s": 248.3,
    "prompt_latency_mean_s": 3.094,
    "decode_latency_mean_s": 1.457,
    "wall_s": 419.0,
    "efficiency_helix_formula": 1176.7 / 1289.6,
}
PAPER = {
    "single24": {"helix": 252.1, "swarm": 124.7, "separate": 124.3},
    "3cluster24": {"helix": 98.0, "swarm": 51.9, "separate": 61.9},
    "cluster42": {"helix": 645.6, "swarm": 473.2, "separate": 219.3, "separate_plus": 285.1},
}
MODEL = builtin_model("llama-2-70b")


def _capacity(cluster, composition=None):
    return profile_capacity_model(
        reference_dir() / "profiles", MODEL, composition or cluster.composition(), extrapolate=True
    )


def _inputs(name: str):
    cluster = load_cluster(reference_dir() / "clusters" / f"{name}.ini")
    return cluster, _capacity(cluster)


def _run(cluster, capacity, placement, fidelity: str, scheduler: str, initial: int, kv=None, **changes):
    kv = KVParameters(*(kv or KV_PARAMS[fidelity]))
    config = SimConfig.preset(fidelity, initial_requests=initial, **changes)
    result = simulate(
        cluster,
        MODEL,
        placement,
        capacity,
        load_lengths("azure_conversation"),
        config,
        scheduler=scheduler,
        kv_params=kv,
        partial_overlap=False,
    )
    return _record(result["summary"], result["wall_s"], fidelity, scheduler, initial, kv, changes)


def _record(s: dict, wall_s: float, fidelity: str, scheduler: str, initial: int, kv, changes) -> dict:
    return {
        "decode_tokens_per_s": round(s["decode_tokens_per_s"], 2),
        "total_tokens_per_s": round(s["total_tokens_per_s"], 2),
        "max_flow_tokens_per_s": round(s["max_flow_tokens_per_s"], 2),
        "decode_efficiency": round(s["decode_efficiency"], 4),
        "prompt_latency_s": s["prompt_latency_s"],
        "decode_latency_s": s["decode_latency_s"],
        "in_flight_mean": round(s["in_flight_mean"], 1),
        "kv_occupancy_max": round(max(n["kv_occupancy_max"] for n in s["nodes"].values()), 3),
        "utilization_mean": round(sum(n["utilization"] for n in s["nodes"].values()) / len(s["nodes"]), 3),
        "kv_bottleneck_mean": round(s["kv_bottleneck_mean"], 3),
        "counters": s["counters"],
        "wall_s": round(wall_s, 2),
        "config": {
            "fidelity": fidelity,
            "scheduler": scheduler,
            "initial_requests": initial,
            "kv_params": [kv.expected_kv_hwm, kv.expected_output_length_ratio],
            **changes,
        },
    }


def sub_cluster(cluster: ClusterSpec, names: set[str]) -> ClusterSpec:
    keep = names | {COORDINATOR}
    return ClusterSpec(
        f"{cluster.name}-sub",
        tuple(n for n in cluster.nodes if n.name in names),
        tuple(link for link in cluster.links if link.src in keep and link.dst in keep),
        cluster.coordinator_region,
        cluster.coordinator_nic_bytes_per_s,
    )


def _sub_runs(cluster, capacity_for, groups: dict[str, Placement], fidelity: str, population) -> dict:
    """Simulate each group as its own sub-cluster with random scheduling; decode throughputs summed."""
    out, total = {}, 0.0
    for label, placement in groups.items():
        sub = sub_cluster(cluster, {n for n, _ in placement.items()})
        res = _run(sub, capacity_for(sub), placement, fidelity, "random", population(label))
        out[label] = res
        total += res["decode_tokens_per_s"]
    return {"decode_tokens_per_s": round(total, 2), "sub_clusters": out}


def separate_pipelines(cluster, capacity, fidelity: str, per_group: int = 30) -> dict:
    """Our memory-respecting SP: each GPU type's complete pipelines as its own sub-cluster, leftovers as
    one mixed sub-cluster (random scheduling), decode throughputs summed."""
    placement = separate_pipelines_placement(cluster, MODEL, capacity)
    groups: dict[str, set[str]] = {}
    for name, _ in placement.items():
        groups.setdefault(cluster.node(name).gpu.name, set()).add(name)
    parts: dict[str, Placement] = {}
    mixed: set[str] = set()
    for gpu, names in groups.items():
        sub = Placement({n: placement[n] for n in sorted(names)})
        if sub.uncovered_layers(MODEL.num_layers) or not any(placement[n].start == 0 for n in names):
            mixed |= names
            continue
        parts[gpu] = sub
    if mixed:
        parts["mixed"] = Placement({n: placement[n] for n in sorted(mixed)})
    return _sub_runs(cluster, lambda sub: capacity, parts, fidelity, lambda label: per_group)


# Helix's SP (placement.md §6.4): which types form pipelines, and its offline populations (§6.5: 18 / 40 / 3
# for the A100 / L4 / T4 sub-clusters; serving.md §1.5: 25-30 per SP sub-cluster otherwise).
SP_TYPES = {
    "single24": ("A100-40GB", "L4", "T4"),
    "3cluster24": ("A100-40GB", "L4", "T4"),
    "cluster42": ("A100-40GB", "L4", "L4x2", "T4x4"),
}
SP_POPULATION = {"A100-40GB": 18, "L4": 40, "T4": 3}
SP_OTHER_POPULATION = 25
SP_PLUS_MIXED = (("V100-16GB", 6), ("T4", 10))  # cluster42 SP+: one pipeline, 5 layers per node


def separate_pipelines_paper(name: str, cluster, fidelity: str, plus: bool = False) -> dict:
    """Helix's SP / SP+ setup: L spread evenly over ALL nodes of a type even past their memory limit,
    simulated with settings clamped at the max layer count (`ClampedCapacityModel`), each type's
    sub-cluster on its own with random scheduling; the 24-node runs use single-type compositions, the
    cluster42 runs the full 42-node one (placement.md §6.4)."""
    unclamped = separate_pipelines_placement(cluster, MODEL, _capacity(cluster), respect_memory=False)
    by_type: dict[str, dict] = {}
    for node, r in unclamped.items():
        by_type.setdefault(cluster.node(node).gpu.name, {})[node] = r
    groups = {gpu: Placement(by_type[gpu]) for gpu in SP_TYPES[name]}
    if plus:
        nodes = [
            name
            for gpu, count in SP_PLUS_MIXED
            for name in [n.name for n in cluster.nodes if n.gpu.name == gpu][:count]
        ]
        groups["V100+T4"] = Placement({n: LayerRange(5 * i, 5 * i + 5) for i, n in enumerate(nodes)})
    full = cluster.composition()

    def capacity_for(sub):
        composition = full if name == "cluster42" else sub.composition()
        return ClampedCapacityModel(_capacity(cluster, composition), MODEL.num_layers)

    return _sub_runs(
        cluster,
        capacity_for,
        groups,
        fidelity,
        lambda label: SP_POPULATION.get(label, SP_OTHER_POPULATION),
    )


# "Our best scheduler settings": the improved preset, with the offline feed high-water mark chosen per plan.
FEED_HIGH_WATER = (0.85, 0.95)
CANDIDATES = 4
TUNING_SEEDS = (0, 1, 2, 3, 4)  # the plan and feed setting of "ours" are chosen on these
HELD_OUT_SEEDS = (100, 101, 102, 103, 104)  # and reported on these (mean ± sd)


def held_out(cluster, capacity, placement, fidelity: str, scheduler: str, initial: int, **changes) -> dict:
    """Mean ± sd of decode tokens/s over the held-out seeds, beside the first held-out run's record."""
    runs = [
        _run(cluster, capacity, placement, fidelity, scheduler, initial, seed=seed, **changes)
        for seed in HELD_OUT_SEEDS
    ]
    values = [r["decode_tokens_per_s"] for r in runs]
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {
        **runs[0],
        "decode_tokens_per_s": round(mean, 2),
        "decode_tokens_per_s_sd": round(sd, 2),
        "decode_tokens_per_s_by_seed": dict(zip(HELD_OUT_SEEDS, values, strict=True)),
        "seeds": list(HELD_OUT_SEEDS),
    }


def _mean_ranking(rankings: list[list[dict]]) -> list[dict]:
    """One ranking from several seeds' rankings: each (candidate, settings) by its mean decode tokens/s."""
    rows: dict[tuple, dict] = {}
    for ranking in rankings:
        for row in ranking:
            key = (row["index"], tuple(sorted(row["settings"].items())))
            rows.setdefault(key, {**row, "values": []})["values"].append(row["decode_tokens_per_s"])
    out = [{**r, "decode_tokens_per_s": sum(r["values"]) / len(r["values"])} for r in rows.values()]
    return sorted(out, key=lambda r: (-r["decode_tokens_per_s"], r["index"]))


def best_plan(cluster, capacity, time_limit_s: float) -> tuple[Placement, dict, dict]:
    """Our planner (objective ``throughput``); its best candidates and feed settings chosen by full
    simulations (improved preset) on the tuning seeds. Returns (placement, plan info, the record of the
    chosen plan and setting on the held-out seeds)."""
    result = plan(
        cluster,
        MODEL,
        PlannerOptions(method="milp", time_limit_s=time_limit_s, objective="throughput"),
        capacity,
    )
    candidates = plan_candidates(result)[:CANDIDATES]
    if not any(source == "max-flow optimum" for source, _ in candidates):
        candidates += [c for c in plan_candidates(result) if c[0] == "max-flow optimum"]
    kv = KVParameters(*KV_PARAMS["improved"])
    rankings = [
        rank_by_simulation(
            cluster,
            MODEL,
            capacity,
            candidates,
            load_lengths("azure_conversation"),
            SimConfig.preset("improved", initial_requests=20, seed=seed),
            settings=[{"feed_high_water": hw} for hw in FEED_HIGH_WATER],
            kv_params=kv,
        )
        for seed in TUNING_SEEDS
    ]
    ranking = _mean_ranking(rankings)
    best = ranking[0]
    source, placement = candidates[best["index"]]
    flows = {row["source"]: row["max_flow_tokens_per_s"] for row in result.details.get("candidates", [])}
    info = {
        "chosen": source,
        "settings": best["settings"],
        "max_flow_tokens_per_s": round(flows.get(source, result.flow_tokens_per_s), 2),
        "max_flow_optimum_tokens_per_s": round(
            result.details.get("max_flow_optimum_tokens_per_s", result.flow_tokens_per_s), 2
        ),
        "throughput_estimate_tokens_per_s": round(
            result.details.get("throughput_estimate_tokens_per_s", 0.0), 2
        ),
        "planner_s": round(result.elapsed_s, 2),
        "planner_stopped_by": result.details["stopped_by"],
        "selection": [
            {
                "source": row["source"],
                **row["settings"],
                "decode_tokens_per_s": round(row["decode_tokens_per_s"], 2),
                "max_flow_tokens_per_s": flows.get(row["source"]),
            }
            for row in ranking
        ],
    }
    info["selection_seeds"] = list(TUNING_SEEDS)
    record = held_out(cluster, capacity, placement, "improved", "maxflow", 20, **best["settings"])
    return placement, info, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="reference scenario only")
    parser.add_argument("--milp-time-limit", type=float, default=60.0)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "simulation.json"))
    args = parser.parse_args()
    ref = reference_dir()
    record = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "helix_reference": HELIX_REFERENCE,
    }
    cluster, capacity = _inputs("single24")
    published = load_helix_placement(ref / "placements" / "single24_llama70b_helix_milp.ini")
    started = time.perf_counter()
    record["reference_helix_compatible"] = _run(cluster, capacity, published, "helix", "maxflow", 20)
    record["reference_improved"] = _run(cluster, capacity, published, "improved", "maxflow", 20)
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({k: record[k] for k in ("reference_helix_compatible", "reference_improved")}, indent=1))
    if not args.quick:
        record["paper_comparison"] = {}
        for name, nodes in (("single24", 24), ("3cluster24", 24), ("cluster42", 42)):
            cluster, capacity = _inputs(name)
            helix_placement = load_helix_placement(ref / "placements" / f"{name}_llama70b_helix_milp.ini")
            swarm = load_helix_placement(ref / "placements" / f"{name}_llama70b_swarm.ini")
            population = round(240 * nodes / 24)
            ours_placement, ours_plan, ours = best_plan(cluster, capacity, args.milp_time_limit)
            same = ours_plan["settings"]
            row = {
                "paper": PAPER[name],
                "helix": held_out(cluster, capacity, helix_placement, "helix", "maxflow", 20),
                "helix_improved": held_out(cluster, capacity, helix_placement, "improved", "maxflow", 20),
                "swarm": _run(cluster, capacity, swarm, "helix", "swarm", population),
                "separate_random": separate_pipelines(cluster, capacity, "helix"),
                "separate_random_helix_setup": separate_pipelines_paper(name, cluster, "helix"),
                "helix_improved_ours_settings": held_out(
                    cluster, capacity, helix_placement, "improved", "maxflow", 20, **same
                ),
                "ours": ours,
                "ours_helix_preset": held_out(cluster, capacity, ours_placement, "helix", "maxflow", 20),
                "ours_plan": ours_plan,
            }
            if name == "cluster42":
                row["separate_plus_helix_setup"] = separate_pipelines_paper(name, cluster, "helix", plus=True)
            row["ours_beats_helix"] = {
                "improved": row["ours"]["decode_tokens_per_s"]
                >= row["helix_improved"]["decode_tokens_per_s"],
                "helix": row["ours_helix_preset"]["decode_tokens_per_s"]
                >= row["helix"]["decode_tokens_per_s"],
            }
            record["paper_comparison"][name] = row
            print(
                name,
                {
                    k: (v["decode_tokens_per_s"] if isinstance(v, dict) and "decode_tokens_per_s" in v else v)
                    for k, v in row.items()
                    if k not in ("ours_plan", "paper")
                },
                flush=True,
            )
    record["total_wall_s"] = round(time.perf_counter() - started, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
