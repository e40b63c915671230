"""What a scheduler knows about the placed cluster: who can hand a request to whom, with what flow.

`Topology.build` derives, from a cluster, model, placement and max flow:

- for the coordinator and every used node, its candidate next hops (a node whose range chains after the
  sender's end, or the coordinator when the sender ends at layer L), each with the max-flow value of that
  edge in tokens/s and the link's bandwidth;
- per node: its layer range, KV capacity in token×layer units C = kv_capacity_tokens(gpu, k)·k, and its
  batching limits (Helix's profile tables when the capacity model has them, otherwise defaults).

Chaining is the flow graph's rule, `helix.flow.graph.chains` (``e_u = s_v``, or with partial overlap
``s_v <= e_u < e_v``), with its one default `DEFAULT_PARTIAL_OVERLAP`.
"""

from __future__ import annotations

from dataclasses import dataclass

from helix.flow.graph import DEFAULT_PARTIAL_OVERLAP, FlowOptions, chains
from helix.flow.maxflow import FlowResult, evaluate_placement
from helix.perf.base import CapacityModel
from helix.specs.cluster import COORDINATOR, ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

MAX_PROMPT_TOKENS_PER_REQUEST = 2048  # Helix: prompt_max_tokens = prompt_max_requests · 2048
DECODE_CONTEXT_PER_SEQ = 1000  # Helix: decode_max_context = decode_max_tokens · 1000
DEFAULT_MAX_PROMPT_REQUESTS = 2
DEFAULT_MAX_DECODE_SEQS = 256


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Per-node capacities: KV (token×layer units) and per-layer batch limits."""

    kv_capacity_token_layers: int
    max_prompt_requests: int
    max_prompt_tokens: int
    max_decode_seqs: int
    max_decode_context_tokens: int


@dataclass(frozen=True, slots=True)
class NextHop:
    """A candidate next hop of a sender: `dst` (a node or COORDINATOR), its flow and link bandwidth."""

    dst: str
    flow_tokens_per_s: float
    bandwidth_bytes_per_s: float
    latency_s: float


def node_limits(capacity: CapacityModel, gpu: str, num_layers: int) -> NodeLimits:
    """Limits of a `gpu` node holding `num_layers` layers (profile tables where available)."""
    kv = capacity.kv_capacity_tokens(gpu, num_layers) * num_layers
    profile = getattr(capacity, "profile", None)
    prompt_requests, decode_seqs = DEFAULT_MAX_PROMPT_REQUESTS, DEFAULT_MAX_DECODE_SEQS
    if profile is not None:
        table = profile(gpu)
        if table.prompt_max_requests_by_layers:
            prompt_requests = table.prompt_max_requests_by_layers[num_layers - 1]
        if table.decode_max_tokens_by_layers:
            decode_seqs = table.decode_max_tokens_by_layers[num_layers - 1]
    return NodeLimits(
        kv,
        prompt_requests,
        prompt_requests * MAX_PROMPT_TOKENS_PER_REQUEST,
        decode_seqs,
        decode_seqs * DECODE_CONTEXT_PER_SEQ,
    )


@dataclass(frozen=True)
class Topology:
    """The scheduler's static view of a placed cluster (see the module docstring).

    Attributes:
        num_layers: L.
        ranges: node → held layer range (used nodes only).
        gpus: node → GPU type name.
        limits: node → NodeLimits.
        next_hops: sender (COORDINATOR or node) → candidate next hops, in a fixed order.
        max_flow_tokens_per_s: the max-flow value the edge flows come from.
        nic_bytes_per_s: node (and COORDINATOR) → NIC speed.
    """

    num_layers: int
    ranges: dict[str, LayerRange]
    gpus: dict[str, str]
    limits: dict[str, NodeLimits]
    next_hops: dict[str, tuple[NextHop, ...]]
    max_flow_tokens_per_s: float
    nic_bytes_per_s: dict[str, float]

    @classmethod
    def build(
        cls,
        cluster: ClusterSpec,
        model: ModelSpec,
        placement: Placement,
        capacity: CapacityModel,
        flow: FlowResult | None = None,
        *,
        partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP,
    ) -> Topology:
        if flow is None:
            flow = evaluate_placement(
                cluster, model, placement, capacity, FlowOptions(partial_overlap=partial_overlap)
            )
        ranges = dict(placement.items())
        flows = flow.edge_flows
        next_hops: dict[str, list[NextHop]] = {COORDINATOR: []}
        for name, r in ranges.items():
            hops: list[NextHop] = []
            for other, r2 in ranges.items():
                link = cluster.link(name, other)
                if other != name and link is not None and chains(r, r2, partial_overlap):
                    hops.append(
                        NextHop(
                            other,
                            flows.get((name, other, "link"), 0.0),
                            link.bandwidth_bytes_per_s,
                            link.latency_s,
                        )
                    )
            link = cluster.link(name, COORDINATOR)
            if link is not None and r.end == model.num_layers:
                hops.append(
                    NextHop(
                        COORDINATOR,
                        flows.get((name, COORDINATOR, "coordinator_out"), 0.0),
                        link.bandwidth_bytes_per_s,
                        link.latency_s,
                    )
                )
            next_hops[name] = hops
            link = cluster.link(COORDINATOR, name)
            if link is not None and r.start == 0:
                next_hops[COORDINATOR].append(
                    NextHop(
                        name,
                        flows.get((COORDINATOR, name, "coordinator_in"), 0.0),
                        link.bandwidth_bytes_per_s,
                        link.latency_s,
                    )
                )
        _prune(next_hops)
        ranges = {name: r for name, r in ranges.items() if name in next_hops}
        gpus = {name: cluster.node(name).gpu.name for name in ranges}
        limits = {name: node_limits(capacity, gpus[name], r.num_layers) for name, r in ranges.items()}
        nics = {name: cluster.node(name).nic_bytes_per_s for name in ranges}
        nics[COORDINATOR] = cluster.coordinator_nic_bytes_per_s
        return cls(
            model.num_layers,
            ranges,
            gpus,
            limits,
            {k: tuple(v) for k, v in next_hops.items()},
            flow.value_tokens_per_s,
            nics,
        )

    def in_degree(self, node: str) -> int:
        """Number of senders (the coordinator included) that may hand a request to `node`."""
        return sum(1 for hops in self.next_hops.values() for hop in hops if hop.dst == node)


def _prune(next_hops: dict[str, list[NextHop]]) -> None:
    """Drop nodes no request can pass through: unreachable from the coordinator or with no way back."""
    while True:
        reachable, frontier = {COORDINATOR}, [COORDINATOR]
        while frontier:
            for hop in next_hops.get(frontier.pop(), []):
                if hop.dst not in reachable:
                    reachable.add(hop.dst)
                    frontier.append(hop.dst)
        dead = {n for n, hops in next_hops.items() if n != COORDINATOR and (n not in reachable or not hops)}
        if not dead:
            return
        for name in dead:
            del next_hops[name]
        for name, hops in next_hops.items():
            next_hops[name] = [hop for hop in hops if hop.dst not in dead]
