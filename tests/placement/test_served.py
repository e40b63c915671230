"""The served-throughput estimate and the default ``served`` objective."""

from __future__ import annotations

import pytest

from helix.flow.maxflow import evaluate_placement
from helix.placement.baselines import BASELINES
from helix.placement.milp import milp_plan
from helix.placement.result import PlannerOptions
from helix.placement.served import ServingSetup, estimate_served, routes
from helix.specs.helix_ini import load_helix_placement
from helix.specs.placement import Placement
from tests.placement.test_milp import TINY, TINY_MODEL, tiny_cluster


def test_routes_decompose_the_max_flow():
    cluster = tiny_cluster()
    placement = Placement.from_pairs({"a": (0, 2), "t-0": (2, 4), "t-1": (2, 4)})
    flow = evaluate_placement(cluster, TINY_MODEL, placement, TINY)
    paths = routes(flow)
    assert sum(f for _, f in paths) == pytest.approx(flow.value_tokens_per_s)
    assert all(path[0] == "a" for path, _ in paths)


def test_fewer_layers_per_node_admit_more_requests(helix_setup):
    """The same single24 nodes, one pipeline deep or Helix's plan: KV per layer decides how many
    requests are in flight, and the estimate says which limit binds."""
    cluster, model, capacity = helix_setup("single24")
    for name, placement in (
        ("petals", BASELINES["petals"](cluster, model, capacity)),
        ("swarm", BASELINES["swarm"](cluster, model, capacity)),
    ):
        flow = evaluate_placement(cluster, model, placement, capacity)
        est = estimate_served(cluster, model, capacity, placement, flow)
        assert est.decode_tokens_per_s > 0 and est.tpot_s > 0 and est.ttft_s > 0, name
        assert est.binding.startswith(("kv-", "compute")), name
        # Little's law: decode tokens/s ≈ requests in flight / time per request × decodes per request
        per_request_s = est.ttft_s + ServingSetup().decode_iterations * est.tpot_s
        assert est.decode_tokens_per_s <= est.requests_in_flight / per_request_s * 240 + 1e-6


def test_estimate_ranks_plans_as_the_simulator_does(ref, helix_setup):
    """Three single24 plans with distinct serving: Helix's published plan, the max-flow optimum (a
    24-stage chain, the most max flow) and Swarm (4 layers per node, 20 stages). Short offline
    simulations (helix preset, seed 0) and the estimate order them the same way, where max flow
    puts the max-flow optimum first."""
    cluster, model, capacity = helix_setup("single24")
    plans = {
        "helix": load_helix_placement(ref / "placements" / "single24_llama70b_helix_milp.ini"),
        "max-flow": milp_plan(cluster, model, capacity, PlannerOptions(objective="max-flow")).placement,
        "swarm": BASELINES["swarm"](cluster, model, capacity),
    }
    estimate, simulated = _estimated_and_simulated(cluster, model, capacity, plans, 60, 120)
    assert sorted(plans, key=estimate.get) == sorted(plans, key=simulated.get), (estimate, simulated)


def _estimated_and_simulated(cluster, model, capacity, plans: dict, warmup_s: float, duration_s: float):
    """Per plan: the served estimate's decode tokens/s, and the simulator's (helix preset, Azure
    conversation lengths, seed 0, `warmup_s` + `duration_s`)."""
    from helix.scheduling.kv import KVParameters
    from helix.sim.config import KV_PARAMS, SimConfig
    from helix.sim.select import serving_setup, simulation_checker
    from helix.sim.workload import load_lengths

    lengths = load_lengths("azure_conversation")
    setup = serving_setup(lengths, "helix")
    estimate = {
        k: estimate_served(
            cluster, model, capacity, p, evaluate_placement(cluster, model, p, capacity), setup
        ).decode_tokens_per_s
        for k, p in plans.items()
    }
    check = simulation_checker(
        cluster,
        model,
        capacity,
        lengths,
        SimConfig.preset("helix", warmup_s=warmup_s, duration_s=duration_s),
        kv_params=KVParameters(*KV_PARAMS["helix"]),
    )
    return estimate, dict(zip(plans, check(list(plans.values())), strict=True))


# A 20-node stage-IP placement of 3cluster24 (max flow 1347.9): 4 A100s of region 0 hold layers 0-30,
# region 1 (n4-n9) layers 30-46, region 2 (n14-n23) layers 46-80, so every route crosses two slow links.
STAGE_IP_3CLUSTER24 = {
    "n0": (0, 9), "n1": (9, 18), "n2": (18, 30), "n3": (18, 30), "n6": (30, 34), "n7": (30, 34),
    "n4": (34, 38), "n5": (38, 42), "n8": (42, 46), "n9": (42, 46), "n14": (46, 52), "n15": (46, 52),
    "n16": (52, 56), "n17": (56, 60), "n18": (60, 64), "n19": (64, 68), "n20": (68, 71),
    "n21": (71, 74), "n22": (74, 77), "n23": (77, 80),
}  # fmt: skip


def test_estimate_ranks_slow_link_plans_as_the_simulator_does(ref, helix_setup):
    """3cluster24's regions are joined by 12.5 Mbps links, where one prompt's activations take ~8 s and
    decode tokens queue behind them. Three plans whose routes all cross them: the stage-IP placement
    above, Helix's published plan and the Parallax-style greedy allocation. The simulator in steady
    state (300 s warm-up: KV fills only after 150-200 s there; 600 s window; helix preset, seed 0)
    serves about 150, 110 and 86 decode tokens/s; the estimate orders them the same way (it put
    Helix's plan first while it counted each link's transfers of one decode batch only)."""
    cluster, model, capacity = helix_setup("3cluster24")
    plans = {
        "stage IP": Placement.from_pairs(STAGE_IP_3CLUSTER24),
        "helix": load_helix_placement(ref / "placements" / "3cluster24_llama70b_helix_milp.ini"),
        "parallax-greedy": BASELINES["parallax-greedy"](cluster, model, capacity),
    }
    estimate, simulated = _estimated_and_simulated(cluster, model, capacity, plans, 300, 600)
    assert sorted(plans, key=estimate.get) == sorted(plans, key=simulated.get), (estimate, simulated)
    assert sorted(plans, key=simulated.get) == ["parallax-greedy", "helix", "stage IP"], simulated


@pytest.mark.parametrize("name", ["single24", "3cluster24", "cluster42", "cluster10"])
def test_default_objective_is_never_below_the_best_baseline(helix_setup, name):
    """By the served estimate, on Helix's four clusters. A short safety cap keeps this fast: past it the
    objective ranks the placements already evaluated, which include every baseline."""
    cluster, model, capacity = helix_setup(name)
    result = milp_plan(cluster, model, capacity, PlannerOptions(time_limit_s=2.0))
    assert result.details["objective"] == "served"
    chosen = result.details["served"]["decode_tokens_per_s"]
    for baseline, build in BASELINES.items():
        try:
            placement = build(cluster, model, capacity)
        except ValueError:
            continue
        flow = evaluate_placement(cluster, model, placement, capacity)
        if flow.value_tokens_per_s <= 0:
            continue
        value = estimate_served(cluster, model, capacity, placement, flow).decode_tokens_per_s
        assert chosen >= value - 1e-3, (baseline, value, chosen)  # details round to 1e-3
    check = evaluate_placement(cluster, model, result.placement, capacity)
    assert check.value_tokens_per_s == pytest.approx(result.flow_tokens_per_s)


def test_checker_decides_among_the_best_candidates():
    cluster, model, capacity = tiny_cluster(), TINY_MODEL, TINY
    seen = []

    def checker(placements):
        seen.extend(placements)
        return [float(len(p)) for p in placements]  # prefers the plan using the most nodes

    result = milp_plan(
        cluster,
        model,
        capacity,
        PlannerOptions(
            time_limit_s=2.0, checker=checker, checker_description="node count", check_candidates=3
        ),
    )
    assert 1 <= len(seen) <= 3
    assert len(result.placement) == max(len(p) for p in seen)
    assert result.details["checked_by"] == "node count"
    assert result.details["served"]["checked_decode_tokens_per_s"] == float(len(result.placement))


def test_confirm_checker_reorders_the_best_checked_candidates():
    cluster, model, capacity = tiny_cluster(), TINY_MODEL, TINY
    screened, confirmed = [], []

    def screen(placements):
        screened.extend(placements)
        return [float(len(p)) for p in placements]  # prefers many nodes

    def confirm(placements):
        confirmed.extend(placements)
        return [100.0 - len(p) for p in placements]  # prefers few nodes

    result = milp_plan(
        cluster,
        model,
        capacity,
        PlannerOptions(
            time_limit_s=2.0,
            checker=screen,
            check_candidates=4,
            confirm_checker=confirm,
            confirm_description="fewest nodes",
            confirm_candidates=2,
            confirm_within=1.0,  # confirm the best two however far apart their first checks are
        ),
    )
    assert 1 <= len(confirmed) <= 2 and len(confirmed) <= len(screened)
    best_screened = sorted(screened, key=len, reverse=True)[: len(confirmed)]
    assert sorted(map(len, confirmed)) == sorted(map(len, best_screened))
    assert len(result.placement) == min(len(p) for p in confirmed)
    assert result.details["confirmed_by"] == "fewest nodes"
    assert result.details["served"]["confirmed_decode_tokens_per_s"] == 100.0 - len(result.placement)


def test_a_clear_lead_on_the_first_check_is_not_confirmed():
    """Early stop: when the best first check leads every other by more than `confirm_within`, the
    confirmation could not change the choice and is skipped."""
    cluster, model, capacity = tiny_cluster(), TINY_MODEL, TINY
    confirmed = []

    def screen(placements):
        return [1000.0 if i == 0 else 10.0 for i, _ in enumerate(placements)]

    def confirm(placements):
        confirmed.extend(placements)
        return [1.0] * len(placements)

    options = PlannerOptions(
        time_limit_s=2.0, checker=screen, check_candidates=4, confirm_checker=confirm, confirm_candidates=2
    )
    result = milp_plan(cluster, model, capacity, options)
    assert confirmed == []
    assert result.details["confirmed_by"] is None
    assert result.details["served"]["checked_decode_tokens_per_s"] == 1000.0


def test_checked_candidates_span_families():
    from helix.placement.milp.served_objective import _diverse, family

    assert family("KV-aware stage pipelines, depth 11, γ×0.5") == "KV-aware stage pipelines, depth 11"
    assert family("local search + served local search") == "local search"
    rows = [[10.0 - i, "local search", i] for i in range(5)] + [[1.0, "stage IP", 9]]
    kept = _diverse(rows, 3)
    assert [row[1] for row in kept] == ["local search", "local search", "stage IP"]
    assert len(_diverse(rows, 10)) == 6
