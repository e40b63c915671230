"""KV-cache expectation and admission (serving.md §1.4).

Per node i with layer range [s_i, e_i) and KV capacity C_i (token×layer units) the scheduler keeps the
expected available amount A_i (initially C_i). With parameters (h = expected_kv_hwm,
r = expected_output_length_ratio) a request with n prompt tokens is expected to use, per layer,

    E(n) = floor(n + r · O)        (O = the caller's expected output tokens, or 240 as in Helix)

- admission on node i (as if it ran all of i's layers): admit iff  A_i − E(n)·(e_i − s_i) ≥ (1 − h)·C_i;
- register when the route is final: A_i −= E(n)·(b − a) for every hop (i, [a, b));
- release when the request finishes or is cancelled: A_i += E(n)·(b − a);
- bottleneck usage: for each layer l, usage(l) = 1 − Σ_i A_i/k_i / Σ_i C_i/k_i over nodes holding l;
  the bottleneck is max_l usage(l). Offline feeding admits new work while it is under a high-water mark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from helix.scheduling.pipeline import Pipeline
from helix.specs.placement import LayerRange

HELIX_AVG_OUTPUT_TOKENS = 240


@dataclass(frozen=True, slots=True)
class KVParameters:
    """Helix's offline setting is (0.85, 1.0); online (0.9, 0.6)."""

    expected_kv_hwm: float = 0.85
    expected_output_length_ratio: float = 1.0
    default_output_tokens: int = HELIX_AVG_OUTPUT_TOKENS

    def __post_init__(self) -> None:
        if not 0 < self.expected_kv_hwm <= 1 or self.expected_output_length_ratio < 0:
            raise ValueError(f"invalid KV parameters {self}")

    def expected_tokens(self, prompt_tokens: int, expected_output_tokens: int | None = None) -> int:
        output = self.default_output_tokens if expected_output_tokens is None else expected_output_tokens
        return math.floor(prompt_tokens + self.expected_output_length_ratio * output)


class KVExpectation:
    """Expected KV availability per node; check-then-act: `can_admit` / `register` / `release`."""

    def __init__(
        self,
        ranges: Mapping[str, LayerRange],
        capacities: Mapping[str, int],
        num_layers: int,
        params: KVParameters,
    ) -> None:
        self.params = params
        self._ranges = dict(ranges)
        self._capacity = {n: float(capacities[n]) for n in ranges}
        self.available = dict(self._capacity)
        self._layer_nodes: list[list[str]] = [[] for _ in range(num_layers)]
        for name, r in self._ranges.items():
            for layer in range(r.start, r.end):
                self._layer_nodes[layer].append(name)
        self._total_per_layer = [
            sum(self._capacity[n] / self._ranges[n].num_layers for n in nodes) for nodes in self._layer_nodes
        ]

    def can_admit(self, node: str, expected_tokens: int) -> bool:
        need = expected_tokens * self._ranges[node].num_layers
        return self.available[node] - need >= (1.0 - self.params.expected_kv_hwm) * self._capacity[node]

    def register(self, pipeline: Pipeline, expected_tokens: int) -> None:
        for hop in pipeline.hops:
            self.available[hop.node] -= expected_tokens * hop.num_layers  # < 0 only without admission

    def release(self, pipeline: Pipeline, expected_tokens: int) -> None:
        for hop in pipeline.hops:
            self.available[hop.node] += expected_tokens * hop.num_layers
            if self.available[hop.node] > self._capacity[hop.node] + 1e-6:
                raise AssertionError(f"expected KV of {hop.node} exceeds its capacity")

    def usage(self, node: str) -> float:
        return 1.0 - self.available[node] / self._capacity[node]

    def bottleneck_usage(self) -> float:
        """max over layers of the expected KV usage of the nodes holding that layer."""
        worst = 0.0
        for nodes, total in zip(self._layer_nodes, self._total_per_layer, strict=True):
            if total <= 0:
                continue
            free = sum(self.available[n] / self._ranges[n].num_layers for n in nodes)
            worst = max(worst, 1.0 - free / total)
        return worst
