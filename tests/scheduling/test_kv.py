import pytest

from helix.scheduling.kv import KVExpectation, KVParameters
from helix.scheduling.pipeline import Hop, Pipeline
from helix.specs.placement import LayerRange


def test_expected_tokens_and_admission():
    params = KVParameters(expected_kv_hwm=0.85, expected_output_length_ratio=1.0)
    assert params.expected_tokens(750) == 990
    assert params.expected_tokens(750, expected_output_tokens=100) == 850
    kv = KVExpectation({"a": LayerRange(0, 4), "b": LayerRange(4, 8)}, {"a": 40_000, "b": 8_000}, 8, params)
    assert kv.can_admit("a", 990)  # 40000 - 3960 >= 6000
    assert kv.can_admit("b", 1650)  # 8000 - 6600 >= 0.15 · 8000
    assert not kv.can_admit("b", 1750)


def test_register_release_and_bottleneck():
    params = KVParameters(1.0, 0.0)
    kv = KVExpectation({"a": LayerRange(0, 2), "b": LayerRange(0, 2)}, {"a": 1000, "b": 1000}, 2, params)
    pipeline = Pipeline((Hop("a", 0, 2),))
    kv.register(pipeline, 250)
    assert kv.usage("a") == pytest.approx(0.5)
    assert kv.bottleneck_usage() == pytest.approx(0.25)  # layer capacity shared with b
    kv.release(pipeline, 250)
    assert kv.bottleneck_usage() == 0.0
    with pytest.raises(AssertionError):
        kv.release(pipeline, 250)
