"""Tiny hand-built clusters for scheduler tests (no reference data needed)."""

from __future__ import annotations

import pytest

from helix.perf.base import CapacityModel
from helix.specs.cluster import COORDINATOR, ClusterSpec, LinkSpec, NodeSpec
from helix.specs.gpu import default_catalog
from helix.specs.model import builtin_model
from helix.specs.placement import Placement


class FlatCapacity(CapacityModel):
    """Every node: `tp` tokens/s per layer-range, fixed per-layer times, `kv` tokens of KV per layer."""

    def __init__(
        self,
        tp: dict[str, float] | float = 100.0,
        kv_tokens: int = 100_000,
        prompt_s_per_token: float = 1e-5,
        decode_s: float = 1e-3,
    ) -> None:
        self.tp, self.kv_tokens = tp, kv_tokens
        self.prompt_s_per_token, self.decode_s = prompt_s_per_token, decode_s

    def max_layers(self, gpu: str) -> int:
        return 100

    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int:
        return self.kv_tokens

    def prompt_layer_time_s(self, gpu: str, num_tokens: int) -> float:
        return self.prompt_s_per_token * num_tokens

    def decode_layer_time_s(self, gpu: str, num_seqs: int) -> float:
        return self.decode_s if num_seqs else 0.0

    def throughput_tokens_per_s(self, gpu: str, num_layers: int) -> float:
        return self.tp if isinstance(self.tp, float) else self.tp[gpu]

    @property
    def description(self) -> str:
        return "flat test model"


def make_cluster(
    names: list[str], gpus: list[str] | None = None, bandwidth: float = 1e12, latency_s: float = 0.0
) -> ClusterSpec:
    catalog = default_catalog()
    gpus = gpus or ["A100"] * len(names)
    nodes = tuple(NodeSpec(n, catalog.get(g), "r", 1e13) for n, g in zip(names, gpus, strict=True))
    ends = [COORDINATOR, *names]
    links = tuple(LinkSpec(a, b, bandwidth, latency_s) for a in ends for b in ends if a != b)
    return ClusterSpec("test", nodes, links, coordinator_nic_bytes_per_s=1e13)


@pytest.fixture
def model():
    return builtin_model("llama-2-70b")


@pytest.fixture
def two_replicas():
    """Two nodes each holding the whole 80-layer model, node capacities 300 and 100 tokens/s (3:1)."""
    catalog = default_catalog()
    a100, l4 = catalog.get("A100").name, catalog.get("L4").name
    cluster = make_cluster(["a", "b"], ["A100", "L4"])
    placement = Placement.from_pairs({"a": (0, 80), "b": (0, 80)})
    return cluster, placement, FlatCapacity({a100: 300.0, l4: 100.0})
