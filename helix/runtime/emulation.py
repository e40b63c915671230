"""Emulating a mixed GPU cluster on one machine: how long each worker's step should take.

Two modes, both padding a worker's step by sleeping after it:

- **relative** (the default): a node of GPU type g has capacity tp(g, k) tokens/s in the capacity model
  when it holds k layers; its worker pads every step to ``slowdown = max_j tp(g_j, k) / tp(g, k)`` times
  its measured compute time (the fastest type runs at the host's own speed), with k the median range
  length of the deployment's first plan (`reference_layers`), so a node's factor is a property of its
  GPU type that a re-plan does not change. Works with any capacity model
  (the roofline included), but CPU contention stretches every node's steps alike.
- **profile**: the cluster names profile tables (``profiles:`` in its file) whose times are reachable on
  this host (e.g. this CPU's own `helix profile` tables scaled per GPU type); each worker pads every step
  to the time those tables give for its batch,

      T(step) = k · [ P_g(prompt tokens) + D_g(decode sequences) ]

  (P, D: per-layer prompt / decode times of the node's GPU type g), exactly the pass time the simulator
  uses (`helix.sim.node`, less its sub-millisecond copy term). Node speeds are then deterministic as long
  as the host computes each step within its target; steps that overrun are counted (`overrun_steps`).
"""

from __future__ import annotations

from dataclasses import dataclass

from helix.errors import HelixInputError
from helix.perf.base import CapacityModel, Curve
from helix.perf.roofline import RooflineCapacityModel
from helix.specs.cluster import ClusterSpec
from helix.specs.gpu import default_catalog
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement

EMULATION_MODES = ("relative", "profile")


def capacity_model(cluster: ClusterSpec, model: ModelSpec) -> CapacityModel:
    """The cluster's capacity model (its profile tables if it names some, else the roofline over the
    built-in catalogue plus the cluster's own GPU types)."""
    if cluster.profiles_dir:
        from helix.perf.factory import capacity_model_for

        return capacity_model_for(cluster, model)
    catalog = default_catalog().with_types(list({n.gpu.name: n.gpu for n in cluster.nodes}.values()))
    return RooflineCapacityModel(model, cluster.composition(), catalog=catalog)


def reference_layers(placement: Placement) -> int:
    """The layer count the relative mode compares GPU types at: the median range length of `placement`
    (the deployment's first plan), so the factors do not change when a re-plan changes the ranges."""
    counts = sorted(r.num_layers for _, r in placement.items())
    return counts[(len(counts) - 1) // 2]


def type_slowdowns(cluster: ClusterSpec, capacity: CapacityModel, layers: int) -> dict[str, float]:
    """GPU type → slowdown factor ≥ 1 of the relative mode: ``max_j tp(g_j, k) / tp(g, k)`` at k =
    `layers` (or the most a type holds, if fewer), over the cluster's types (see the module docstring).

    A property of the hardware, fixed for a deployment: a node keeps its factor when a re-plan gives it
    another range. Evaluating the ratio at each node's own range instead lets a capacity model's
    batch-size effects at some range lengths (a type whose typical batch jumps at few layers) turn
    into a factor several times the type's real speed ratio."""
    types = sorted({n.gpu.name for n in cluster.nodes})
    out: dict[str, float] = {}
    for gpu in types:
        k = min(layers, capacity.max_layers(gpu))
        best = max(capacity.throughput_tokens_per_s(g, k) for g in types if capacity.max_layers(g) >= k)
        own = capacity.throughput_tokens_per_s(gpu, k)
        out[gpu] = max(1.0, best / own) if own > 0 else 1.0
    return out


def slowdowns(
    cluster: ClusterSpec, capacity: CapacityModel, placement: Placement, layers: int | None = None
) -> dict[str, float]:
    """Node → slowdown factor ≥ 1 of the relative mode: its GPU type's `type_slowdowns` at `layers`
    (default: `reference_layers(placement)`)."""
    by_type = type_slowdowns(cluster, capacity, layers or reference_layers(placement))
    return {name: by_type[cluster.node(name).gpu.name] for name in placement}


def _clamped(curve: Curve, x: float) -> float:
    """`curve(x)`, extending its last segment linearly beyond the profiled range."""
    xs, ys = curve.xs, curve.ys
    if x <= xs[-1]:
        return curve(max(x, xs[0]))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (x - xs[-1])


@dataclass(frozen=True)
class StepTimer:
    """The target time of a step on one node (profile mode): ``k · [P(p) + D(d)]`` in seconds."""

    num_layers: int
    prompt_s: Curve
    decode_s: Curve

    def step_s(self, prompt_tokens: int, decode_seqs: int) -> float:
        per_layer = _clamped(self.prompt_s, prompt_tokens) if prompt_tokens else 0.0
        if decode_seqs:
            per_layer += _clamped(self.decode_s, decode_seqs)
        return self.num_layers * per_layer


def step_timers(cluster: ClusterSpec, capacity: CapacityModel, placement: Placement) -> dict[str, StepTimer]:
    """Node → `StepTimer` from the cluster's profile tables; they are required."""
    profile = getattr(capacity, "profile", None)
    if profile is None:
        raise HelixInputError(
            "profile emulation needs profile tables for the cluster's GPU types",
            where=cluster.name,
            field="profiles",
            fix="add `profiles: DIR` (written by `helix profile`) to the cluster file, "
            "or use the relative emulation",
        )
    out = {}
    for name, r in placement.items():
        table = profile(cluster.node(name).gpu.name)
        out[name] = StepTimer(r.num_layers, table.prompt_time_s, table.decode_time_s)
    return out
