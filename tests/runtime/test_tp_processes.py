"""The Ray-free process deployment (the one GPU hosts use) with a tensor-parallel second stage: random
split-invariant weights sliced per rank give the single-process engine's greedy tokens."""

from __future__ import annotations

import os

import torch
import yaml

from helix.runtime.emulation import capacity_model
from helix.runtime.processes import ProcessDeployment, ProcessWorkerSpec, start_coordinator
from helix.runtime.stage_backend import StageConfig
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import model_from_hf_config
from helix.specs.placement import Placement

from .test_multi_device import CLUSTER, PROMPTS, TINY, _reference, _serve


def test_process_workers_with_a_two_rank_stage_match_the_engine():
    torch.set_num_threads(1)
    seed, ranges = 5, {"n0": (0, 2), "n1": (2, 5)}
    specs = [
        ProcessWorkerSpec(
            name,
            StageConfig(
                "tiny", s, e, kv_cache_bytes=1 << 20, max_model_len=256, tp_size=2 if name == "n1" else 1
            ),
            TINY,
            seed,
        )
        for name, (s, e) in ranges.items()
    ]
    cluster = cluster_from_dict(yaml.safe_load(CLUSTER), where="two-gpus")
    model = model_from_hf_config(TINY, name="tiny")
    deployment = ProcessDeployment(specs, timeout_s=180)
    pids = deployment.info["n1"]["rank_pids"]
    try:
        coordinator = start_coordinator(
            deployment, cluster, model, Placement.from_pairs(ranges), capacity_model(cluster, model),
            max_model_len=256,
        )  # fmt: skip
        try:
            served = _serve(coordinator, PROMPTS)
        finally:
            coordinator.close()
        stats = deployment.stats()
    finally:
        deployment.shutdown()
        for pid in pids:  # the worker stops its ranks; make sure whatever happened
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    assert len(pids) == 1
    assert served == _reference(seed)
    assert all(s["alive"] and s["failure"] is None for s in stats.values())
    # same bytes per rank, half the KV heads per rank: twice the tokens per layer of n0's budget
    per_layer = {n: deployment.info[n]["kv_blocks"] * (e - s) for n, (s, e) in ranges.items()}
    assert 1.8 < per_layer["n1"] / per_layer["n0"] < 2.2
