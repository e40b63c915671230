"""`helix.placement.milp.problem`: which layer boundaries chains of linked nodes can reach, against a
direct search over (node, end boundary) states on random sparse clusters."""

from __future__ import annotations

import random

from helix.placement.milp.problem import _reachable_boundaries, build_problem
from helix.specs.cluster import COORDINATOR, ClusterSpec, LinkSpec
from helix.specs.model import builtin_model
from tests.scheduling.conftest import FlatCapacity, make_cluster

GPUS = ["A100", "L4", "T4", "V100"]
MAX_LAYERS = {"A100": 30, "L4": 17, "T4": 9, "V100": 13}


class _Limited(FlatCapacity):
    def max_layers(self, gpu: str) -> int:
        return next(k for g, k in MAX_LAYERS.items() if gpu.startswith(g))


def _direct(cluster: ClusterSpec, max_k: dict[str, int], num_layers: int) -> set[int]:
    """Every (node, end) state a chain reaches, expanded one hand-over at a time."""
    starts = [n for n in max_k if cluster.link(COORDINATOR, n) is not None]
    seen = {(n, e) for n in starts for e in range(1, min(max_k[n], num_layers) + 1)}
    frontier = set(seen)
    while frontier:
        nxt = set()
        for node, end in frontier:
            for other in max_k:
                if other == node or cluster.link(node, other) is None:
                    continue
                for e in range(end + 1, min(num_layers, end + max_k[other]) + 1):
                    if (other, e) not in seen:
                        seen.add((other, e))
                        nxt.add((other, e))
        frontier = nxt
    ends = {e for _, e in seen}
    if not any(e == num_layers and cluster.link(n, COORDINATOR) is not None for n, e in seen):
        ends.discard(num_layers)
    return ends | {0}


def _check(seed: int) -> bool:
    """One random sparse cluster: the two searches agree; whether the chains cover the whole model."""
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(rng.randint(2, 7))]
    full = make_cluster(names, [rng.choice(GPUS) for _ in names])
    keep = rng.uniform(0.2, 0.7)
    required = {(COORDINATOR, names[0]), (names[-1], COORDINATOR)}  # a valid cluster has both ways
    links = tuple(
        LinkSpec(link.src, link.dst, 1e12, 0.0)
        for link in full.links
        if (link.src, link.dst) in required or rng.random() < keep
    )
    cluster = ClusterSpec("sparse", full.nodes, links, coordinator_nic_bytes_per_s=1e13)
    model = builtin_model("llama-2-70b")
    problem = build_problem(cluster, model, _Limited())
    max_k = {n: c.max_layers for c in problem.classes for n in c.nodes}
    reached = _reachable_boundaries(problem, cluster, model)
    assert reached == _direct(cluster, max_k, model.num_layers)
    return model.num_layers in reached


def test_reachable_boundaries_match_a_direct_search():
    covered = [_check(seed) for seed in range(40)]
    assert any(covered) and not all(covered)  # both kinds of cluster were checked
