import pytest

from helix.errors import HelixInputError
from helix.flow import evaluate_placement
from helix.placement.planner import plan
from helix.placement.result import PlannerOptions
from helix.placement.warm_start import WarmStart, moved_layers
from helix.specs.membership import restrict
from helix.specs.placement import Placement


def _base(helix_setup, name="cluster10"):
    cluster, model, capacity = helix_setup(name)
    first = plan(cluster, model, PlannerOptions(time_limit_s=3), capacity)
    return cluster, model, capacity, first.placement


def test_moved_layers_counts_only_new_layers():
    old = Placement.from_pairs({"a": (0, 4), "b": (4, 8)})
    new = Placement.from_pairs({"a": (0, 5), "b": (6, 8), "c": (0, 2)})
    assert moved_layers(old, new) == 1 + 0 + 2
    assert moved_layers(old, old) == 0


def test_no_change_keeps_the_placement(helix_setup):
    cluster, model, capacity, placement = _base(helix_setup)
    warm = WarmStart(placement, tuple(cluster.node_names), move_weight=0.0)
    result = plan(cluster, model, PlannerOptions(time_limit_s=3, warm_start=warm), capacity)
    assert result.placement == placement
    assert result.details["moved_layers"] == 0


def test_lost_node_replan_is_valid_and_moves_fewer_layers_than_scratch(helix_setup):
    cluster, model, capacity, placement = _base(helix_setup)
    lost = max(placement, key=lambda n: placement[n].num_layers)
    live = restrict(cluster, [n for n in cluster.node_names if n != lost])
    warm = WarmStart(placement, tuple(cluster.node_names), move_weight=1e-3)
    result = plan(live, model, PlannerOptions(time_limit_s=3, warm_start=warm), capacity)
    scratch = plan(live, model, PlannerOptions(time_limit_s=3), capacity)
    assert lost not in result.placement
    assert result.placement.uncovered_layers(model.num_layers) == []
    flow = evaluate_placement(live, model, result.placement, capacity).value_tokens_per_s
    assert flow == pytest.approx(result.flow_tokens_per_s)
    assert flow > 0
    assert result.details["moved_layers"] == moved_layers(placement, result.placement)
    # the score it maximises is at least the from-scratch plan's score
    ref = max(c["flow_tokens_per_s"] for c in result.details["candidates"].values())
    score = flow - 1e-3 * ref * result.details["moved_layers"]
    scratch_score = scratch.flow_tokens_per_s - 1e-3 * ref * moved_layers(placement, scratch.placement)
    assert score >= scratch_score - 1e-6
    assert result.details["moved_layers"] <= moved_layers(placement, scratch.placement)


def test_a_large_weight_trades_flow_for_fewer_moves(helix_setup):
    cluster, model, capacity, placement = _base(helix_setup)
    lost = sorted(placement)[0]
    live = restrict(cluster, [n for n in cluster.node_names if n != lost])
    moves = {}
    for weight in (0.0, 0.05):
        warm = WarmStart(placement, tuple(cluster.node_names), move_weight=weight)
        moves[weight] = plan(live, model, PlannerOptions(time_limit_s=3, warm_start=warm), capacity)
    assert moves[0.05].details["moved_layers"] <= moves[0.0].details["moved_layers"]
    assert moves[0.05].flow_tokens_per_s <= moves[0.0].flow_tokens_per_s + 1e-6


def test_joined_node_can_be_planned_in(helix_setup):
    cluster, model, capacity = helix_setup("cluster10")
    spare = cluster.node_names[-1]
    small = restrict(cluster, [n for n in cluster.node_names if n != spare])
    placement = plan(small, model, PlannerOptions(time_limit_s=3), capacity).placement
    warm = WarmStart(placement, tuple(small.node_names), move_weight=0.0)
    result = plan(cluster, model, PlannerOptions(time_limit_s=3, warm_start=warm), capacity)
    before = evaluate_placement(cluster, model, placement, capacity).value_tokens_per_s
    assert result.flow_tokens_per_s >= before - 1e-6


def test_negative_weight_is_rejected():
    with pytest.raises(HelixInputError, match="move_weight"):
        WarmStart(Placement(), move_weight=-1)


def test_restrict_rejects_unknown_nodes(helix_setup):
    cluster, _, _ = helix_setup("cluster10")
    with pytest.raises(HelixInputError, match="unknown node"):
        restrict(cluster, ["nope"])


def test_trim_sweep_drops_newly_loaded_layers_that_buy_no_flow(helix_setup):
    """A node given one more new layer than it needs (its neighbour already holds it) is trimmed back;
    a node whose new range carries flow is kept."""
    from helix.flow.graph import FlowOptions
    from helix.placement.warm_start import _Scorer, trim_sweep

    cluster, model, capacity, placement = _base(helix_setup)
    scorer = _Scorer(cluster, model, capacity, FlowOptions(), placement, 1e-3)
    scorer.reference = scorer.flow(placement)
    # grow one node's range by a layer it does not hold: a move that buys nothing
    node, r = next((n, r) for n, r in sorted(placement.items()) if r.end < model.num_layers)
    grown = Placement({**placement.ranges, node: type(r)(r.start, r.end + 1)})
    assert moved_layers(placement, grown) == 1
    trimmed, score = trim_sweep(grown, scorer, model.num_layers, deadline=float("inf"))
    assert moved_layers(placement, trimmed) == 0
    assert score == pytest.approx(scorer.score(placement))
    # from the old placement there is nothing to trim
    same, same_score = trim_sweep(placement, scorer, model.num_layers, deadline=float("inf"))
    assert same == placement and same_score == pytest.approx(scorer.score(placement))


def test_trim_sweep_leaves_one_layer_ranges_whole(helix_setup):
    from helix.flow.graph import FlowOptions
    from helix.placement.warm_start import _Scorer, trim_sweep

    cluster, model, capacity, placement = _base(helix_setup)
    scorer = _Scorer(cluster, model, capacity, FlowOptions(), placement, 1e-3)
    scorer.reference = scorer.flow(placement)
    node = sorted(placement)[0]
    one = Placement({**placement.ranges, node: type(placement[node])(3, 4)})  # a new 1-layer range
    trimmed, _ = trim_sweep(one, scorer, model.num_layers, deadline=float("inf"))
    assert all(r.num_layers >= 1 for r in trimmed.ranges.values())
