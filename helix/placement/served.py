"""Served-throughput estimate of a placement: what the max-flow scheduler with KV admission delivers.

Max flow counts tokens/s through compute and links; a serving system delivers fewer, and which placement
is best changes once the following are counted (this is the planner's default ``served`` objective).

Data: a placement with its evaluated max flow F, decomposed into coordinator → … → coordinator routes p
carrying f_p (the IWRR scheduler sends a request down route p with probability s_p = f_p / F); per node i
with k_i layers: KV capacity Q_i tokens of KV per layer, decode time per layer
t_i(b) at batch b, prompt time per layer P_i(n) for n tokens; links with latency and bandwidth; the
workload's mean prompt length I and output length O (the length distribution it is served with); the
admission policy: a request reserves E = I + r·O_e tokens per layer (r, O_e: the scheduler's expected
output ratio and length), a node admits while its expected use stays under h·C_i, and offline feeding
starts work while the expected-KV bottleneck max_l (used / capacity of the holders of layer l) ≤ w.

1. Requests in flight (KV-bound, the admission rule):
       N = min( w · min_l Σ_{i holds l} Q_i / E ,   min_i h · Q_i / (s_i · E) )       s_i = Σ_{p ∋ i} s_p
2. One decode iteration of route p (latency per token, depth enters here):
       T_p = Σ_{i ∈ p} k_i · t_i(N · s_i) / (1 − ρ_i)  +  Σ_{links of p} (latency + N·s·a / bandwidth)
   a = activation bytes per token; ρ_i = R · s_i · k_i · P_i(I) (the node's share of time in prompt passes at
   request rate R). T = Σ_p s_p T_p is the mean time per output token (TPOT).
3. Decode throughput by Little's law, a fixed point in R: each request spends (prompt latency + D·T) in
   flight, D = decode iterations per request (O, or O − 1 when the prompt pass yields the first token):
       R = N / (TTFT + D · T),   decode tokens/s = R · D,
   capped where a node's busy fraction (decode passes + prompt passes) would exceed 1.
   TTFT ≈ Σ_{i ∈ p} (k_i · P_i(I) + half a decode pass of waiting) + prompt activation transfers.

Deep pipelines lose on T (more passes and transfers per token), nodes with many layers lose on Q_i (KV for
few requests), and wide shallow pipelines lose on compute; max flow sees only the last. The estimate is
used to rank candidates; the planner then checks the best few in the simulator (`PlannerOptions.checker`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from helix.flow.maxflow import FlowResult
from helix.perf.base import AVG_OUTPUT_TOKENS, AVG_PROMPT_TOKENS, CapacityModel
from helix.specs.cluster import COORDINATOR, ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement


@dataclass(frozen=True, slots=True)
class ServingSetup:
    """The workload's length statistics and the scheduler's admission policy (module docstring).

    Defaults: Azure-conversation-like means (I = 750, O = 240) and the scheduler's offline admission
    (h = 0.85, r = 1.0, O_e = 240, feed high-water w = 0.8), one decode iteration per output token.
    """

    prompt_tokens: float = AVG_PROMPT_TOKENS
    output_tokens: float = AVG_OUTPUT_TOKENS
    expected_kv_hwm: float = 0.85
    expected_output_ratio: float = 1.0
    expected_output_tokens: float = 240.0
    feed_high_water: float = 0.8
    first_token_from_prompt: bool = False

    @property
    def reserved_tokens(self) -> float:
        return self.prompt_tokens + self.expected_output_ratio * self.expected_output_tokens

    @property
    def decode_iterations(self) -> float:
        return max(1.0, self.output_tokens - (1 if self.first_token_from_prompt else 0))


@dataclass(frozen=True, slots=True)
class ServedEstimate:
    """Expected serving of a placement (offline, KV-bound closed loop)."""

    decode_tokens_per_s: float
    requests_in_flight: float
    tpot_s: float
    ttft_s: float
    binding: str  # what limits it: "kv-feed", "kv-node <name>", "compute <name>"


def routes(flow: FlowResult) -> list[tuple[list[str], float]]:
    """Decompose the max flow into coordinator → … → coordinator routes (greedy widest-first on a DAG)."""
    out_edges: dict[str, dict[str, float]] = {}
    for (src, dst), value in flow.link_flows().items():
        if value > 1e-9:
            out_edges.setdefault(src, {})[dst] = value
    found: list[tuple[list[str], float]] = []
    for _ in range(100_000):
        path, node = [], COORDINATOR
        while True:
            nxt = max(out_edges.get(node, {}).items(), key=lambda kv: kv[1], default=None)
            if nxt is None or nxt[1] <= 1e-9:
                break
            node = nxt[0]
            if node == COORDINATOR or len(path) > 100_000:
                break
            path.append(node)
        if node != COORDINATOR or not path:
            break
        hops = [COORDINATOR, *path, COORDINATOR]
        f = min(out_edges[a][b] for a, b in zip(hops, hops[1:], strict=False))
        for a, b in zip(hops, hops[1:], strict=False):
            out_edges[a][b] -= f
        found.append((path, f))
    return found


@dataclass(frozen=True)
class _Node:
    gpu: str
    layers: int
    share: float
    kv_per_layer: float


def _nodes(placement, flow, paths, cluster, capacity) -> dict[str, _Node]:
    total = sum(f for _, f in paths) or 1.0
    share: dict[str, float] = {}
    for path, f in paths:
        for n in path:
            share[n] = share.get(n, 0.0) + f / total
    out = {}
    for n, r in placement.items():
        gpu = cluster.node(n).gpu.name
        kv = float(capacity.kv_capacity_tokens(gpu, r.num_layers))
        out[n] = _Node(gpu, r.num_layers, share.get(n, 0.0), kv)
    return out


def _decode_time(capacity: CapacityModel, gpu: str, batch: int) -> float:
    """Per-layer decode time at `batch`; past a profiled range, extended along the slope between the
    largest batch within it and half that batch."""
    size = batch
    while size >= 2:
        try:
            at = capacity.decode_layer_time_s(gpu, size)
        except ValueError:
            size //= 2
            continue
        if size == batch:
            return at
        half = capacity.decode_layer_time_s(gpu, size // 2)
        return at + (at - half) * (batch - size) / (size - size // 2)
    return capacity.decode_layer_time_s(gpu, 1)


def kv_limit(placement: Placement, nodes: dict[str, _Node], num_layers: int, setup: ServingSetup):
    """(N, binding): requests in flight allowed by the feed rule and per-node admission."""
    e = setup.reserved_tokens
    per_layer = [0.0] * num_layers
    for name, r in placement.items():
        for layer in range(r.start, r.end):
            per_layer[layer] += nodes[name].kv_per_layer
    best, binding = setup.feed_high_water * min(per_layer) / e, "kv-feed"
    for name, node in nodes.items():
        if node.share > 1e-9:
            limit = setup.expected_kv_hwm * node.kv_per_layer / (node.share * e)
            if limit < best:
                best, binding = limit, f"kv-node {name}"
    return best, binding


def estimate_served(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    placement: Placement,
    flow: FlowResult,
    setup: ServingSetup = ServingSetup(),
) -> ServedEstimate:
    """The module docstring's estimate for `placement` with evaluated max flow `flow`."""
    paths = routes(flow)
    if not paths:
        return ServedEstimate(0.0, 0.0, float("inf"), float("inf"), "no flow")
    nodes = _nodes(placement, flow, paths, cluster, capacity)
    n_flight, binding = kv_limit(placement, nodes, model.num_layers, setup)
    names = [n for n, node in nodes.items() if node.share > 0]
    index = {n: j for j, n in enumerate(names)}
    share = np.array([nodes[n].share for n in names])
    decode_pass = np.array(
        [
            nodes[n].layers * _decode_time(capacity, nodes[n].gpu, max(1, round(n_flight * nodes[n].share)))
            for n in names
        ]
    )
    prompt = setup.prompt_tokens
    prompt_pass = np.array(
        [nodes[n].layers * capacity.prompt_layer_time_s(nodes[n].gpu, max(1, round(prompt))) for n in names]
    )
    total = sum(f for _, f in paths)
    weights = np.array([f / total for _, f in paths])
    incidence = np.zeros((len(paths), len(names)))
    link_decode, link_prompt = np.zeros(len(paths)), np.zeros(len(paths))
    act_bytes = model.hidden_size * model.dtype_bytes
    for r, (path, f) in enumerate(paths):
        incidence[r, [index[n] for n in path]] = 1.0
        hops = [COORDINATOR, *path, COORDINATOR]
        for a, b in zip(hops, hops[1:], strict=False):
            link = cluster.link(a, b)
            if link is not None:
                link_decode[r] += (
                    link.latency_s + n_flight * f / total * act_bytes / link.bandwidth_bytes_per_s
                )
                link_prompt[r] += link.latency_s + prompt * act_bytes / link.bandwidth_bytes_per_s
    ttft = float(weights @ (incidence @ (prompt_pass + 0.5 * decode_pass) + link_prompt))
    rate, tpot = 0.0, 0.0
    for _ in range(30):  # fixed point in the request rate R
        rho = np.minimum(0.95, rate * share * prompt_pass)
        tpot = float(weights @ (incidence @ (decode_pass / (1 - rho)) + link_decode))
        new_rate = n_flight / (ttft + setup.decode_iterations * tpot)
        rate = 0.5 * rate + 0.5 * new_rate if rate > 0 else new_rate
    spare = np.maximum(0.0, 1.0 - np.minimum(1.0, decode_pass / tpot))
    caps = spare / np.maximum(share * prompt_pass, 1e-12)
    worst = int(np.argmin(caps))
    if caps[worst] < rate:
        rate, binding = float(caps[worst]), f"compute {names[worst]}"
    return ServedEstimate(rate * setup.decode_iterations, n_flight, tpot, ttft, binding)
