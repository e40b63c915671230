"""Emulating a mixed GPU cluster on one machine: each worker's speed relative to the fastest node.

A node of GPU type g holding k layers has capacity tp(g, k) tokens/s in the capacity model. With
emulation on, its worker pads every step to ``slowdown = max_j tp(g_j, k) / tp(g, k)`` times its measured
compute time (the fastest type runs at the host's own speed), so routing and throughput on a laptop
follow the planned cluster's relative speeds.
"""

from __future__ import annotations

from helix.perf.base import CapacityModel
from helix.perf.roofline import RooflineCapacityModel
from helix.specs.cluster import ClusterSpec
from helix.specs.gpu import default_catalog
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement


def capacity_model(cluster: ClusterSpec, model: ModelSpec) -> CapacityModel:
    """The cluster's capacity model (its profile tables if it names some, else the roofline over the
    built-in catalogue plus the cluster's own GPU types)."""
    if cluster.profiles_dir:
        from helix.perf.factory import capacity_model_for

        return capacity_model_for(cluster, model)
    catalog = default_catalog().with_types(list({n.gpu.name: n.gpu for n in cluster.nodes}.values()))
    return RooflineCapacityModel(model, cluster.composition(), catalog=catalog)


def slowdowns(cluster: ClusterSpec, capacity: CapacityModel, placement: Placement) -> dict[str, float]:
    """Node → slowdown factor ≥ 1 (see the module docstring)."""
    out: dict[str, float] = {}
    types = {n.gpu.name for n in cluster.nodes}
    for name, r in placement.items():
        k = r.num_layers
        best = max(capacity.throughput_tokens_per_s(g, k) for g in types if capacity.max_layers(g) >= k)
        own = capacity.throughput_tokens_per_s(cluster.node(name).gpu.name, k)
        out[name] = best / own if own > 0 else 1.0
    return out
