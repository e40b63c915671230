"""Compute nodes: batched passes over the layers a node holds.

A node runs one *pass* at a time: it takes the requests that have arrived, forms a batch under the
per-layer limits (FIFO, skipping requests that do not fit, as Helix's execution policy does: at most
`max_prompt_requests` prompts and `max_prompt_tokens` prompt tokens; at most `max_decode_seqs` decode
sequences and `max_decode_context_tokens` of their context), and runs every layer of its range for it.
A request that skips the node's first layers (partial overlap) joins at its first layer. The pass time is

    Σ_{layers j} [ P(p_j) + D(d_j) ] + B/4e9 + B/5e9

with p_j / d_j the prompt tokens / decode sequences running layer j, P and D the capacity model's
per-layer prompt and decode times, and B the activation bytes received (Helix's first-layer
concatenation and host-to-device copy). Helix's quirk D(1) → 2·D(1) is optional. Helix cycles layer by
layer so a request waiting at an intermediate layer can join mid-pass; passes here start at the node's
first layer, and partial-overlap arrivals wait for the next pass (a departure, documented in
docs/simulator.md).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

from helix.scheduling.topology import NodeLimits

COPY_BYTES_PER_S = (4e9, 5e9)  # concatenation, CPU→GPU (serving.md §2.3)


class Query:
    """One request (query) in flight; it carries one iteration (the prompt or one decode) at a time."""

    __slots__ = (
        "qid",
        "prompt_tokens",
        "output_tokens",
        "num_decodes",
        "route",
        "layers",
        "links",
        "iteration",
        "hop",
        "issued_s",
        "arrived_s",
        "admitted_s",
        "first_token_s",
        "admission",
        "prefilling",
        "prefill_tokens",
        "resumed",
        "dead",
    )

    def __init__(
        self, qid: int, prompt_tokens: int, output_tokens: int, num_decodes: int, arrived_s: float
    ) -> None:
        self.qid = qid
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.num_decodes = num_decodes
        self.route: tuple[int, ...] = ()
        self.layers: tuple[int, ...] = ()
        self.links: tuple[int, ...] = ()
        self.iteration = 0  # 0 = prompt, j = j-th decode
        self.hop = 0
        self.issued_s = arrived_s
        self.arrived_s = arrived_s
        self.admitted_s = arrived_s
        self.first_token_s = math.nan
        self.admission = 0  # grows with every (re)admission: preemption victims are the newest
        self.prefilling = True  # this iteration is a (re-)prefill of `prefill_tokens` tokens
        self.prefill_tokens = prompt_tokens
        self.resumed = False  # re-prefill after a preemption or a lost node: yields a decode token
        self.dead = False  # preempted or re-routed: a fresh Query carries on, this object is ignored

    def resume(self, now_s: float) -> Query:
        """A fresh query that re-prefills prompt + the tokens generated so far (this one is marked dead)."""
        self.dead = True
        query = Query(self.qid, self.prompt_tokens, self.output_tokens, self.num_decodes, self.arrived_s)
        query.iteration = self.iteration
        query.prefill_tokens = self.prompt_tokens + self.iteration
        query.resumed = self.iteration > 0
        query.first_token_s = self.first_token_s
        query.issued_s = now_s
        return query


@dataclass
class NodeTiming:
    """Per-layer time functions of a node's GPU type (seconds)."""

    prompt_s: Callable[[float], float]
    decode_s: Callable[[float], float]
    double_single_decode: bool = False


class ComputeNode:
    """A node's queues, current pass and counters."""

    __slots__ = (
        "index",
        "name",
        "num_layers",
        "limits",
        "timing",
        "activation_bytes",
        "pending",
        "ready",
        "busy",
        "batch",
        "wake_at",
        "busy_s",
        "kv_used",
        "kv_capacity",
        "passes",
        "resident",
        "dead",
        "_seq",
    )

    def __init__(
        self,
        index: int,
        name: str,
        num_layers: int,
        limits: NodeLimits,
        timing: NodeTiming,
        activation_bytes: int,
    ) -> None:
        self.index = index
        self.name = name
        self.num_layers = num_layers
        self.limits = limits
        self.timing = timing
        self.activation_bytes = activation_bytes
        self.pending: list[tuple[float, int, Query]] = []  # (arrival_s, seq, query) heap
        self.ready: list[Query] = []
        self.busy = False
        self.batch: list[Query] = []
        self.wake_at = math.inf
        self.busy_s = 0.0
        self.kv_used = 0.0
        self.kv_capacity = float(limits.kv_capacity_token_layers)
        self.passes = 0
        self.resident: dict[Query, float] = {}  # KV each query holds here (token×layer units)
        self.dead = False
        self._seq = 0

    def push(self, arrival_s: float, query: Query) -> None:
        self._seq += 1
        heapq.heappush(self.pending, (arrival_s, self._seq, query))

    def collect(self, now_s: float) -> None:
        pending, ready = self.pending, self.ready
        while pending and pending[0][0] <= now_s:
            ready.append(heapq.heappop(pending)[2])

    def form_batch(self) -> list[Query]:
        """Take a batch from `ready` under the limits (FIFO, non-fitting requests stay queued)."""
        lim = self.limits
        num_prompts = prompt_tokens = num_decodes = context = 0
        batch: list[Query] = []
        rest: list[Query] = []
        for q in self.ready:
            if q.dead:
                continue
            if q.prefilling:
                if (
                    num_prompts < lim.max_prompt_requests
                    and prompt_tokens + q.prefill_tokens <= lim.max_prompt_tokens
                ):
                    num_prompts += 1
                    prompt_tokens += q.prefill_tokens
                    batch.append(q)
                else:
                    rest.append(q)
            else:
                ctx = q.prompt_tokens + q.iteration
                if num_decodes < lim.max_decode_seqs and context + ctx <= lim.max_decode_context_tokens:
                    num_decodes += 1
                    context += ctx
                    batch.append(q)
                else:
                    rest.append(q)
        self.ready = rest
        return batch

    def pass_time_s(self, batch: list[Query]) -> float:
        """Time to run `batch` through the node's layers (see the module docstring)."""
        k = self.num_layers
        prompt_tokens, decodes, partial = 0, 0, None
        for q in batch:
            m = q.layers[q.hop]
            tokens = q.prefill_tokens if q.prefilling else 0
            if m == k:
                if tokens:
                    prompt_tokens += tokens
                else:
                    decodes += 1
            else:
                partial = partial or []
                partial.append((m, tokens))
        received_bytes = (prompt_tokens + decodes) * self.activation_bytes
        if partial is None:
            return k * self._layer_s(prompt_tokens, decodes) + self._copy_s(received_bytes)
        total = 0.0
        partial.sort(reverse=True)
        i = 0
        for m in range(k, 0, -1):  # layers from the node's first (m = layers left to run)
            while i < len(partial) and partial[i][0] == m:
                tokens = partial[i][1]
                prompt_tokens, decodes = prompt_tokens + tokens, decodes + (0 if tokens else 1)
                received_bytes += max(tokens, 1) * self.activation_bytes
                i += 1
            total += self._layer_s(prompt_tokens, decodes)
        return total + self._copy_s(received_bytes)

    def _layer_s(self, prompt_tokens: int, decodes: int) -> float:
        t = self.timing
        time_s = t.prompt_s(prompt_tokens) if prompt_tokens else 0.0
        if decodes:
            time_s += t.decode_s(decodes) * (2.0 if decodes == 1 and t.double_single_decode else 1.0)
        return time_s

    @staticmethod
    def _copy_s(received_bytes: float) -> float:
        return received_bytes / COPY_BYTES_PER_S[0] + received_bytes / COPY_BYTES_PER_S[1]
