"""Max flow of a flow graph with OR-tools' `SimpleMaxFlow` (push-relabel on int64 capacities).

Capacities in tokens/s are scaled by `SCALE` and floored to integers, so results are exact to 1/SCALE
tokens/s. The min cut found by the solver names the bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ortools.graph.python import max_flow as ortools_max_flow

from helix.flow.graph import SINK, SOURCE, FlowEdge, FlowGraph, FlowOptions, build_flow_graph
from helix.perf.base import CapacityModel
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement

SCALE = 1e6


@dataclass(frozen=True)
class FlowResult:
    """A max flow.

    Attributes:
        value_tokens_per_s: the max flow.
        edge_flows: flow on every edge, keyed by (src_node, dst_node, kind) — cluster-level names.
        node_inflow: tokens/s through each used node.
        bottleneck: the saturated edges of a minimum cut.
    """

    value_tokens_per_s: float
    edge_flows: dict[tuple[str, str, str], float] = field(default_factory=dict)
    node_inflow: dict[str, float] = field(default_factory=dict)
    bottleneck: tuple[FlowEdge, ...] = ()

    def link_flows(self) -> dict[tuple[str, str], float]:
        """Flow on each cluster-level hop (node→node and coordinator links), positive only."""
        return {(s, d): f for (s, d, kind), f in self.edge_flows.items() if kind != "node" and f > 0}

    def describe_bottleneck(self) -> list[str]:
        out = []
        for edge in self.bottleneck:
            if edge.kind == "node":
                out.append(f"node {edge.src_node} compute ({edge.capacity_tokens_per_s:.1f} tok/s)")
            else:
                out.append(f"link {edge.src_node}->{edge.dst_node} ({edge.capacity_tokens_per_s:.1f} tok/s)")
        return out


def solve_max_flow(graph: FlowGraph) -> FlowResult:
    """Max flow from `SOURCE` to `SINK` of `graph`."""
    vertices = graph.vertices  # a property that walks every edge: read it once
    index = {v: i for i, v in enumerate(vertices)}
    solver = ortools_max_flow.SimpleMaxFlow()
    for edge in graph.edges:
        solver.add_arc_with_capacity(
            index[edge.tail], index[edge.head], int(edge.capacity_tokens_per_s * SCALE)
        )
    status = solver.solve(index[SOURCE], index[SINK])
    if status != solver.OPTIMAL:
        raise RuntimeError(f"max-flow solver failed with status {status}")
    flows: dict[tuple[str, str, str], float] = {}
    inflow: dict[str, float] = {}
    for arc, edge in enumerate(graph.edges):
        value = solver.flow(arc) / SCALE
        flows[(edge.src_node, edge.dst_node, edge.kind)] = value
        if edge.kind == "node":
            inflow[edge.src_node] = value
    source_side = {vertices[i] for i in solver.get_source_side_min_cut()}
    cut = tuple(e for e in graph.edges if e.tail in source_side and e.head not in source_side)
    return FlowResult(solver.optimal_flow() / SCALE, flows, inflow, cut)


def evaluate_placement(
    cluster: ClusterSpec,
    model: ModelSpec,
    placement: Placement,
    capacity: CapacityModel,
    options: FlowOptions = FlowOptions(),
) -> FlowResult:
    """The independent evaluator: build the flow graph of `placement` and solve its max flow."""
    return solve_max_flow(build_flow_graph(cluster, model, placement, capacity, options))


def compute_upper_bound(cluster: ClusterSpec, model: ModelSpec, capacity: CapacityModel) -> float:
    """UB = Σ_i max_k k·cap(i, k) / L: the flow if the network were free and every node fully used."""
    total = 0.0
    for node in cluster.nodes:
        nic_cap = node.nic_bytes_per_s / model.activation_bytes_per_token
        best = max(
            (k * min(tp, nic_cap) for k, tp in enumerate(capacity.throughput_table(node.gpu.name), start=1)),
            default=0.0,
        )
        total += best
    return total / model.num_layers
