"""The profile capacity model reproduces Helix's tables (placement.md §1.6) exactly."""

import pytest

from helix.flow.maxflow import compute_upper_bound
from helix.perf.helix_profile import profile_capacity_model
from helix.specs.model import builtin_model

SINGLE24 = {
    "A100-40GB": [
        23833.87,
        11384.25,
        7201.41,
        5264.62,
        4096.65,
        3124.14,
        2595.68,
        2045.64,
        1754.38,
        1392.63,
        1212.18,
        952.11,
    ],
    "L4": [7557.86, 3625.71, 2171.88, 1476.08, 1017.57, 747.79, 531.70],
    "T4": [5709.21, 2434.37, 1347.87, 757.85],
}


def test_single24_tables(helix_setup):
    _, _, capacity = helix_setup("single24")
    for gpu, expected in SINGLE24.items():
        assert capacity.throughput_table(gpu) == pytest.approx(expected, abs=0.006)


def test_worked_example_a100_12_layers(helix_setup):
    _, _, capacity = helix_setup("single24")
    assert capacity.throughput_tokens_per_s("A100-40GB", 12) == pytest.approx(952.11, abs=0.005)


def test_normalized_performance(helix_setup):
    _, _, capacity = helix_setup("single24")
    perf = capacity.normalized_perf
    assert perf["T4"] == pytest.approx(3962.4, abs=0.05)
    assert perf["A100-40GB"] == pytest.approx(20509.1, abs=0.05)


@pytest.mark.parametrize(
    "name, bound", [("single24", 2803.861), ("cluster42", 7104.258), ("cluster10", 364.508)]
)
def test_compute_upper_bounds(helix_setup, name, bound):
    cluster, model, capacity = helix_setup(name)
    assert compute_upper_bound(cluster, model, capacity) == pytest.approx(bound, abs=1e-3)


def test_cluster42_t4x4(helix_setup):
    _, _, capacity = helix_setup("cluster42")
    assert capacity.throughput_tokens_per_s("T4x4", 4) == pytest.approx(4892.24, abs=0.005)


def test_composition_changes_capacity(ref):
    model = builtin_model("llama-2-70b")
    only_t4 = profile_capacity_model(ref / "profiles", model, {"T4": 12})
    assert only_t4.throughput_table("T4") == pytest.approx([4041.86, 1771.01, 979.41, 529.35], abs=0.006)


def test_30b_is_non_monotone(helix_setup):
    _, _, capacity = helix_setup("cluster10")
    assert capacity.throughput_tokens_per_s("L4", 6) == pytest.approx(286.59, abs=0.005)
    assert capacity.throughput_tokens_per_s("L4", 10) > capacity.throughput_tokens_per_s("L4", 9)


def test_kv_capacity_and_batch_time(helix_setup):
    _, _, capacity = helix_setup("single24")
    assert capacity.kv_capacity_tokens("A100-40GB", 12) == 16 * 17591
    # One layer: 722 prompt tokens (interpolated 4.888 ms) plus a decode batch of 4 (1.4 ms).
    assert capacity.layer_batch_time_s("A100-40GB", 722, 4) == pytest.approx(0.004888 + 0.0014)


def test_missing_gpu_profile_is_a_clear_error(ref):
    from helix.errors import HelixInputError

    with pytest.raises(HelixInputError, match="H100-80GB"):
        profile_capacity_model(ref / "profiles", builtin_model("llama-2-70b"), {"H100-80GB": 2})
