"""`helix.runtime.stage_backend`: the engine settings a worker's stage gets from its `StageConfig`."""

from __future__ import annotations

from helix.runtime.stage_backend import StageConfig, stage_engine_config


def test_stage_settings_reach_the_engine_config():
    stage = StageConfig("random", 0, 4, max_model_len=512, block_size=32, max_graph_batch_size=512)
    config = stage_engine_config(stage, num_blocks=100)
    assert (config.num_kv_blocks, config.max_model_len, config.block_size) == (100, 512, 32)
    assert config.max_graph_batch_size == 512


def test_graphs_default_to_the_engine_default():
    assert stage_engine_config(StageConfig("random", 0, 4), None).max_graph_batch_size == 256
