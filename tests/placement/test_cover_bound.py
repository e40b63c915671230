"""The layer-cover bound is valid (never below the optimum: brute force on tiny instances, the proven
optima of Helix's clusters) and tighter than the saturation bound where contributions are lumpy."""

from __future__ import annotations

import itertools
import random

import pytest

from helix.flow.maxflow import evaluate_placement
from helix.placement.milp.bounds import saturation_bound, tables_saturation_bound
from helix.placement.milp.cover_bound import INFEASIBLE, cover_at, layer_cover_bound, merge_tables
from helix.placement.milp.problem import build_problem
from helix.specs.helix_ini import load_helix_placement


def line_max_flow(num_layers: int, arcs: list[tuple[int, int, float]]) -> float:
    """Max flow 0 → L on the line of layer boundaries (an arc s → e per node): the min cut over the
    boundary sets that hold 0 and not L (every arc goes forward)."""
    best = float("inf")
    for inside in itertools.product((False, True), repeat=num_layers - 1):
        side = (True, *inside, False)
        best = min(best, sum(cap for s, e, cap in arcs if side[s] and not side[e]))
    return best


def brute_force_optimum(num_layers: int, tables: list[tuple[float, ...]]) -> float:
    """Best max flow over every placement (each node holds one contiguous range, or nothing)."""
    choices = [
        [None] + [(s, e) for s in range(num_layers) for e in range(s + 1, min(num_layers, s + len(t)) + 1)]
        for t in tables
    ]
    best = 0.0
    for ranges in itertools.product(*choices):
        arcs = [(r[0], r[1], t[r[1] - r[0] - 1]) for r, t in zip(ranges, tables, strict=True) if r]
        best = max(best, line_max_flow(num_layers, arcs))
    return best


def random_instance(rng: random.Random) -> tuple[int, list[tuple[float, ...]]]:
    num_layers = rng.randint(2, 4)
    tables = []
    for _ in range(rng.randint(2, 4)):
        first = rng.uniform(5.0, 20.0)
        tables.append(
            tuple(first / k ** rng.uniform(0.8, 1.3) for k in range(1, rng.randint(1, num_layers) + 1))
        )
    return num_layers, tables


def test_cover_bound_is_valid_and_beats_saturation_on_tiny_instances():
    rng = random.Random(7)
    tighter = 0
    for _ in range(40):
        num_layers, tables = random_instance(rng)
        if sum(len(t) for t in tables) < num_layers:
            continue
        counted = [(t, 1) for t in tables]
        optimum = brute_force_optimum(num_layers, tables)
        saturation = tables_saturation_bound(counted, num_layers)
        bound = layer_cover_bound(counted, num_layers, optimum, saturation, rel_tol=1e-6, max_probes=40)
        assert bound >= optimum * (1 - 1e-9), (num_layers, tables)
        assert cover_at(counted, num_layers, optimum * (1 - 1e-9)).status != INFEASIBLE
        tighter += bound < saturation * (1 - 1e-3)
    assert tighter >= 3


def test_hand_solved_instance():
    # 2 layers, three nodes that each hold one layer at 10 tok/s: the best plan has two nodes on one layer
    # and one on the other, flow 10. Saturation: L·F ≤ 3·min(10, F) allows F = 15; covering each layer by
    # whole nodes needs two per layer above F = 10, four nodes: so the cover bound is 10.
    tables = [((10.0,), 3)]
    assert tables_saturation_bound(tables, 2) == pytest.approx(15.0, rel=1e-6)
    assert brute_force_optimum(2, [(10.0,)] * 3) == pytest.approx(10.0)
    bound = layer_cover_bound(tables, 2, 5.0, 15.0, rel_tol=1e-6, max_probes=40)
    assert 10.0 <= bound <= 10.0 * (1 + 1 / 2000)  # items are rounded up to F / 4000 units


def test_equal_tables_merge_across_zones():
    assert merge_tables([((3.0, 1.0), 2), ((2.0,), 1), ((3.0, 1.0), 4), ((), 5)]) == [
        ((2.0,), 1),
        ((3.0, 1.0), 6),
    ]


@pytest.mark.parametrize(
    "name,optimum",
    [("single24", 2045.641), ("cluster10", 286.5874)],  # proven optimal (planner.json: gap ≤ 1e-6)
)
def test_cover_bound_holds_at_proven_optima(helix_setup, name, optimum):
    problem = build_problem(*helix_setup(name))
    tables = [(c.caps_tokens_per_s, c.count) for c in problem.classes]
    assert cover_at(tables, problem.num_layers, optimum * (1 - 1e-6)).status != INFEASIBLE


def test_cover_bound_is_tighter_than_saturation_on_cluster42(ref, helix_setup):
    cluster, model, capacity = helix_setup("cluster42")
    problem = build_problem(cluster, model, capacity)
    tables = [(c.caps_tokens_per_s, c.count) for c in problem.classes]
    published = load_helix_placement(ref / "placements" / "cluster42_llama70b_swarm.ini")
    value = evaluate_placement(cluster, model, published, capacity).value_tokens_per_s
    saturation = saturation_bound(problem)
    bound = layer_cover_bound(tables, problem.num_layers, value, saturation)
    assert value <= bound < 0.95 * saturation
    # the planner's cluster42 placement (benchmarks/results/planner.json) carries 5905.787
    assert cover_at(tables, problem.num_layers, 5905.787).status != INFEASIBLE
