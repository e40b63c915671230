"""Choose among candidate placements by short simulations.

The planner's ``throughput`` objective ranks placements by an analytic KV / pipeline-depth estimate
(`helix.placement.milp.throughput`); where minutes are available, the few best candidates it returns
(``PlanResult.details["candidates"]``) can be re-ranked here by simulating each one offline for a short
window with the scheduler and settings that will serve it. The simulation is deterministic for a seed,
so the choice is too. Short windows mislead: a KV-limited plan can look best over the first minutes and
fall behind once contexts grow, so use the window the result will be judged on.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

from helix.flow.graph import DEFAULT_PARTIAL_OVERLAP, FlowOptions
from helix.flow.maxflow import evaluate_placement
from helix.perf.base import CapacityModel
from helix.placement.result import PlanResult
from helix.placement.served import ServedEstimate, ServingSetup, estimate_served
from helix.scheduling.kv import KVParameters
from helix.sim.config import KV_PARAMS, SimConfig
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement


def plan_candidates(result: PlanResult) -> list[tuple[str, Placement]]:
    """The planner's candidates (source, placement), best estimate first; the result's own placement
    when it has none."""
    rows: Sequence[Mapping[str, Any]] = result.details.get("candidates") or ()
    out = [
        (
            str(row["source"]),
            Placement({n: LayerRange(int(s), int(e)) for n, (s, e) in row["ranges"].items()}),
        )
        for row in rows
    ]
    return out or [(str(result.details.get("found_by", result.method)), result.placement)]


def rank_by_simulation(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    candidates: Sequence[tuple[str, Placement]],
    lengths: Lengths,
    config: SimConfig,
    *,
    settings: Sequence[Mapping[str, Any]] = ({},),
    scheduler: str = "maxflow",
    kv_params: KVParameters | None = None,
    partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP,
) -> list[dict[str, Any]]:
    """Simulate every candidate under every `settings` variant of `config` (offline); rows best first.

    Each row: {"index", "source", "settings", "decode_tokens_per_s", "total_tokens_per_s", "summary"}.
    """
    rows = []
    for index, (source, placement) in enumerate(candidates):
        for variant in settings:
            result = simulate(
                cluster,
                model,
                placement,
                capacity,
                lengths,
                replace(config, mode="offline", **variant),
                scheduler=scheduler,
                kv_params=kv_params,
                partial_overlap=partial_overlap,
            )
            summary = result["summary"]
            rows.append(
                {
                    "index": index,
                    "source": source,
                    "settings": dict(variant),
                    "decode_tokens_per_s": summary["decode_tokens_per_s"],
                    "total_tokens_per_s": summary["total_tokens_per_s"],
                    "summary": summary,
                    "wall_s": result["wall_s"],
                }
            )
    rows.sort(key=lambda row: -row["decode_tokens_per_s"])  # stable: ties keep candidate order
    return rows


def simulation_checker(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    lengths: Lengths,
    config: SimConfig,
    *,
    seeds: Sequence[int] = (0,),
    scheduler: str = "maxflow",
    kv_params: KVParameters | None = None,
    partial_overlap: bool = False,
    max_tokens: float = 2e6,
    cache: dict | None = None,
    setup: ServingSetup | None = None,
    workers: int = 1,
):
    """A `PlannerOptions.checker`: each placement's mean offline decode tokens/s over `seeds`.

    With `setup` (the served objective's inputs), each placement's warm-up is at least its
    `steady_state_window`'s, so a plan whose KV fills slowly is measured once it has, not on its ramp.
    Simulation cost grows with the tokens simulated: where max flow × (warm-up + duration) exceeds
    `max_tokens` (small models on fast clusters), both windows shrink in proportion. `cache` (a dict
    shared between checkers of the same settings, e.g. a screening checker on one seed and a confirming
    one on five) keeps each (placement, seed) result, so no run is repeated. `workers` > 1 runs the
    simulations of one call in that many forked processes (`parallel_map`); each is deterministic, so
    the values do not depend on it."""
    memo: dict = {} if cache is None else cache

    def window(placement: Placement) -> SimConfig:
        flow = evaluate_placement(
            cluster, model, placement, capacity, FlowOptions(partial_overlap=partial_overlap)
        )
        base = config
        if setup is not None and flow.value_tokens_per_s > 0:
            est = estimate_served(cluster, model, capacity, placement, flow, setup)
            base = steady_state_window(config, est)
        total_s = base.warmup_s + base.duration_s
        scale = min(1.0, max_tokens / max(1e-9, flow.value_tokens_per_s * total_s))
        return replace(base, warmup_s=base.warmup_s * scale, duration_s=base.duration_s * scale)

    def decode_tokens_per_s(job: tuple[Placement, SimConfig]) -> float:
        placement, run_config = job
        result = simulate(
            cluster,
            model,
            placement,
            capacity,
            lengths,
            run_config,
            scheduler=scheduler,
            kv_params=kv_params,
            partial_overlap=partial_overlap,
        )
        return result["summary"]["decode_tokens_per_s"]

    def check(placements: Sequence[Placement]) -> list[float]:
        chosen = [canonical(given) for given in placements]
        jobs = {}
        for placement in chosen:
            missing = [seed for seed in seeds if (placement, seed) not in memo]
            if missing:
                base = window(placement)
                jobs.update({(placement, seed): replace(base, mode="offline", seed=seed) for seed in missing})
        runs = [(placement, run_config) for (placement, _), run_config in jobs.items()]
        memo.update(zip(jobs, parallel_map(decode_tokens_per_s, runs, workers), strict=True))
        return [sum(memo[p, seed] for seed in seeds) / len(seeds) for p in chosen]

    return check


def parallel_map(function, items: Sequence, workers: int) -> list:
    """`[function(x) for x in items]`, in up to `workers` forked processes when there are several items
    (results in order). The processes inherit `function` and `items` (nothing but an index and the
    result is pickled: specs hold read-only mappings). In-process where forking is not possible: one
    worker or one item, a daemonic process (a multiprocessing pool's worker may not have children), or
    no ``fork`` start method."""
    workers = min(workers, len(items))
    if workers <= 1 or mp.current_process().daemon or "fork" not in mp.get_all_start_methods():
        return [function(item) for item in items]
    context = mp.get_context("fork")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_inherit, initargs=(function, items)
    ) as pool:
        return list(pool.map(_run_inherited, range(len(items))))


_INHERITED: dict = {}  # set only inside a `parallel_map` worker process, by its initializer


def _inherit(function, items) -> None:
    _INHERITED["function"], _INHERITED["items"] = function, items


def _run_inherited(index: int):
    return _INHERITED["function"](_INHERITED["items"][index])


def canonical(placement: Placement) -> Placement:
    """`placement` with its nodes in name order. A simulation breaks ties (equal IWRR weights, equal
    arrival times) in the placement's node order: two cluster42 plans that simulate alike in name order
    were checked at 818 and 785 decode tokens/s (one seed) in the orders the planner built them in, and
    Helix's 3cluster24 plan serves 107.9 or 110.2 by its order; checks in one order compare plans."""
    return Placement(dict(sorted(placement.items())))


FILL_MARGIN = 2.0  # the ramp's TTFT exceeds the steady one (its first prompts queue together): 150-200 s
#                    measured against 115-120 s from the steady TTFT on 3cluster24


def steady_state_window(config: SimConfig, est: ServedEstimate) -> SimConfig:
    """`config` with the warm-up at least the time the offline feed takes to fill KV (the served
    estimate's), so the window measures a full population, not its ramp.

    The feed launches one request per finished prompt, so about `initial_requests` prompts are in
    progress while KV fills: N requests in flight take N · TTFT / initial_requests (× FILL_MARGIN) to
    launch. On single24 that is 30-110 s; on 3cluster24, whose routes cross 12.5 Mbps links (one
    prompt's activations take ~8 s there), 150-250 s, where a 60 s warm-up measures a population still
    growing linearly and ranks plans by how fast they fill."""
    fill_s = FILL_MARGIN * est.requests_in_flight * est.ttft_s / max(1, config.initial_requests)
    if not math.isfinite(fill_s):
        return config
    return replace(config, warmup_s=max(config.warmup_s, fill_s))


def in_flight_prompt_tokens(lengths: Lengths) -> float:
    """Mean prompt length of the requests in flight: each is in flight for a time ∝ its output length,
    so E[I·O] / E[O] (Azure conversations: 924 tokens against a mean prompt of 763, since long prompts
    come with long answers)."""
    outputs = lengths.output_tokens.astype(float)
    return float((lengths.prompt_tokens * outputs).sum() / outputs.sum())


def serving_setup(lengths: Lengths, fidelity: str = "improved") -> ServingSetup:
    """The served objective's inputs for `lengths` and a fidelity preset's offline admission policy."""
    h, r = KV_PARAMS[fidelity]
    config = SimConfig.preset(fidelity)
    return ServingSetup(
        prompt_tokens=float(lengths.prompt_tokens.mean()),
        prompt_tokens_in_flight=in_flight_prompt_tokens(lengths),
        output_tokens=float(lengths.output_tokens.mean()),
        expected_kv_hwm=h,
        expected_output_ratio=r,
        feed_high_water=config.feed_high_water,
        first_token_from_prompt=config.decodes_per_request == "output-1",
    )
