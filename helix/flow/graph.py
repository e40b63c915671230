"""The flow graph of a placement (placement.md §2.2).

Vertices: the coordinator's send side `SOURCE`, its receive side `SINK`, and for each used node an inflow
vertex ``<name>:in`` and an outflow vertex ``<name>:out``. Edges (capacities in tokens/s):

- ``SOURCE → i:in`` if the coordinator links to i and i starts at layer 0: bandwidth / token bytes;
- ``i:in → i:out``: the node's capacity min(tp(type, k), NIC / activation bytes per token);
- ``i:out → j:in`` if i links to j and the ranges chain: e_i = s_j (strict), or s_j ≤ e_i < e_j with
  partial overlap allowed (j skips the layers it holds before e_i): bandwidth / activation bytes;
- ``i:out → SINK`` if i links to the coordinator and i ends at layer L: bandwidth / token bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from helix.errors import HelixInputError
from helix.perf.base import CapacityModel
from helix.specs.cluster import COORDINATOR, ClusterSpec, NodeSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

SOURCE = "source"
SINK = "sink"
#: The one default of the chaining rule (`chains`) for every consumer: flow graphs, the scheduler's
#: topology, the simulator, plans. Strict: a hop starts exactly where the previous one ended.
DEFAULT_PARTIAL_OVERLAP = False


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """How the graph is built. `partial_overlap`: allow s_j ≤ e_i < e_j links (a node skips layers)."""

    partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP


@dataclass(frozen=True, slots=True)
class FlowEdge:
    """A directed edge. `kind` is ``coordinator_in``, ``node``, ``link`` or ``coordinator_out``;
    `src_node`/`dst_node` are the cluster-level endpoints (node names or the coordinator)."""

    tail: str
    head: str
    capacity_tokens_per_s: float
    kind: str
    src_node: str
    dst_node: str


@dataclass(frozen=True)
class FlowGraph:
    edges: tuple[FlowEdge, ...]

    @property
    def vertices(self) -> list[str]:
        seen: dict[str, None] = {SOURCE: None, SINK: None}
        for edge in self.edges:
            seen.setdefault(edge.tail)
            seen.setdefault(edge.head)
        return list(seen)


def in_vertex(node: str) -> str:
    return f"{node}:in"


def out_vertex(node: str) -> str:
    return f"{node}:out"


def node_capacity_tokens_per_s(
    node: NodeSpec, num_layers: int, model: ModelSpec, capacity: CapacityModel
) -> float:
    """cap(i, k) = min(tp(type_i, k), NIC / activation bytes per token)."""
    max_layers = capacity.max_layers(node.gpu.name)
    if num_layers > max_layers:
        raise HelixInputError(
            f"holds {num_layers} layers but a {node.gpu.name} can hold at most {max_layers}",
            field=f"placement.{node.name}",
            fix=f"give {node.name} at most {max_layers} layers",
        )
    compute = capacity.throughput_tokens_per_s(node.gpu.name, num_layers)
    return min(compute, node.nic_bytes_per_s / model.activation_bytes_per_token)


def chains(a: LayerRange, b: LayerRange, partial_overlap: bool) -> bool:
    """Can a token leave a node holding `a` and continue on a node holding `b`? The one chaining rule:
    strict ``e_a = s_b``, or with partial overlap ``s_b <= e_a < e_b`` (b skips the layers before e_a)."""
    if partial_overlap:
        return b.start <= a.end < b.end
    return a.end == b.start


def build_flow_graph(
    cluster: ClusterSpec,
    model: ModelSpec,
    placement: Placement,
    capacity: CapacityModel,
    options: FlowOptions = FlowOptions(),
) -> FlowGraph:
    """The flow graph of `placement` on `cluster` (see the module docstring)."""
    for name, layer_range in placement.items():
        if name not in cluster.node_by_name:
            raise HelixInputError(
                f"unknown node {name!r}",
                field="placement",
                fix="the plan must match the cluster's node names",
            )
        if layer_range.end > model.num_layers:
            raise HelixInputError(
                f"range {layer_range} ends past layer {model.num_layers}",
                field=f"placement.{name}",
                fix="the plan must match the model",
            )
    edges: list[FlowEdge] = []
    used = [(cluster.node(name), r) for name, r in placement.items()]
    for node, r in used:
        cap = node_capacity_tokens_per_s(node, r.num_layers, model, capacity)
        edges.append(FlowEdge(in_vertex(node.name), out_vertex(node.name), cap, "node", node.name, node.name))
        link = cluster.link(COORDINATOR, node.name)
        if link is not None and r.start == 0:
            edges.append(
                FlowEdge(
                    SOURCE,
                    in_vertex(node.name),
                    link.bandwidth_bytes_per_s / model.token_bytes,
                    "coordinator_in",
                    COORDINATOR,
                    node.name,
                )
            )
        link = cluster.link(node.name, COORDINATOR)
        if link is not None and r.end == model.num_layers:
            edges.append(
                FlowEdge(
                    out_vertex(node.name),
                    SINK,
                    link.bandwidth_bytes_per_s / model.token_bytes,
                    "coordinator_out",
                    node.name,
                    COORDINATOR,
                )
            )
    for a, ra in used:
        for b, rb in used:
            if a.name == b.name or not chains(ra, rb, options.partial_overlap):
                continue
            link = cluster.link(a.name, b.name)
            if link is not None:
                edges.append(
                    FlowEdge(
                        out_vertex(a.name),
                        in_vertex(b.name),
                        link.bandwidth_bytes_per_s / model.activation_bytes_per_token,
                        "link",
                        a.name,
                        b.name,
                    )
                )
    return FlowGraph(tuple(edges))
