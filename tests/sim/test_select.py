"""Choosing among placements by short simulations."""

from __future__ import annotations

import numpy as np

from helix.flow.maxflow import evaluate_placement
from helix.placement.result import PlanResult
from helix.sim.config import SimConfig
from helix.sim.select import plan_candidates, rank_by_simulation
from helix.sim.workload import Lengths
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity, make_cluster


def test_faster_pipeline_ranks_first(model):
    """Two nodes: splitting the model over both halves each pass; one node alone does all 80 layers."""
    cluster = make_cluster(["a", "b"])
    capacity = FlatCapacity(100.0)
    one = Placement.from_pairs({"a": (0, 80)})
    two = Placement.from_pairs({"a": (0, 40), "b": (40, 80)})
    lengths = Lengths(np.array([10]), np.array([400]), "test")
    config = SimConfig(model_loading=False, initial_requests=4, feed="population")
    rows = rank_by_simulation(
        cluster, model, capacity, [("one", one), ("two", two)], lengths, config, scheduler="random"
    )
    assert [r["source"] for r in rows] == ["two", "one"]
    assert rows[0]["decode_tokens_per_s"] > rows[1]["decode_tokens_per_s"] > 0


def test_plan_candidates_round_trip(model):
    cluster = make_cluster(["a", "b"])
    placement = Placement.from_pairs({"a": (0, 40), "b": (40, 80)})
    flow = evaluate_placement(cluster, model, placement, FlatCapacity(100.0))
    result = PlanResult(
        placement,
        flow,
        "milp",
        details={
            "candidates": [
                {"source": "x", "ranges": {"a": [0, 80]}},
                {"source": "y", "ranges": {"a": [0, 40], "b": [40, 80]}},
            ]
        },
    )
    got = plan_candidates(result)
    assert [s for s, _ in got] == ["x", "y"]
    assert got[1][1] == placement
    assert plan_candidates(PlanResult(placement, flow, "milp"))[0][1] == placement


def test_steady_state_window_waits_for_kv_to_fill_on_slow_links(helix_setup, ref):
    """3cluster24's routes cross 12.5 Mbps links: the feed fills KV only after minutes (150-200 s
    simulated for Helix's plan there, 30-65 s on single24), so the warm-up grows past 120 s; the
    window itself is left as given."""
    from helix.placement.served import estimate_served
    from helix.sim.select import serving_setup, steady_state_window
    from helix.sim.workload import load_lengths
    from helix.specs.helix_ini import load_helix_placement

    setup = serving_setup(load_lengths("azure_conversation"), "helix")
    config = SimConfig.preset("helix", warmup_s=60, duration_s=180)
    windows = {}
    for name in ("single24", "3cluster24"):
        cluster, model, capacity = helix_setup(name)
        placement = load_helix_placement(ref / "placements" / f"{name}_llama70b_helix_milp.ini")
        flow = evaluate_placement(cluster, model, placement, capacity)
        est = estimate_served(cluster, model, capacity, placement, flow, setup)
        windows[name] = steady_state_window(config, est)
    assert all(w.duration_s == 180 for w in windows.values())
    assert 60 <= windows["single24"].warmup_s < 120 < windows["3cluster24"].warmup_s


def test_checks_do_not_depend_on_the_placements_node_order(helix_setup, ref):
    """The simulator breaks ties in node order; the checker simulates every plan in name order."""
    from helix.scheduling.kv import KVParameters
    from helix.sim.config import KV_PARAMS
    from helix.sim.select import simulation_checker
    from helix.sim.workload import load_lengths
    from helix.specs.helix_ini import load_helix_placement

    cluster, model, capacity = helix_setup("3cluster24")
    plan = load_helix_placement(ref / "placements" / "3cluster24_llama70b_helix_milp.ini")
    reordered = Placement(dict(reversed(list(plan.items()))))
    values = [
        simulation_checker(
            cluster,
            model,
            capacity,
            load_lengths("azure_conversation"),
            SimConfig.preset("helix", warmup_s=20, duration_s=40),
            kv_params=KVParameters(*KV_PARAMS["helix"]),
        )([placement])[0]
        for placement in (plan, reordered)
    ]
    assert values[0] == values[1] > 0


def test_checks_in_forked_workers_equal_checks_in_process(model):
    """`workers` > 1 simulates in forked processes: the same values, in order, and cached alike."""
    import os

    from helix.sim.select import parallel_map, simulation_checker

    cluster = make_cluster(["a", "b"])
    capacity = FlatCapacity(100.0)
    plans = [
        Placement.from_pairs({"a": (0, 80)}),
        Placement.from_pairs({"a": (0, 40), "b": (40, 80)}),
        Placement.from_pairs({"a": (0, 80), "b": (0, 80)}),
    ]
    lengths = Lengths(np.array([10, 30]), np.array([200, 400]), "test")
    config = SimConfig(model_loading=False, initial_requests=4, feed="population", duration_s=60)
    values = {}
    for workers in (1, 2):
        cache: dict = {}
        check = simulation_checker(
            cluster, model, capacity, lengths, config, seeds=(0, 1), cache=cache, workers=workers
        )
        values[workers] = check(plans)
        assert len(cache) == 6 and check(plans) == values[workers]
    assert values[1] == values[2] and len(set(values[1])) == 3
    pids = parallel_map(lambda _: os.getpid(), [None] * 4, 2)
    assert os.getpid() not in pids  # forked workers ran them
