"""Profile tables: measured per-layer batch times and KV capacity, in Helix's file format.

A profile directory holds ``profile_tables.json`` ({model_key: {gpu_key: {machine_type, max_layers,
kv_blocks_by_layers, prompt_max_requests_by_layers, decode_max_tokens_by_layers}}}) and, for each pair,
``<model_key>/<gpu_key>/prompt_bs2time.csv`` (rows ``tokens,ms``: time for ONE layer to run a prompt batch
of that many tokens) and ``decode_bs2time.csv`` (rows ``batch,ms``: one layer, one decode step of that many
sequences). `helix profile` writes the same format.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from helix.errors import HelixInputError
from helix.perf.base import Curve


@dataclass(frozen=True)
class GPUProfile:
    """One (model, GPU type) profile. Times in the curves are seconds."""

    gpu_key: str
    machine_type: str
    max_layers: int
    kv_blocks_by_layers: tuple[int, ...]  # index k-1
    prompt_time_s: Curve
    decode_time_s: Curve
    prompt_max_requests_by_layers: tuple[int, ...] = ()
    decode_max_tokens_by_layers: tuple[int, ...] = ()

    def kv_blocks(self, num_layers: int) -> int:
        return self.kv_blocks_by_layers[num_layers - 1]


def _read_curve(path: Path, what: str, extrapolate: bool) -> Curve:
    try:
        with path.open() as handle:
            rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
        points = [(float(x), float(ms) / 1000.0) for x, ms in rows]
    except OSError as exc:
        raise HelixInputError(
            f"cannot read ({exc.strerror})",
            where=str(path),
            fix="run `helix profile` or point --profiles at a profile directory",
        ) from None
    except ValueError:
        raise HelixInputError("rows must be `x,ms` numbers", where=str(path)) from None
    return Curve(points, what=what, extrapolate=extrapolate)


def _by_layers(raw: dict[str, int] | None, max_layers: int) -> tuple[int, ...]:
    if not raw:
        return ()
    return tuple(int(raw[str(k)]) for k in range(1, max_layers + 1))


def load_profiles(
    directory: str | Path, model_key: str, *, extrapolate: bool = False
) -> dict[str, GPUProfile]:
    """All GPU profiles of one model in a profile directory, keyed by GPU key (e.g. ``a100``)."""
    directory = Path(directory)
    tables_path = directory / "profile_tables.json"
    try:
        tables = json.loads(tables_path.read_text())
    except OSError:
        raise HelixInputError(
            "profile_tables.json not found",
            where=str(directory),
            fix="point at a directory written by `helix profile`",
        ) from None
    except json.JSONDecodeError as exc:
        raise HelixInputError(f"invalid JSON ({exc})", where=str(tables_path)) from None
    if model_key not in tables:
        raise HelixInputError(
            f"no profiles for model {model_key!r}",
            where=str(tables_path),
            fix=f"profiled models: {sorted(tables)}; run `helix profile` for this model",
        )
    profiles = {}
    for gpu_key, table in tables[model_key].items():
        base = directory / model_key / gpu_key
        max_layers = int(table["max_layers"])
        profiles[gpu_key] = GPUProfile(
            gpu_key=gpu_key,
            machine_type=str(table.get("machine_type", gpu_key)),
            max_layers=max_layers,
            kv_blocks_by_layers=_by_layers(table["kv_blocks_by_layers"], max_layers),
            prompt_time_s=_read_curve(base / "prompt_bs2time.csv", f"{gpu_key} prompt tokens", extrapolate),
            decode_time_s=_read_curve(base / "decode_bs2time.csv", f"{gpu_key} decode batch", extrapolate),
            prompt_max_requests_by_layers=_by_layers(table.get("prompt_max_requests_by_layers"), max_layers),
            decode_max_tokens_by_layers=_by_layers(table.get("decode_max_tokens_by_layers"), max_layers),
        )
    return profiles
