"""ClampedCapacityModel: Helix's allow_force_set for layouts past the memory limit."""

from __future__ import annotations

import pytest

from helix.scheduling.topology import node_limits
from helix.sim.clamped import ClampedCapacityModel
from tests.conftest import needs_reference


@needs_reference
def test_past_the_limit_settings_are_those_at_the_limit(helix_setup):
    _, model, capacity = helix_setup("single24")
    clamped = ClampedCapacityModel(capacity, model.num_layers)
    gpu = "A100-40GB"
    top = capacity.max_layers(gpu)  # 12
    assert clamped.max_layers(gpu) == model.num_layers
    assert clamped.kv_capacity_tokens(gpu, 20) == capacity.kv_capacity_tokens(gpu, top)
    assert clamped.throughput_tokens_per_s(gpu, 20) == pytest.approx(
        capacity.throughput_tokens_per_s(gpu, top) * top / 20
    )
    high, low = node_limits(clamped, gpu, 20), node_limits(capacity, gpu, top)
    assert (high.max_prompt_requests, high.max_decode_seqs) == (low.max_prompt_requests, low.max_decode_seqs)
    assert high.kv_capacity_token_layers == capacity.kv_capacity_tokens(gpu, top) * 20


@needs_reference
def test_within_the_limit_nothing_changes(helix_setup):
    _, model, capacity = helix_setup("single24")
    clamped = ClampedCapacityModel(capacity, model.num_layers)
    for k in (1, 5, 12):
        assert clamped.kv_capacity_tokens("A100-40GB", k) == capacity.kv_capacity_tokens("A100-40GB", k)
        assert clamped.throughput_tokens_per_s("T4", min(k, 4)) == capacity.throughput_tokens_per_s(
            "T4", min(k, 4)
        )
    assert node_limits(clamped, "L4", 7) == node_limits(capacity, "L4", 7)
