"""Workloads: request lengths and arrival times.

Lengths come from a CSV of pairs — ``input_tokens,output_tokens`` (Helix's length files) or an Azure
trace ``TIMESTAMP,ContextTokens,GeneratedTokens`` — sampled uniformly with pairs kept together (serving.md
§3.2); a ``.csv.gz`` file is read the same way. Named datasets (``azure_conversation``, ``azure_code``,
``alpaca``, ``sharegpt``) resolve to the reference traces (the two Azure ones are bundled in the package).

Arrivals (online mode), all over [0, duration_s):
- Poisson at `rate_per_s`: exponential gaps;
- gamma: gaps ~ Gamma(shape 1/cv², mean 1/rate) — cv > 1 is burstier than Poisson;
- Helix's Azure buckets (§3.1): counts per 3 s bucket rescaled to mean 3·rate, one bucket drawn uniformly
  with replacement per 3 s interval, rounded with a carried remainder, arrivals uniform in the interval;
- an Azure trace's own timestamps (relative to its first request).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from helix.errors import HelixInputError
from helix.reference import reference_file
from helix.specs.limits import MAX_TRACE_FILE_BYTES, read_input_text, short_repr

DATASETS = ("azure_conversation", "azure_code", "alpaca", "sharegpt")
BUCKET_S = 3.0


@dataclass(frozen=True)
class Lengths:
    """Paired prompt/output token counts, plus the trace's arrival times when it has them."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    source: str
    times_s: np.ndarray | None = None

    def sample(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        index = rng.integers(0, len(self.prompt_tokens), size=count)
        return self.prompt_tokens[index], self.output_tokens[index]


def _parse_time(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return datetime.fromisoformat(text.strip()[:26]).timestamp()
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _token_count(text: str) -> int:
    """A whole token count (``12`` or ``12.0``; ``inf``, ``nan`` and ``2.7`` are errors)."""
    value = float(text)
    if not math.isfinite(value) or value != int(value):
        raise ValueError(text)
    return int(value)


def _dataset_path(name: str) -> Path:
    key = name.replace("-", "_")
    key = {"azure_conv": "azure_conversation", "conversation": "azure_conversation"}.get(key, key)
    return reference_file("traces", f"lengths_{key}.csv")


def load_lengths(name_or_path: str | Path) -> Lengths:
    """Lengths from a named dataset or a CSV file (see the module docstring)."""
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path).replace("-", "_") in (*DATASETS, "azure_conv"):
        path = _dataset_path(str(name_or_path))
    where = str(path)
    if not path.exists():
        raise HelixInputError(
            "no such file, and not a bundled dataset",
            where=where,
            field="--workload",
            fix=f"give a CSV path or one of {list(DATASETS)} (alpaca and sharegpt are not bundled: set "
            "$HELIX_REFERENCE_DIR to a full copy of Helix's reference data)",
        )
    text = read_input_text(path, what="workload CSV", field="--workload", max_bytes=MAX_TRACE_FILE_BYTES)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise HelixInputError(f"invalid CSV ({exc})", where=where, field="--workload") from None
    if not rows:
        raise HelixInputError("the file is empty", where=where, field="workload")
    header = [h.strip() for h in rows[0]]
    if {"ContextTokens", "GeneratedTokens"} <= set(header):
        cols, time_col = (
            (header.index("ContextTokens"), header.index("GeneratedTokens")),
            header.index("TIMESTAMP") if "TIMESTAMP" in header else None,
        )
    elif {"input_tokens", "output_tokens"} <= set(header):
        cols, time_col = (header.index("input_tokens"), header.index("output_tokens")), None
    else:
        raise HelixInputError(
            f"unknown columns {header}",
            where=where,
            field="header",
            fix="use `input_tokens,output_tokens` or Azure's `TIMESTAMP,ContextTokens,GeneratedTokens`",
        )
    prompts, outputs, times = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            p, o = _token_count(row[cols[0]]), _token_count(row[cols[1]])
            t = _parse_time(row[time_col]) if time_col is not None else 0.0
        except (ValueError, IndexError, OverflowError):
            raise HelixInputError(
                "missing or non-numeric field",
                where=f"{where}:{line}",
                field=short_repr(row),
                fix="every row needs whole, non-negative token counts (and a timestamp)",
            ) from None
        if p <= 0 or o < 0:
            raise HelixInputError(
                f"prompt tokens must be > 0 and output tokens >= 0, got {p}, {o}",
                where=f"{where}:{line}",
                field="tokens",
                fix="remove or fix the row",
            )
        prompts.append(p)
        outputs.append(max(o, 1))
        times.append(t)
    if not prompts:
        raise HelixInputError("no requests in the file", where=where, field="workload")
    times_s = None
    if time_col is not None:
        arr = np.asarray(times, dtype=float)
        times_s = np.sort(arr - arr.min())
    return Lengths(np.asarray(prompts, dtype=np.int64), np.asarray(outputs, dtype=np.int64), where, times_s)


def _check_rate(rate_per_s: float) -> None:
    if not rate_per_s > 0 or not math.isfinite(rate_per_s):
        raise HelixInputError(
            f"arrival rate must be > 0 requests/s, got {rate_per_s}",
            field="rate",
            fix="pass a positive --rate",
        )


def poisson_arrivals(rate_per_s: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    return gamma_arrivals(rate_per_s, 1.0, duration_s, rng)


def gamma_arrivals(rate_per_s: float, cv: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Renewal process with Gamma(1/cv², cv²/rate) gaps (cv = 1: Poisson)."""
    _check_rate(rate_per_s)
    if not cv > 0:
        raise HelixInputError(f"cv must be > 0, got {cv}", field="cv")
    shape = 1.0 / cv**2
    expected = int(rate_per_s * duration_s * 1.2 + 50)
    times = np.cumsum(rng.gamma(shape, 1.0 / (shape * rate_per_s), size=expected))
    while times[-1] < duration_s:
        more = np.cumsum(rng.gamma(shape, 1.0 / (shape * rate_per_s), size=expected)) + times[-1]
        times = np.concatenate([times, more])
    return times[times < duration_s]


def load_bucket_counts(name_or_path: str | Path) -> np.ndarray:
    """Per-3-second request counts (``bucket_start_s,requests``), e.g. ``azure_conversation``."""
    path = Path(name_or_path)
    if not path.exists():
        path = reference_file("traces", f"arrivals_{str(name_or_path).replace('-', '_')}_per3s.csv")
    text = read_input_text(path, what="arrival-bucket CSV", field="--buckets", max_bytes=MAX_TRACE_FILE_BYTES)
    try:
        data = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, ndmin=2)
        if data.shape[1] < 2 or not np.isfinite(data).all():
            raise ValueError("needs two finite numeric columns")
    except ValueError as exc:
        raise HelixInputError(
            f"cannot read arrival buckets ({exc})",
            where=str(path),
            field="--buckets",
            fix="give `azure_conversation`, `azure_code` or a CSV of `bucket_start_s,requests` rows",
        ) from None
    if data.shape[0] == 0:
        raise HelixInputError("no buckets in the file", where=str(path), field="--buckets")
    counts = data[:, 1]
    if (counts < 0).any() or counts.sum() <= 0:
        raise HelixInputError(
            "bucket counts must be >= 0 and not all zero", where=str(path), field="requests"
        )
    return counts


def bucket_arrivals(
    counts: np.ndarray, rate_per_s: float, duration_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Helix's resampled Azure arrivals (see the module docstring)."""
    _check_rate(rate_per_s)
    scaled = counts * (BUCKET_S * rate_per_s / counts.mean())
    times, carry = [], 0.0
    for start in np.arange(0.0, duration_s, BUCKET_S):
        want = scaled[rng.integers(0, len(scaled))] + carry
        m = max(0, int(round(want)))
        carry = want - m
        times.extend(np.sort(rng.uniform(start, min(start + BUCKET_S, duration_s), size=m)))
    return np.asarray(times, dtype=float)
