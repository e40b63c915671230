"""Two worker processes of uneven layer counts over the ZeroMQ path, against the single-process engine."""

from __future__ import annotations

import threading

import pytest
import torch
import yaml

from helix.engine.config import EngineConfig, LayerRange, ModelConfig
from helix.engine.llm_engine import LLMEngine
from helix.engine.loader import build_stage
from helix.engine.model_runner import ModelRunner
from helix.engine.sampling_params import SamplingParams
from helix.runtime.emulation import capacity_model
from helix.runtime.processes import (
    ProcessDeployment,
    ProcessWorkerSpec,
    init_split_invariant_weights,
    start_coordinator,
)
from helix.runtime.requests import ErrorEvent, FinishEvent, TokenEvent
from helix.runtime.stage_backend import StageConfig
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import model_from_hf_config
from helix.specs.placement import Placement

TINY = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 5,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
}
CLUSTER = """
name: two-gpus
coordinator: {region: local, nic_gbps: 100}
regions:
  local: {bandwidth_gbps: 100, latency_ms: 0.05}
nodes:
  - {name: n0, gpu: H100-80GB, region: local}
  - {name: n1, gpu: H100-80GB, region: local}
"""
PROMPTS = [[5, 17, 42, 99, 3, 7, 200, 31], [1, 2, 3], [250, 128, 64, 32, 16, 8, 4, 2, 1, 0, 9]]
MAX_TOKENS = 12


def _reference(seed: int) -> list[list[int]]:
    config = ModelConfig.from_hf_dict(TINY, where="tiny")
    stage = build_stage(config, LayerRange(0, config.num_layers), max_positions=256)
    init_split_invariant_weights(stage, seed)
    engine = LLMEngine([ModelRunner(stage, EngineConfig(num_kv_blocks=64, max_model_len=256))])
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [o.output_token_ids for o in engine.generate(PROMPTS, params)]


def _serve(coordinator, prompts: list[list[int]]) -> list[list[int]]:
    outputs = [[] for _ in prompts]
    done = threading.Semaphore(0)

    def sink(index: int):
        def emit(event) -> None:
            if isinstance(event, TokenEvent):
                outputs[index].append(event.token_id)
            elif isinstance(event, (FinishEvent, ErrorEvent)):
                assert not isinstance(event, ErrorEvent), event.message
                done.release()

        return emit

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    for index, prompt in enumerate(prompts):
        coordinator.submit(prompt, params, sink(index))
    for _ in prompts:
        assert done.acquire(timeout=60)
    return outputs


@pytest.mark.parametrize("ranges", [((0, 2), (2, 5))])
def test_two_worker_processes_match_the_engine(ranges):
    torch.set_num_threads(1)
    seed = 3
    names = ("n0", "n1")
    specs = [
        ProcessWorkerSpec(
            name, StageConfig("tiny", s, e, kv_cache_bytes=1 << 20, max_model_len=256), TINY, seed
        )
        for name, (s, e) in zip(names, ranges, strict=True)
    ]
    cluster = cluster_from_dict(yaml.safe_load(CLUSTER), where="two-gpus")
    model = model_from_hf_config(TINY, name="tiny")
    placement = Placement.from_pairs(dict(zip(names, ranges, strict=True)))
    deployment = ProcessDeployment(specs, timeout_s=120)
    try:
        coordinator = start_coordinator(
            deployment, cluster, model, placement, capacity_model(cluster, model), max_model_len=256
        )
        try:
            served = _serve(coordinator, PROMPTS)
        finally:
            coordinator.close()
        stats = deployment.stats()
    finally:
        deployment.shutdown()
    assert served == _reference(seed)
    # every decode step crossed the hop: the second worker stepped on what the first forwarded
    assert stats["n0"]["tokens"] == stats["n1"]["tokens"] >= sum(map(len, PROMPTS)) + MAX_TOKENS - 1
    assert all(s["alive"] and s["errors"] == 0 for s in stats.values())


def test_split_invariant_weights_do_not_depend_on_the_split():
    config = ModelConfig.from_hf_dict(TINY, where="tiny")
    whole = build_stage(config, LayerRange(0, 5))
    tail = build_stage(config, LayerRange(2, 5))
    init_split_invariant_weights(whole, 1)
    init_split_invariant_weights(tail, 1)
    assert torch.equal(whole.layers[3].mlp.down_proj.weight, tail.layers[1].mlp.down_proj.weight)
    assert torch.equal(whole.lm_head.weight, tail.lm_head.weight)
    assert not torch.equal(whole.layers[2].mlp.down_proj.weight, whole.layers[3].mlp.down_proj.weight)
