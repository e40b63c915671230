"""Profile tables for an emulated mixed cluster, derived from this host's own `helix profile` tables.

For profile emulation (`helix.runtime.emulation`) every GPU type g of the cluster gets tables that are
this host's measured per-layer times smoothed and scaled by a factor F_g:

    P_g(t) = F_g · (p0 + p1 · t)        D_g(b) = F_g · (d0 + d1 · b)

where (d0, d1) is the least-squares line through the host's measured decode (batch, ms) rows and p1 the
least-squares slope through its prompt (tokens, ms) rows with p0 = d0, the fixed cost of a step
(`helix profile` times prompts from 250 tokens on, too far out to pin an intercept; CPU timings are
near-linear and noisy, and the lines remove the noise), and
F_g = scale × slowdown_g, with slowdown_g the type's relative slowdown and `scale` ≥ 1 making even the
fastest type slower than the host, so that contention between the emulated workers on a few cores
rarely pushes a step past its target. The tables are written on grids covering what a worker steps
(up to `max_prompt_tokens` prompt tokens, `max_decode_seqs` decodes), with KV blocks per layer count
equal to what the runtime's workers really allocate, and batch limits that do not bind before the
runtime's own, so the simulator and the emulated runtime see the same nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helix.engine.profile_io import write_profile
from helix.engine.profiler import ProfileResult
from helix.perf.profiles import load_profiles
from helix.runtime.worker_loop import MAX_STEP_TOKENS


@dataclass(frozen=True, slots=True)
class Line:
    """y = intercept + slope · x (milliseconds)."""

    intercept_ms: float
    slope_ms: float

    def __call__(self, x: float) -> float:
        return self.intercept_ms + self.slope_ms * x


def fit_line(points: Sequence[tuple[float, float]], intercept_ms: float | None = None) -> Line:
    """Least-squares line through the points with x > 0 (with the intercept given, only the slope is
    fitted); intercept and slope clamped to ≥ 0."""
    xs = np.array([x for x, _ in points if x > 0], dtype=float)
    ys = np.array([y for x, y in points if x > 0], dtype=float)
    if len(xs) < (1 if intercept_ms is not None else 2):
        raise ValueError("too few profiled points with x > 0")
    if intercept_ms is not None:
        return Line(intercept_ms, max(0.0, float(xs @ (ys - intercept_ms) / (xs @ xs))))
    slope, intercept = np.polyfit(xs, ys, 1)
    if intercept < 0:  # through the origin instead
        slope, intercept = float((xs @ ys) / (xs @ xs)), 0.0
    if slope < 0:
        slope, intercept = 0.0, float(ys.mean())
    return Line(float(intercept), float(slope))


@dataclass(frozen=True)
class HostFit:
    """The host's smoothed per-layer times (see the module docstring)."""

    prompt: Line
    decode: Line


def fit_host_profile(profile_dir: str | Path, model_key: str, gpu_key: str = "cpu") -> HostFit:
    """Fit lines to the tables `helix profile` wrote for (`model_key`, `gpu_key`) in `profile_dir`."""
    profile = load_profiles(profile_dir, model_key)[gpu_key]
    ms = 1e3
    prompt = [(x, y * ms) for x, y in zip(profile.prompt_time_s.xs, profile.prompt_time_s.ys, strict=True)]
    decode = [(x, y * ms) for x, y in zip(profile.decode_time_s.xs, profile.decode_time_s.ys, strict=True)]
    decode_line = fit_line(decode)
    return HostFit(fit_line(prompt, decode_line.intercept_ms), decode_line)


def _grid(limit: int) -> tuple[int, ...]:
    """1, 2, 4, … up to `limit` (included)."""
    out, x = [], 1
    while x < limit:
        out.append(x)
        x *= 2
    return (*out, limit)


def write_emulated_profiles(
    out_dir: str | Path,
    model_key: str,
    host: HostFit,
    factors: Mapping[str, float],
    kv_blocks_by_layers: Mapping[int, int],
    *,
    max_prompt_tokens: int = MAX_STEP_TOKENS,  # what a worker's step takes
    max_decode_seqs: int = 1024,
    prompt_tokens_per_request: int = 64,
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Write tables for each GPU type name in `factors` (its F_g); returns the written rows per type.

    Prompt batch limits allow `max_prompt_tokens / prompt_tokens_per_request` prompts per pass (the
    runtime batches prompts by tokens only); decode limits allow `max_decode_seqs` sequences.
    """
    out_dir = Path(out_dir)
    written: dict[str, dict[str, list[tuple[int, float]]]] = {}
    layers = sorted(kv_blocks_by_layers)
    prompt_requests = max(1, max_prompt_tokens // prompt_tokens_per_request)
    for gpu_name, factor in factors.items():
        prompt = [(0, 0.0)] + [(t, factor * host.prompt(t)) for t in _grid(max_prompt_tokens)]
        decode = [(0, 0.0)] + [(b, factor * host.decode(b)) for b in _grid(max_decode_seqs)]
        result = ProfileResult(
            machine_type=gpu_name,
            prompt_ms=tuple(prompt),
            decode_ms=tuple(decode),
            kv_blocks_by_layers={k: int(kv_blocks_by_layers[k]) for k in layers},
            prompt_max_requests_by_layers=dict.fromkeys(layers, prompt_requests),
            decode_max_tokens_by_layers=dict.fromkeys(layers, max_decode_seqs),
        )
        write_profile(out_dir, model_key, gpu_name.lower(), result)
        written[gpu_name] = {"prompt_ms": prompt, "decode_ms": decode}
    return written
