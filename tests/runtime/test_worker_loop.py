"""`helix.runtime.worker_loop`: the garbage collector's settings in a worker process, and the batch
limits a simulation of a deployment takes from the loop."""

from __future__ import annotations

import copy
import gc
import queue
import time

import numpy as np
import torch
import yaml

from helix.engine.sampling_params import SamplingParams
from helix.runtime.emulation import capacity_model
from helix.runtime.messages import DecodeRows, HopBatch
from helix.runtime.processes import ProcessDeployment, ProcessWorkerSpec, build_backend, start_coordinator
from helix.runtime.requests import FinishEvent, TokenEvent
from helix.runtime.stage_backend import StageConfig
from helix.runtime.worker import Worker
from helix.runtime.worker_loop import (
    GC_YOUNG_THRESHOLD,
    MAX_WAVE_HOLD_S,
    WAVE_HOLD_ROUNDS,
    WorkerLoop,
    settle_garbage_collector,
    with_step_limits,
)
from helix.scheduling import KVParameters
from helix.sim.config import SimConfig
from helix.sim.simulator import Simulator
from helix.sim.workload import Lengths
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import model_from_hf_config
from helix.specs.placement import Placement
from tests.scheduling.conftest import FlatCapacity

from .test_multi_device import CLUSTER, TINY


def test_settling_freezes_what_exists_and_collects_young_objects_less_often():
    threshold = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == threshold[1:]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_new_work_waits_for_the_wave_in_flight_at_most_a_round_and_a_half():
    """A first stage with requests on their way back holds what arrives meanwhile (so that it joins
    them) for `WAVE_HOLD_ROUNDS` × the last round, then gives up on the late ones and steps."""
    stage = StageConfig("tiny", 0, 2, kv_cache_bytes=1 << 20)
    worker = Worker("n0", build_backend(ProcessWorkerSpec("n0", stage, random_hf_config=TINY)))
    loop = WorkerLoop(worker)
    try:
        new = [HopBatch([], None, 0.0, "coordinator", DecodeRows.from_lists([5], [9], [1], [3]))]
        assert loop._hold_s(new) == 0.0  # nothing in flight: step now
        worker.awaiting.update({1, 2})
        worker.wave_round_s = 0.04
        assert loop._hold_s([]) == 0.0  # nothing to hold
        held = loop._hold_s(new)
        assert 0.0 < held <= WAVE_HOLD_ROUNDS * 0.04 + 1e-6
        worker.arrived(HopBatch([], None, 0.0, "n1", DecodeRows.from_lists([1], [9], [1], [3])))
        assert worker.awaiting == {2} and loop._hold_s(new) > 0.0
        time.sleep(WAVE_HOLD_ROUNDS * 0.04)
        assert loop._hold_s(new) == 0.0 and not worker.awaiting  # request 2 is late: step without it
        worker.wave_round_s = 10.0
        worker.awaiting.add(3)
        loop._hold_since = None
        assert loop._hold_s(new) <= MAX_WAVE_HOLD_S + 1e-6
    finally:
        loop.stop()


# ------------------------------------------------------------------ a simulation of the deployment
BURST, PROMPT_TOKENS, MAX_TOKENS = 48, 8, 40
RANGES = {"n0": (0, 2), "n1": (2, 5)}
KV_CACHE_BYTES = 450 << 10  # 56 and 37 blocks: requests grow past what admission expects and preempt


def _run_burst(coordinator) -> list[object]:
    """`BURST` requests of `PROMPT_TOKENS` + `MAX_TOKENS` tokens submitted at once; their last events."""
    sinks = [queue.SimpleQueue() for _ in range(BURST)]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    for i, sink in enumerate(sinks):
        coordinator.submit([1 + (i + j) % 50 for j in range(PROMPT_TOKENS)], params, sink.put)
    ends, tokens = [], 0
    for sink in sinks:
        while True:
            event = sink.get(timeout=60)
            if not isinstance(event, TokenEvent):
                ends.append(event)
                break
            tokens += 1
    assert tokens == BURST * MAX_TOKENS  # nothing lost, nothing repeated
    return ends


def _simulate_burst(model, scheduler) -> dict:
    """The simulator on the same burst from `scheduler`'s state, with the loop's real batch limits."""
    scheduler.topology = with_step_limits(scheduler.topology)
    # the simulator admits without knowing max_tokens: its default output length is set to it
    kv = scheduler.kv.params
    scheduler.kv.params = KVParameters(kv.expected_kv_hwm, kv.expected_output_length_ratio, MAX_TOKENS)
    config = SimConfig(
        mode="online",
        warmup_s=0.0,
        duration_s=600.0,
        model_loading=False,
        decodes_per_request="output-1",
        double_single_decode=False,
        bandwidth="link",
        kv_block_tokens=16,
    )
    timing = FlatCapacity(1.0, prompt_s_per_token=2e-5, decode_s=1e-3)  # both workers alike
    lengths = Lengths(np.array([PROMPT_TOKENS]), np.array([MAX_TOKENS]), "burst")
    return Simulator(scheduler, timing, model, config, lengths, np.zeros(BURST)).run()


def test_a_simulation_with_the_loops_limits_preempts_as_the_deployment_does():
    """Two worker processes (layers 0–2 and 2–5 of a tiny model) with KV for far fewer tokens than a
    48-request burst grows to: the runtime preempts and completes every request, and the simulator,
    given the same scheduler state, KV and the loop's batch limits (`with_step_limits`), counts the same
    preemptions (one per victim, `helix.scheduling.preemption`). With Helix's two prompts per pass it
    counted 18 for the runtime's 13."""
    torch.set_num_threads(1)
    stages = {
        n: StageConfig("tiny", s, e, kv_cache_bytes=KV_CACHE_BYTES, max_model_len=256)
        for n, (s, e) in RANGES.items()
    }
    specs = [ProcessWorkerSpec(n, stage, TINY, 1) for n, stage in stages.items()]
    cluster = cluster_from_dict(yaml.safe_load(CLUSTER), where="two-gpus")
    model = model_from_hf_config(TINY, name="tiny")
    deployment = ProcessDeployment(specs, timeout_s=120)
    counts = []
    try:
        coordinator = start_coordinator(
            deployment, cluster, model, Placement.from_pairs(RANGES), capacity_model(cluster, model),
            max_model_len=256,
        )  # fmt: skip
        try:
            for _ in range(2):
                scheduler = copy.deepcopy(coordinator.scheduler)  # the same IWRR state for both
                before = coordinator.counters["preempted"]
                ends = _run_burst(coordinator)
                assert all(isinstance(e, FinishEvent) for e in ends), ends
                summary = _simulate_burst(model, scheduler)
                assert summary["counters"]["requests_completed"] == BURST
                runtime_count = coordinator.counters["preempted"] - before
                counts.append((runtime_count, summary["counters"]["preemptions"]))
        finally:
            coordinator.close()
        stats = deployment.stats()
    finally:
        deployment.shutdown()
    assert all(s["kv_used_blocks"] == 0 and s["errors"] == 0 for s in stats.values()), stats
    runtime_total, sim_total = map(sum, zip(*counts, strict=True))
    assert all(r > 0 for r, _ in counts), counts
    assert abs(runtime_total - sim_total) <= 0.15 * sim_total, counts
