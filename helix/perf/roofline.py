"""Roofline capacity model: capacities from GPU specs and model shapes alone.

Per layer (hidden h, kv_dim d_kv, W = weight bytes of one layer, b = bytes per element)::

    prompt(P tokens):  max(2·params·P + 4·P·c̄·h , ...) / (peak·η_c)  vs  W / (bw·η_m),  plus t₀
                       with c̄ = min(P, I)/2 the mean attention span of a prompt of up to I tokens
    decode(D seqs):    max(2·params·D / (peak·η_c), (W + D·C·kv_bytes) / (bw·η_m))  plus t₀
                       with C the typical decode context (1000 tokens)

A node of g GPUs runs tensor parallel with efficiency η_tp^(log2 g). KV capacity is the memory left after
the weights and a fixed per-GPU runtime reserve; the most layers a node may hold is the number whose
weights fit in half of the memory left after that reserve (Helix's rule). η_c, η_m, t₀ and η_tp were
fitted to Helix's measured profiles (benchmarks/bench_capacity_model.py reports the error per GPU type);
typical throughput then follows the same model as the profile tables (helix.perf.base).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from helix.perf.base import (
    AVG_PROMPT_TOKENS,
    KV_BLOCK_TOKENS,
    TypeTiming,
    TypicalCapacityModel,
    TypicalThroughput,
)
from helix.specs.gpu import GPUCatalog, GPUSpec, default_catalog
from helix.specs.model import ModelSpec

DECODE_CONTEXT_TOKENS = 1000


@dataclass(frozen=True, slots=True)
class RooflineParams:
    """Efficiencies of the roofline model (fitted to measured profiles; see the module docstring)."""

    compute_efficiency: float = 0.475
    memory_efficiency: float = 0.76
    layer_overhead_s: float = 1.15e-4
    tp_efficiency: float = 0.75
    reserve_bytes_per_gpu: float = 2.0e9
    weight_fraction: float = 0.5
    memory_utilization: float = 0.9


class RooflineCapacityModel(TypicalCapacityModel):
    """Capacities of any GPU type for `model`, from specs, for one cluster composition."""

    def __init__(
        self,
        model: ModelSpec,
        composition: Mapping[str, int],
        catalog: GPUCatalog | None = None,
        params: RooflineParams = RooflineParams(),
    ) -> None:
        self._model = model
        self._catalog = catalog or default_catalog()
        self._params = params
        self._gpus = {name: self._catalog.get(name) for name in composition}
        timings = {name: self._timing(name) for name in self._gpus}
        self._init_typical(TypicalThroughput(timings, composition, model.num_layers))

    @property
    def description(self) -> str:
        return f"roofline ({self._params})"

    def _gpu(self, name: str) -> GPUSpec:
        if name not in self._gpus:
            self._gpus[name] = self._catalog.get(name)
        return self._gpus[name]

    def _effective(self, gpu: GPUSpec) -> tuple[float, float]:
        """Effective FLOP/s and bytes/s of the node."""
        p = self._params
        tp = p.tp_efficiency ** math.log2(gpu.num_gpus) if gpu.num_gpus > 1 else 1.0
        return (
            gpu.peak_flops_per_s * p.compute_efficiency * tp,
            gpu.hbm_bytes_per_s * p.memory_efficiency * tp,
        )

    def _timing(self, name: str) -> TypeTiming:
        k_max = self.max_layers(name)
        return TypeTiming(
            max_layers=k_max,
            kv_blocks=lambda k, n=name: self.kv_capacity_tokens(n, k) // KV_BLOCK_TOKENS,
            prompt_time_s=lambda t, n=name: self.prompt_layer_time_s(n, t),
            decode_time_s=lambda d, n=name: self.decode_layer_time_s(n, d),
            typical_layers=max(1, round(2 * k_max / 3)),
            fallback_layers=k_max,
            initial_perf=1.0,
        )

    def max_layers(self, gpu: str) -> int:
        spec = self._gpu(gpu)
        usable = spec.vram_bytes - self._params.reserve_bytes_per_gpu * spec.num_gpus
        return max(
            0,
            min(
                self._model.num_layers,
                math.floor(self._params.weight_fraction * usable / self._model.layer_weight_bytes),
            ),
        )

    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int:
        spec = self._gpu(gpu)
        p = self._params
        free = (
            spec.vram_bytes * p.memory_utilization
            - p.reserve_bytes_per_gpu * spec.num_gpus
            - num_layers * self._model.layer_weight_bytes
        )
        per_token = num_layers * self._model.kv_bytes_per_token_per_layer
        return max(0, int(free // (per_token * KV_BLOCK_TOKENS)) * KV_BLOCK_TOKENS)

    def prompt_layer_time_s(self, gpu: str, num_tokens: int) -> float:
        if num_tokens <= 0:
            return 0.0
        m = self._model
        flops_per_s, bytes_per_s = self._effective(self._gpu(gpu))
        span = min(num_tokens, AVG_PROMPT_TOKENS) / 2
        flops = 2 * m.layer_params * num_tokens + 4 * num_tokens * span * m.hidden_size
        return max(flops / flops_per_s, m.layer_weight_bytes / bytes_per_s) + self._params.layer_overhead_s

    def decode_layer_time_s(self, gpu: str, num_seqs: int) -> float:
        if num_seqs <= 0:
            return 0.0
        m = self._model
        flops_per_s, bytes_per_s = self._effective(self._gpu(gpu))
        read = m.layer_weight_bytes + num_seqs * DECODE_CONTEXT_TOKENS * m.kv_bytes_per_token_per_layer
        return (
            max(2 * m.layer_params * num_seqs / flops_per_s, read / bytes_per_s)
            + self._params.layer_overhead_s
        )
