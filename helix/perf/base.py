"""The capacity-model interface and the typical-throughput model shared by its implementations.

A capacity model answers, for a GPU type holding k contiguous layers of one model:
- `max_layers(gpu)`: the most layers the node may hold (weights plus a KV reserve must fit);
- `kv_capacity_tokens(gpu, k)`: tokens of context whose KV cache fits for all k layers;
- `prompt_layer_time_s(gpu, tokens)` / `decode_layer_time_s(gpu, seqs)`: time for ONE layer to run a
  prompt batch of `tokens` tokens / a decode batch of `seqs` sequences;
- `throughput_tokens_per_s(gpu, k)`: tokens/s pushed through all k layers, prompt and decode tokens alike.

Typical throughput (Helix's model, placement.md §1.6). With an average request of I = 750 prompt and
O = 240 output tokens, a node holding k layers sees a share ρ of every request's round trip::

    τ_x = 1 / P[x]                       (per-layer time of type x, from its normalized performance)
    τ̄ = Σ_x N[x]·T[x]·τ_x / Σ_x N[x]·T[x]
    ρ(m, k) = k·τ_m / ((L − k)·τ̄ + k·τ_m)

The KV cache below a 30 % high-water mark holds c = A / (I + O) average requests (A = KV token entries per
layer), so a typical batch has q = c·ρ/O prompts (Pt = round(q·I) tokens) and D = round(c·ρ) decode
sequences, capped at one full request. Throughput is the tokens of one typical batch over its time::

    q ≥ 1:  tp = (Pt + D) / (k·(t_p(Pt) + t_d(D)))
    q < 1:  r = 1/q;  tp = r·(Pt + D) / (k·(t_p(int(Pt·r)) + r·t_d(D)))

The normalized performance P[m] comes from 10 Jacobi iterations P[m] ← tp(m, T[m]; P)·T[m], starting from
P0, with typical layer counts T (the fallback T' when Σ N·T < 1.2·L).
"""

from __future__ import annotations

import bisect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

AVG_PROMPT_TOKENS = 750
AVG_OUTPUT_TOKENS = 240
KV_BLOCK_TOKENS = 16
KV_HIGH_WATER = 0.3
JACOBI_ITERATIONS = 10


class CapacityModel(ABC):
    """Per-GPU-type capacities for one model (and, for typical throughput, one cluster composition)."""

    @abstractmethod
    def max_layers(self, gpu: str) -> int: ...

    @abstractmethod
    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int: ...

    @abstractmethod
    def prompt_layer_time_s(self, gpu: str, num_tokens: int) -> float: ...

    @abstractmethod
    def decode_layer_time_s(self, gpu: str, num_seqs: int) -> float: ...

    @abstractmethod
    def throughput_tokens_per_s(self, gpu: str, num_layers: int) -> float: ...

    @property
    @abstractmethod
    def description(self) -> str:
        """One line naming the model and its source, stored in plans."""

    def layer_batch_time_s(self, gpu: str, prompt_tokens: int, decode_seqs: int) -> float:
        """Time for one layer to run a mixed batch (prompt tokens plus decode sequences)."""
        time_s = 0.0
        if prompt_tokens > 0:
            time_s += self.prompt_layer_time_s(gpu, prompt_tokens)
        if decode_seqs > 0:
            time_s += self.decode_layer_time_s(gpu, decode_seqs)
        return time_s

    def throughput_table(self, gpu: str) -> list[float]:
        """tp(k) for k = 1..max_layers."""
        return [self.throughput_tokens_per_s(gpu, k) for k in range(1, self.max_layers(gpu) + 1)]

    def best_layer_work(self, gpu: str) -> float:
        """max_k k·tp(k): the most layer-tokens/s the type can contribute."""
        return max((k * tp for k, tp in enumerate(self.throughput_table(gpu), start=1)), default=0.0)


class TypicalCapacityModel(CapacityModel):
    """A capacity model whose throughput is the typical-batch model of `TypicalThroughput`, cached."""

    def _init_typical(self, typical: TypicalThroughput) -> None:
        self._typical = typical
        self._cache: dict[tuple[str, int], float] = {}

    def throughput_tokens_per_s(self, gpu: str, num_layers: int) -> float:
        key = (gpu, num_layers)
        if key not in self._cache:
            if not 1 <= num_layers <= self.max_layers(gpu):
                raise ValueError(f"{gpu} holds 1..{self.max_layers(gpu)} layers, not {num_layers}")
            self._cache[key] = self._typical.throughput(gpu, num_layers)
        return self._cache[key]


@dataclass(frozen=True)
class TypeTiming:
    """What the typical-throughput model needs to know about one GPU type."""

    max_layers: int
    kv_blocks: Callable[[int], int]
    prompt_time_s: Callable[[int], float]
    decode_time_s: Callable[[int], float]
    typical_layers: int
    fallback_layers: int
    initial_perf: float


def typical_batch_throughput(timing: TypeTiming, num_layers: int, rho: float) -> float:
    """Tokens/s through `num_layers` layers for the typical batch at round-trip share `rho`."""
    k = num_layers
    kv_entries = KV_BLOCK_TOKENS * timing.kv_blocks(k) * k
    per_layer_entries = math.floor(KV_HIGH_WATER * kv_entries / k)
    concurrent = per_layer_entries / (AVG_PROMPT_TOKENS + AVG_OUTPUT_TOKENS)
    q = concurrent * rho / AVG_OUTPUT_TOKENS
    prompt_tokens = round(q * AVG_PROMPT_TOKENS)
    decode_seqs = round(concurrent * rho)
    if q > 1:
        q, prompt_tokens, decode_seqs = 1.0, AVG_PROMPT_TOKENS, AVG_OUTPUT_TOKENS
    if q <= 0:
        return 0.0
    if prompt_tokens + decode_seqs == 0:
        # Less than one typical request fits: serve one average request at a time.
        return (AVG_PROMPT_TOKENS + AVG_OUTPUT_TOKENS) / (
            k * (timing.prompt_time_s(AVG_PROMPT_TOKENS) + AVG_OUTPUT_TOKENS * timing.decode_time_s(1))
        )
    if q >= 1:
        return (prompt_tokens + decode_seqs) / (
            k * (timing.prompt_time_s(prompt_tokens) + timing.decode_time_s(decode_seqs))
        )
    r = 1.0 / q
    return (
        r
        * (prompt_tokens + decode_seqs)
        / (k * (timing.prompt_time_s(int(prompt_tokens * r)) + r * timing.decode_time_s(decode_seqs)))
    )


class TypicalThroughput:
    """Composition-dependent typical throughput tp(type, k | N) for a model of `num_layers` layers."""

    def __init__(
        self, timings: Mapping[str, TypeTiming], composition: Mapping[str, int], num_layers: int
    ) -> None:
        self._timings = dict(timings)
        self._num_layers = num_layers
        present = {m: n for m, n in composition.items() if n > 0}
        typical = {m: timings[m].typical_layers for m in present}
        if sum(present[m] * typical[m] for m in present) < 1.2 * num_layers:
            typical = {m: timings[m].fallback_layers for m in present}
        self._count = present
        self._typical = typical
        perf = {m: timings[m].initial_perf for m in present}
        for _ in range(JACOBI_ITERATIONS):
            perf = {m: self._tp(m, typical[m], perf) * typical[m] for m in present}
        self.normalized_perf = perf

    def _rho(self, gpu: str, k: int, perf: Mapping[str, float]) -> float:
        weights = {m: self._count[m] * self._typical[m] for m in self._count}
        mean_tau = sum(weights[m] / perf[m] for m in weights) / sum(weights.values())
        tau = 1.0 / perf[gpu] if gpu in perf else mean_tau
        return k * tau / ((self._num_layers - k) * mean_tau + k * tau)

    def _tp(self, gpu: str, k: int, perf: Mapping[str, float]) -> float:
        return typical_batch_throughput(self._timings[gpu], k, self._rho(gpu, k, perf))

    def throughput(self, gpu: str, num_layers: int) -> float:
        return self._tp(gpu, num_layers, self.normalized_perf)


class Curve:
    """A piecewise-linear curve through measured (x, y) points, sorted by x.

    `__call__` interpolates between the nearest points at or below and at or above x (exact at profiled
    points). Outside the profiled range it raises unless `extrapolate`, which extends the last segment.
    """

    __slots__ = ("xs", "ys", "what", "extrapolate")

    def __init__(self, points: list[tuple[float, float]], *, what: str, extrapolate: bool = False) -> None:
        if len(points) < 2:
            raise ValueError(f"{what}: at least two points are needed")
        points = sorted(points)
        self.xs = [float(x) for x, _ in points]
        self.ys = [float(y) for _, y in points]
        self.what = what
        self.extrapolate = extrapolate

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x < xs[0] or x > xs[-1]:
            if not self.extrapolate:
                raise ValueError(f"{self.what}: {x} is outside the profiled range [{xs[0]}, {xs[-1]}]")
            i = 1 if x < xs[0] else len(xs) - 1
            return max(0.0, ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1]))
        i = bisect.bisect_left(xs, x)
        if xs[i] == x:
            return ys[i]
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])
