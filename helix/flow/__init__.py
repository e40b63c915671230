"""Flow graphs of placements and their max flow (tokens/s from the coordinator back to it)."""

from helix.flow.graph import FlowEdge, FlowGraph, FlowOptions, build_flow_graph, node_capacity_tokens_per_s
from helix.flow.maxflow import FlowResult, compute_upper_bound, evaluate_placement, solve_max_flow

__all__ = [
    "FlowEdge",
    "FlowGraph",
    "FlowOptions",
    "FlowResult",
    "build_flow_graph",
    "compute_upper_bound",
    "evaluate_placement",
    "node_capacity_tokens_per_s",
    "solve_max_flow",
]
