"""The load generator's window rule on hand-made samples."""

from __future__ import annotations

import pytest

from helix.runtime.loadgen import LoadSpec, Sample, summarise

SPEC = LoadSpec("http://x/v1", "m", rate_per_s=1.0, duration_s=20.0, output_tokens=3, warmup_s=10.0)


def test_window_counts_tokens_and_latencies_inside_it():
    early = Sample(0.0, ttft_s=1.0, e2e_s=12.0, tokens=3, token_times_s=[1.0, 5.0, 12.0])
    late = Sample(11.0, ttft_s=2.0, e2e_s=4.0, tokens=3, token_times_s=[13.0, 14.0, 15.0])
    cut = Sample(18.0, ttft_s=1.5, tokens=0, token_times_s=[19.5, 21.0])  # still running at the end
    failed = Sample(19.0, error="HTTP 429")
    out = summarise(SPEC, [early, late, cut, failed], wall_s=21.0)
    assert out["decode_tokens_per_s"] == pytest.approx(5 / 10)  # 12, 13, 14, 15, 19.5
    assert (out["sent"], out["completed"], out["unfinished"], out["failed"]) == (4, 2, 1, 1)
    assert out["ttft_s"]["mean"] == pytest.approx((2.0 + 1.5) / 2)  # first tokens at 13 and 19.5
    assert out["tpot_s"]["mean"] == pytest.approx((7.0 + 1.0 + 1.0) / 3)  # gaps ending at 12, 14, 15
    assert out["e2e_s"]["mean"] == pytest.approx(8.0)  # only `early` and `late` finished: at 12 and 15
    assert out["drained_decode_tokens_per_s"] is None  # one request never finished
    assert out["errors"] == ["HTTP 429"]
