"""Served-throughput estimate of a placement: what the max-flow scheduler with KV admission delivers.

Max flow counts tokens/s through compute and links; a serving system delivers fewer, and which placement
is best changes once the following are counted (this is the planner's default ``served`` objective).

Data: a placement with its evaluated max flow F. The IWRR scheduler sends a request through node i with
probability s_i = (flow through i) / F and over link l with probability s_l = (flow on l) / F. Per node i
with k_i layers: KV capacity Q_i tokens of KV per layer, decode time per layer t_i(b) at batch b, prompt
time per layer P_i(n) for n tokens. Per link: latency, and the time to send one token's bytes b_l
(activations between nodes, a token id on coordinator links): S_d = b_l / bandwidth per decode token and
S_p = I · S_d per prompt. The workload's mean prompt length I and output length O (the length distribution
it is served with); the admission policy: a request reserves E = I + r·O_e tokens per layer (r, O_e: the
scheduler's expected output ratio and length), a node admits while its expected use stays under h·C_i,
and offline feeding starts work while the expected-KV bottleneck max_l (used / capacity of the holders of
layer l) ≤ w.

1. Requests in flight (KV-bound, the admission rule):
       N = min( w · min_l Σ_{i holds l} Q_i / E ,   min_i h · Q_i / (s_i · E) )
2. Links are FIFO queues: at request rate R, link l is busy u_l = R · s_l · (S_p + D · S_d) of the time,
   and a transfer waits behind the ones in progress W_l = R · s_l · (S_p² + D · S_d²) / (2 (1 − u_l))
   (the M/G/1 residual): on a slow link one prompt's activations take seconds (750 tokens × 16 KiB over
   12.5 Mbps ≈ 8 s), and every decode token behind it waits.
3. Time per output token (TPOT), the mean over requests of one decode iteration of their route:
       T = Σ_i s_i · k_i · t_i(N · s_i) / (1 − ρ_i)  +  Σ_l s_l · (latency + W_l + (N · s_l + 1) · S_d / 2)
   ρ_i = R · s_i · k_i · P_i(I) (the node's share of time in prompt passes); the last term is a decode
   batch's tokens leaving together (half go first). TTFT = Σ_i s_i (k_i P_i(I) + half a decode pass) /
   (1 − ρ_i) + Σ_l s_l (latency + W_l + S_p).
4. Decode throughput by Little's law, a fixed point in R: each request spends (TTFT + D·T) in flight,
   D = decode iterations per request (O, or O − 1 when the prompt pass yields the first token):
       R = N / (TTFT + D · T),   decode tokens/s = R · D,
   capped where a node's busy fraction (decode passes + prompt passes) or a link's u_l would exceed 1.

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
    `prompt_tokens_in_flight` is the mean prompt of the requests in flight, which a request is among for
    a time ∝ its output length: E[I·O] / E[O] (None: no correlation, I). KV is reserved per request in
    flight, so step 1 uses it; per-request costs use I.
    """

    prompt_tokens: float = AVG_PROMPT_TOKENS
    prompt_tokens_in_flight: float | None = None
    output_tokens: float = AVG_OUTPUT_TOKENS
    expected_kv_hwm: float = 0.85
    expected_output_ratio: float = 1.0
    expected_output_tokens: float = 240.0
    feed_high_water: float = 0.8
    first_token_from_prompt: bool = False

    @property
    def reserved_tokens(self) -> float:
        prompt = self.prompt_tokens if self.prompt_tokens_in_flight is None else self.prompt_tokens_in_flight
        return prompt + self.expected_output_ratio * self.expected_output_tokens

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


def _nodes(placement, flow, cluster, capacity) -> dict[str, _Node]:
    """Each placed node with its share of requests s_i = its inflow / the max flow."""
    total = flow.value_tokens_per_s
    share = {n: f / total for n, f in flow.node_inflow.items() if f > 1e-9 * total}
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


@dataclass(frozen=True, slots=True)
class _Links:
    """The links a max flow uses: share of requests crossing each (s_l), transfer time per token in
    decode (S_d) and per prompt (S_p), latency."""

    share: np.ndarray
    decode_s: np.ndarray
    prompt_s: np.ndarray
    latency_s: np.ndarray

    def utilisation(self, rate: float, decodes: float) -> np.ndarray:
        """Busy fraction of each link at request rate `rate`: u_l = R·s_l·(S_p + D·S_d)."""
        return rate * self.share * (self.prompt_s + decodes * self.decode_s)

    def wait_s(self, rate: float, decodes: float) -> np.ndarray:
        """Mean FIFO wait of a transfer behind the ones in progress (M/G/1 residual): decode tokens
        queue behind prompt activations, which on a slow link take seconds each."""
        second_moment = rate * self.share * (self.prompt_s**2 + decodes * self.decode_s**2)
        return second_moment / (2.0 * (1.0 - np.minimum(0.95, self.utilisation(rate, decodes))))


def _links(cluster: ClusterSpec, model: ModelSpec, flow: FlowResult, prompt: float) -> _Links:
    total = flow.value_tokens_per_s
    rows = []
    for (a, b), value in flow.link_flows().items():
        link = cluster.link(a, b)
        if link is None:
            continue
        per_token = model.token_bytes + (0 if COORDINATOR in (a, b) else model.activation_bytes_per_token)
        token_s = per_token / link.bandwidth_bytes_per_s
        rows.append((value / total, token_s, prompt * token_s, link.latency_s))
    cols = np.array(rows, dtype=float).reshape(-1, 4).T
    return _Links(*cols)


def estimate_served(
    cluster: ClusterSpec,
    model: ModelSpec,
    capacity: CapacityModel,
    placement: Placement,
    flow: FlowResult,
    setup: ServingSetup = ServingSetup(),
) -> ServedEstimate:
    """The module docstring's estimate for `placement` with evaluated max flow `flow`."""
    total = flow.value_tokens_per_s
    if total <= 0:
        return ServedEstimate(0.0, 0.0, float("inf"), float("inf"), "no flow")
    nodes = _nodes(placement, flow, cluster, capacity)
    n_flight, binding = kv_limit(placement, nodes, model.num_layers, setup)
    names = [n for n, node in nodes.items() if node.share > 0]
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
    links = _links(cluster, model, flow, prompt)
    # a decode pass sends its batch's tokens down a link together: on average half of them go first
    batch_s = 0.5 * (n_flight * links.share + 1.0) * links.decode_s
    decodes = setup.decode_iterations
    rate, tpot, ttft = 0.0, 0.0, 0.0
    for _ in range(40):  # fixed point in the request rate R
        rho = np.minimum(0.95, rate * share * prompt_pass)
        wait = links.wait_s(rate, decodes)
        tpot = float(share @ (decode_pass / (1 - rho)) + links.share @ (links.latency_s + batch_s + wait))
        ttft = float(
            share @ ((prompt_pass + 0.5 * decode_pass) / (1 - rho))
            + links.share @ (links.latency_s + links.prompt_s + wait)
        )
        new_rate = n_flight / (ttft + decodes * tpot)
        rate = 0.5 * rate + 0.5 * new_rate if rate > 0 else new_rate
    spare = np.maximum(0.0, 1.0 - np.minimum(1.0, decode_pass / tpot))
    caps = spare / np.maximum(share * prompt_pass, 1e-12)
    worst = int(np.argmin(caps))
    if caps[worst] < rate:
        rate, binding = float(caps[worst]), f"compute {names[worst]}"
    link_cap = 1.0 / np.maximum(links.utilisation(1.0, decodes), 1e-12)
    if len(link_cap) and link_cap.min() < rate:
        rate, binding = float(link_cap.min()), "link"
    return ServedEstimate(rate * decodes, n_flight, tpot, ttft, binding)
