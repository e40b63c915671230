"""Hub chains: zone → one chain of hub nodes → zone, the outer zones as exact boundary MILPs whose
coordinator links are the slow crossing links; every placement reaches its target in the evaluator."""

from __future__ import annotations

from helix.flow.maxflow import evaluate_placement
from helix.placement.milp.hub_chain import crossing_problem, hub_applies, hub_chain
from helix.placement.milp.problem import build_problem
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import builtin_model, with_overrides

from .test_milp import TableCapacity

MODEL6 = with_overrides(builtin_model("llama-2-70b"), num_layers=6)
CAPS = TableCapacity({"A100-40GB": [100.0, 60.0], "T4": [50.0, 30.0]})


def three_regions(inter_gbps: float, regions: int = 3):
    """Two A100s in r0, two T4s in each other region; no region holds the 6 layers alone."""
    fast = {"bandwidth_gbps": 10, "latency_ms": 1}
    names = [f"r{r}" for r in range(regions)]
    nodes = [{"name": "a", "gpu": "A100-40GB", "region": "r0", "count": 2}]
    nodes += [{"name": f"t{r}", "gpu": "T4", "region": f"r{r}", "count": 2} for r in range(1, regions)]
    return cluster_from_dict(
        {
            "name": "three-regions",
            "regions": {n: fast for n in names},
            "inter_region": {"bandwidth_gbps": inter_gbps, "latency_ms": 50},
            "nodes": nodes,
        }
    )


def _link(cluster, model):
    def link(src: str, dst: str) -> float:
        found = cluster.link(src, dst)
        return 0.0 if found is None else found.bandwidth_bytes_per_s / model.activation_bytes_per_token

    return link


def test_hub_chain_reaches_its_target_over_slow_links():
    cluster = three_regions(0.004)  # 30.5 tokens/s per crossing link: each crossing binds
    problem = build_problem(cluster, MODEL6, CAPS)
    assert problem.zones == 3 and hub_applies(problem)
    link = _link(cluster, MODEL6)
    for target in (20.0, 30.0, 45.0, 58.0):  # above 30.5 the crossing needs both T4s in parallel
        placement = hub_chain(problem, target, link)
        assert placement is not None
        value = evaluate_placement(cluster, MODEL6, placement, CAPS).value_tokens_per_s
        assert value >= target - 1e-9
    # above 60 each A100 holds one layer, and two T4s cannot carry 61 on the four layers left
    assert hub_chain(problem, 61.0, link) is None


def test_crossing_links_become_coordinator_links():
    cluster = three_regions(0.004)
    problem = build_problem(cluster, MODEL6, CAPS)
    hub = problem.classes[0].nodes[0]
    sub = crossing_problem(problem, 1, 2, _link(cluster, MODEL6), entry=None, exit=hub)
    assert sub.zones == 1 and sub.num_layers == 2
    assert all(c.sink_cap[0] < 31.0 for c in sub.classes)


def test_hub_chains_skip_clusters_where_one_region_holds_the_model():
    assert not hub_applies(build_problem(three_regions(10.0), MODEL6, CAPS))  # one zone
    assert not hub_applies(build_problem(three_regions(0.004, regions=2), MODEL6, CAPS))  # two zones
