"""`ScaledCapacityModel`: times divided by the speed, throughputs multiplied, limits unchanged."""

import pytest

from helix.perf.roofline import RooflineCapacityModel
from helix.perf.scaled import ScaledCapacityModel
from helix.specs.loading import load_cluster
from helix.specs.model import builtin_model


def test_scaled_model_runs_speed_times_faster():
    cluster = load_cluster("demo")
    base = RooflineCapacityModel(builtin_model("smollm2-135m"), cluster.composition())
    fast = ScaledCapacityModel(base, 4.0)
    for gpu in ("H100-80GB", "T4"):
        assert fast.max_layers(gpu) == base.max_layers(gpu)
        assert fast.kv_capacity_tokens(gpu, 2) == base.kv_capacity_tokens(gpu, 2)
        assert fast.prompt_layer_time_s(gpu, 128) == pytest.approx(base.prompt_layer_time_s(gpu, 128) / 4)
        assert fast.decode_layer_time_s(gpu, 8) == pytest.approx(base.decode_layer_time_s(gpu, 8) / 4)
        assert fast.throughput_tokens_per_s(gpu, 3) == pytest.approx(4 * base.throughput_tokens_per_s(gpu, 3))
    assert "4x speed" in fast.description


def test_scaled_model_needs_a_positive_speed():
    base = RooflineCapacityModel(builtin_model("smollm2-135m"), load_cluster("demo").composition())
    with pytest.raises(ValueError, match="speed"):
        ScaledCapacityModel(base, 0.0)
