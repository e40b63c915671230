"""`plan(cluster, model, options) -> PlanResult`: the one entry point to every placement method.

Baselines are evaluated by the independent max-flow evaluator and carry the compute upper bound;
search-based methods (``milp``) register themselves in `METHODS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from helix.errors import HelixInputError
from helix.flow.graph import FlowOptions
from helix.flow.maxflow import compute_upper_bound, evaluate_placement
from helix.perf.base import CapacityModel
from helix.perf.factory import capacity_model_for
from helix.placement.baselines import BASELINES, check_fits
from helix.placement.result import PlannerOptions, PlanResult
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec

Method = Callable[[ClusterSpec, ModelSpec, CapacityModel, PlannerOptions], PlanResult]


def baseline_plan(
    name: str, cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, options: PlannerOptions
) -> PlanResult:
    """Run baseline `name` and evaluate it."""
    started = time.perf_counter()
    placement = BASELINES[name](cluster, model, capacity, seed=options.seed)
    flow = evaluate_placement(cluster, model, placement, capacity, FlowOptions(options.partial_overlap))
    elapsed = time.perf_counter() - started
    return PlanResult(
        placement=placement,
        flow=flow,
        method=name,
        upper_bound_tokens_per_s=compute_upper_bound(cluster, model, capacity),
        bound_source="compute upper bound (sum of node capacities / L)",
        elapsed_s=elapsed,
        time_to_best_s=elapsed,
    )


def _baseline_method(name: str) -> Method:
    def run(
        cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel, options: PlannerOptions
    ) -> PlanResult:
        return baseline_plan(name, cluster, model, capacity, options)

    return run


METHODS: dict[str, Method] = {name: _baseline_method(name) for name in BASELINES}


def available_methods() -> list[str]:
    _load_optional_methods()
    return sorted(METHODS)


def _load_optional_methods() -> None:
    """Register the MILP planner (imported lazily; an ImportError surfaces, never hides the method)."""
    if "milp" not in METHODS:
        from helix.placement.milp import milp_plan

        METHODS["milp"] = milp_plan


def plan(
    cluster: ClusterSpec,
    model: ModelSpec,
    options: PlannerOptions = PlannerOptions(),
    capacity: CapacityModel | None = None,
) -> PlanResult:
    """Place `model` on `cluster` with `options.method`; the result's flow is independently evaluated."""
    _load_optional_methods()
    if options.method not in METHODS:
        raise HelixInputError(
            f"unknown placement method {options.method!r}",
            field="--method",
            fix=f"use one of {', '.join(sorted(METHODS))}",
        )
    if options.time_limit_s <= 0:
        raise HelixInputError("must be > 0", field="--time-limit", fix="give a positive number of seconds")
    capacity = capacity or capacity_model_for(cluster, model)
    check_fits(cluster, model, capacity)
    return METHODS[options.method](cluster, model, capacity, options)
