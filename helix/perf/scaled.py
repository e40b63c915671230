"""A capacity model running every GPU type `speed` times faster (or slower, speed < 1) than another.

Used to express a capacity model in the units of a host that emulates it: e.g. the demo's relative
emulation runs the fastest type at this CPU's speed, so the simulator's prediction of a CPU run is the
roofline scaled by (measured capacity ÷ modelled capacity). Times divide by `speed`, throughputs
multiply by it; layer counts, KV capacities and batch limits are the wrapped model's.
"""

from __future__ import annotations

from helix.perf.base import CapacityModel


class ScaledCapacityModel(CapacityModel):
    """`base` with every time divided by `speed` (> 0)."""

    def __init__(self, base: CapacityModel, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, not {speed}")
        self._base = base
        self.speed = speed
        if hasattr(base, "profile"):  # profile tables give the batch limits (helix.scheduling.topology)
            self.profile = base.profile

    @property
    def description(self) -> str:
        return f"{self._base.description}, {self.speed:.4g}x speed"

    def max_layers(self, gpu: str) -> int:
        return self._base.max_layers(gpu)

    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int:
        return self._base.kv_capacity_tokens(gpu, num_layers)

    def prompt_layer_time_s(self, gpu: str, num_tokens: int) -> float:
        return self._base.prompt_layer_time_s(gpu, num_tokens) / self.speed

    def decode_layer_time_s(self, gpu: str, num_seqs: int) -> float:
        return self._base.decode_layer_time_s(gpu, num_seqs) / self.speed

    def throughput_tokens_per_s(self, gpu: str, num_layers: int) -> float:
        return self._base.throughput_tokens_per_s(gpu, num_layers) * self.speed
