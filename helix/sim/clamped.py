"""A capacity model that lets a node hold more layers than fit, as Helix's separate-pipelines runs do.

Helix's separate-pipelines baseline (placement.md §6.4) spreads the model evenly over *all* nodes of a
GPU type, e.g. 4 A100 × 20 layers of LLaMA-2-70B where at most 12 fit. Its simulator runs those layouts
with ``allow_force_set=True`` (runtime settings clamped to the largest valid layer count K) and
hand-written KV capacities. `ClampedCapacityModel` reproduces that, for k > K:

- KV: the same tokens per layer as at K, ``kv_capacity_tokens(gpu, k) = kv_capacity_tokens(gpu, K)``
  (so k·16·blocks[K] token×layer entries — more memory than the GPU has, which is the point);
- batch limits (profile tables): those at K;
- per-layer prompt / decode times: unchanged (they do not depend on k);
- throughput (only used to build the max-flow topology; random scheduling ignores it):
  ``tp(k) = tp(K)·K / k`` (the same layer-tokens/s as at K).

For k ≤ K every answer is the wrapped model's. Use it only to reproduce Helix's baseline numbers: the
placements it admits do not fit in memory.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from helix.perf.base import CapacityModel


class ClampedCapacityModel(CapacityModel):
    """Wraps `base`; nodes may hold up to `num_layers` layers, with settings clamped at K (see module)."""

    def __init__(self, base: CapacityModel, num_layers: int) -> None:
        self._base = base
        self._num_layers = num_layers
        self._profiles: dict[str, Any] = {}
        if hasattr(base, "profile"):  # profile tables give the batch limits (helix.scheduling.topology)
            self.profile = self._profile

    @property
    def description(self) -> str:
        return f"{self._base.description}, clamped at max layers (Helix allow_force_set)"

    def _k(self, gpu: str, num_layers: int) -> int:
        return min(num_layers, self._base.max_layers(gpu))

    def max_layers(self, gpu: str) -> int:
        return self._num_layers

    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int:
        return self._base.kv_capacity_tokens(gpu, self._k(gpu, num_layers))

    def prompt_layer_time_s(self, gpu: str, num_tokens: int) -> float:
        return self._base.prompt_layer_time_s(gpu, num_tokens)

    def decode_layer_time_s(self, gpu: str, num_seqs: int) -> float:
        return self._base.decode_layer_time_s(gpu, num_seqs)

    def throughput_tokens_per_s(self, gpu: str, num_layers: int) -> float:
        k = self._k(gpu, num_layers)
        return self._base.throughput_tokens_per_s(gpu, k) * k / num_layers

    def _profile(self, gpu: str) -> Any:
        """The wrapped model's profile table with per-layer-count tables extended at their K value."""
        if gpu not in self._profiles:
            table = self._base.profile(gpu)  # type: ignore[attr-defined]
            extra = self._num_layers - table.max_layers

            def extend(values: tuple[int, ...]) -> tuple[int, ...]:
                return values + (values[-1],) * extra if values and extra > 0 else values

            self._profiles[gpu] = replace(
                table,
                prompt_max_requests_by_layers=extend(table.prompt_max_requests_by_layers),
                decode_max_tokens_by_layers=extend(table.decode_max_tokens_by_layers),
            )
        return self._profiles[gpu]
