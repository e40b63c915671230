"""Partial overlap end to end: workers run only the sub-range a route needs (Helix's layer skip)."""

from __future__ import annotations

import pytest
import torch
import yaml

from helix.errors import HelixInputError
from helix.placement.plan_io import Plan, check_plan_matches
from helix.runtime.emulation import capacity_model
from helix.runtime.processes import ProcessDeployment, ProcessWorkerSpec, start_coordinator
from helix.runtime.stage_backend import StageConfig
from helix.specs.cluster_yaml import cluster_from_dict
from helix.specs.model import model_from_hf_config
from helix.specs.placement import Placement
from tests.runtime.test_multi_device import CLUSTER, MAX_TOKENS, PROMPTS, TINY, _reference, _serve

# n0 holds [0, 3), n1 holds [2, 5): they chain only with partial overlap (n1 skips layer 2).
RANGES = {"n0": (0, 3), "n1": (2, 5)}


def _plan(partial: bool) -> Plan:
    return Plan(
        Placement.from_pairs(RANGES), "tiny", 5, "two-gpus", ("n0", "n1"), "given", partial_overlap=partial
    )


def test_a_partial_overlap_plan_is_served_with_layer_skip():
    torch.set_num_threads(1)
    seed = 3
    cluster = cluster_from_dict(yaml.safe_load(CLUSTER), where="two-gpus")
    model = model_from_hf_config(TINY, name="tiny")
    check_plan_matches(_plan(True), cluster, model)
    specs = [
        ProcessWorkerSpec(
            name, StageConfig("tiny", s, e, kv_cache_bytes=1 << 20, max_model_len=256), TINY, seed
        )
        for name, (s, e) in RANGES.items()
    ]
    deployment = ProcessDeployment(specs, timeout_s=120)
    try:
        coordinator = start_coordinator(
            deployment,
            cluster,
            model,
            Placement.from_pairs(RANGES),
            capacity_model(cluster, model),
            max_model_len=256,
            partial_overlap=True,
        )
        try:
            served = _serve(coordinator, PROMPTS)
        finally:
            coordinator.close()
        stats = deployment.stats()
    finally:
        deployment.shutdown()
    # the same tokens as one 5-layer engine: layer 2 ran once (on n0), n1 skipped it
    assert served == _reference(seed)
    assert stats["n1"]["tokens"] == stats["n0"]["tokens"] >= sum(map(len, PROMPTS)) + MAX_TOKENS - 1
    assert all(s["errors"] == 0 for s in stats.values())


def test_a_strict_plan_that_only_chains_with_overlap_is_refused_at_start():
    cluster = cluster_from_dict(yaml.safe_load(CLUSTER), where="two-gpus")
    model = model_from_hf_config(TINY, name="tiny")
    with pytest.raises(HelixInputError, match="partial-overlap") as info:
        check_plan_matches(_plan(False), cluster, model)
    assert info.value.field == "partial_overlap"
