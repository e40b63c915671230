"""The runtime's KV block size comes from the engine's config, and CUDA pinning has one rule."""

from __future__ import annotations

import os

from helix.runtime.kv_capacity import with_real_kv
from helix.runtime.processes import ProcessWorkerSpec, build_backend
from helix.runtime.stage_backend import StageConfig, pin_device
from helix.scheduling import Topology
from helix.specs.model import builtin_model
from helix.specs.placement import Placement
from tests.runtime.test_multi_device import TINY
from tests.scheduling.conftest import FlatCapacity, make_cluster


def _backend(block_size: int):
    stage = StageConfig("random", 0, 3, kv_cache_bytes=1 << 20, max_model_len=256, block_size=block_size)
    return build_backend(ProcessWorkerSpec("n0", stage, random_hf_config=TINY))


def test_worker_block_size_follows_the_stage_config():
    small, large = _backend(8), _backend(32)
    assert small.kv_block_size == 8 and small.runner.block_manager.block_size == 8
    assert large.kv_block_size == 32
    # the same byte budget: 4× the blocks at a quarter of the size
    assert abs(small.num_kv_blocks - 4 * large.num_kv_blocks) < 4


def test_scheduler_capacity_uses_the_reported_block_size():
    cluster = make_cluster(["a", "b"])
    placement = Placement.from_pairs({"a": (0, 30), "b": (30, 80)})
    topo = Topology.build(cluster, builtin_model("llama-2-70b"), placement, FlatCapacity(100.0))
    info = {"a": {"kv_blocks": 10, "kv_block_size": 8}, "b": {"kv_blocks": 10, "kv_block_size": 32}}
    real = with_real_kv(topo, info)
    assert real.limits["a"].kv_capacity_token_layers == 10 * 8 * 30
    assert real.limits["b"].kv_capacity_token_layers == 10 * 32 * 50


def test_pin_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cpu = StageConfig("m", 0, 1)
    assert pin_device(cpu) is cpu and "CUDA_VISIBLE_DEVICES" not in os.environ
    pinned = pin_device(StageConfig("m", 0, 1, device="cuda:3"))
    assert pinned.device == "cuda:0" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
