"""Entry point: simulate a plan on a cluster and return a JSON-ready result."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from helix.errors import HelixInputError
from helix.flow.graph import DEFAULT_PARTIAL_OVERLAP, FlowOptions
from helix.flow.maxflow import evaluate_placement
from helix.perf.base import CapacityModel
from helix.scheduling.base import create_scheduler
from helix.scheduling.kv import KVParameters
from helix.scheduling.topology import Topology
from helix.sim.config import SimConfig
from helix.sim.simulator import Simulator
from helix.sim.workload import Lengths
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement


def check_workload_fits(topology: Topology, lengths: Lengths) -> None:
    """Raise unless the longest request's KV fits on some node (KV per layer × the node's layers)."""
    longest = int((lengths.prompt_tokens + lengths.output_tokens).max())
    best = max(
        lim.kv_capacity_token_layers / topology.ranges[n].num_layers for n, lim in topology.limits.items()
    )
    if longest > best:
        raise HelixInputError(
            f"the longest request needs {longest} tokens of KV per layer but the largest node KV cache "
            f"holds {int(best)}",
            where=lengths.source,
            field="workload",
            fix="use shorter requests, or a plan that gives nodes fewer layers",
        )
    biggest_prompt = max(lim.max_prompt_tokens for lim in topology.limits.values())
    if int(lengths.prompt_tokens.max()) > biggest_prompt:
        raise HelixInputError(
            f"prompts of {int(lengths.prompt_tokens.max())} tokens exceed every node's "
            f"prompt batch limit ({biggest_prompt})",
            where=lengths.source,
            field="workload",
            fix="truncate long prompts",
        )


def simulate(
    cluster: ClusterSpec,
    model: ModelSpec,
    placement: Placement,
    capacity: CapacityModel,
    lengths: Lengths,
    config: SimConfig,
    *,
    scheduler: str = "maxflow",
    kv_params: KVParameters | None = None,
    arrival_times_s: np.ndarray | None = None,
    partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP,
    kv_admission: bool | None = None,
    progress: Callable[[float], None] | None = None,
    trace_memory: bool = False,
) -> dict[str, Any]:
    """Simulate and return {"summary", "config", "timeline", "wall_s", ...} (see docs/simulator.md)."""
    if config.mode == "online" and (arrival_times_s is None or len(arrival_times_s) == 0):
        raise HelixInputError(
            "online mode needs arrivals",
            field="arrivals",
            fix="give --rate (Poisson/gamma/buckets) or a trace with timestamps",
        )
    started = time.perf_counter()
    if trace_memory:
        tracemalloc.start()
    flow = evaluate_placement(
        cluster, model, placement, capacity, FlowOptions(partial_overlap=partial_overlap)
    )
    if flow.value_tokens_per_s <= 0:
        raise HelixInputError(
            "the plan's max flow is 0: no complete pipeline exists",
            field="placement",
            fix="check that links connect consecutive layer ranges",
        )
    topology = Topology.build(cluster, model, placement, capacity, flow, partial_overlap=partial_overlap)
    check_workload_fits(topology, lengths)
    sched = create_scheduler(
        scheduler,
        topology,
        kv_params or KVParameters(),
        random.Random(config.seed),
        kv_admission=kv_admission,
    )
    sim = Simulator(sched, capacity, model, config, lengths, arrival_times_s)
    summary = sim.run(progress)
    wall_s = time.perf_counter() - started
    peak = None
    if trace_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rec = sim.rec
    return {
        "summary": summary,
        "scheduler": scheduler,
        "config": asdict(config),
        "kv_params": asdict(sched.kv.params),
        "wall_s": wall_s,
        "peak_traced_bytes": peak,
        "load_times_s": sim.load_times_s,
        "timeline": {
            "t_s": rec.timeline_s,
            "nodes": sim.names,
            "busy": rec.node_busy,
            "kv": rec.node_kv,
            "in_flight": rec.in_flight,
            "queue": rec.queue_length,
        },
        "_recorder": rec,
    }
