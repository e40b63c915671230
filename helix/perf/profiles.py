"""Profile tables: measured per-layer batch times and KV capacity, in Helix's file format.

A profile directory holds ``profile_tables.json`` ({model_key: {gpu_key: {machine_type, max_layers,
kv_blocks_by_layers, prompt_max_requests_by_layers, decode_max_tokens_by_layers}}}) and, for each pair,
``<model_key>/<gpu_key>/prompt_bs2time.csv`` (rows ``tokens,ms``: time for ONE layer to run a prompt batch
of that many tokens) and ``decode_bs2time.csv`` (rows ``batch,ms``: one layer, one decode step of that many
sequences). `helix profile` writes the same format.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from helix.errors import HelixInputError
from helix.perf.base import Curve
from helix.specs.limits import MAX_CONFIG_FILE_BYTES, parse_json_text, read_input_text, whole_number


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
    if not path.is_file():
        raise HelixInputError(
            "cannot read (No such file or directory)",
            where=str(path),
            fix="run `helix profile` or point --profiles at a profile directory",
        )
    text = read_input_text(path, what="profile table", max_bytes=MAX_CONFIG_FILE_BYTES)
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row and not row[0].startswith("#")]
        points = [(float(x), float(ms) / 1000.0) for x, ms in rows]
        if not points or not all(math.isfinite(x) and math.isfinite(t) and t >= 0 for x, t in points):
            raise ValueError(path)
    except (ValueError, csv.Error):
        raise HelixInputError(
            "rows must be `x,ms` finite numbers", where=str(path), fix="re-create it with `helix profile`"
        ) from None
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
    if not tables_path.is_file():
        raise HelixInputError(
            "profile_tables.json not found",
            where=str(directory),
            fix="point at a directory written by `helix profile`, or pass `--profiles helix`",
        )
    text = read_input_text(tables_path, what="profile-table file", max_bytes=MAX_CONFIG_FILE_BYTES)
    tables = parse_json_text(text, where=str(tables_path))
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise HelixInputError(
            "must map model → GPU → table", where=str(tables_path), fix="re-create it with `helix profile`"
        )
    if model_key not in tables:
        raise HelixInputError(
            f"no profiles for model {model_key!r}",
            where=str(tables_path),
            fix=f"profiled models: {sorted(tables)}; run `helix profile` for this model",
        )
    profiles = {}
    for gpu_key, table in tables[model_key].items():
        profiles[gpu_key] = _profile(directory, model_key, gpu_key, table, tables_path, extrapolate)
    return profiles


def _profile(
    directory: Path, model_key: str, gpu_key: str, table: object, tables_path: Path, extrapolate: bool
) -> GPUProfile:
    where, field = str(tables_path), f"{model_key}.{gpu_key}"
    fix = "re-create the tables with `helix profile`"
    if not isinstance(table, dict) or "max_layers" not in table or "kv_blocks_by_layers" not in table:
        raise HelixInputError("needs max_layers and kv_blocks_by_layers", where=where, field=field, fix=fix)
    base = directory / model_key / gpu_key
    max_layers = whole_number(table["max_layers"], where=where, field=f"{field}.max_layers")
    if not 0 < max_layers <= 100_000:
        raise HelixInputError(
            f"max_layers must be in [1, 100000], got {max_layers}", where=where, field=field
        )
    try:
        return GPUProfile(
            gpu_key=gpu_key,
            machine_type=str(table.get("machine_type", gpu_key)),
            max_layers=max_layers,
            kv_blocks_by_layers=_by_layers(table["kv_blocks_by_layers"], max_layers),
            prompt_time_s=_read_curve(base / "prompt_bs2time.csv", f"{gpu_key} prompt tokens", extrapolate),
            decode_time_s=_read_curve(base / "decode_bs2time.csv", f"{gpu_key} decode batch", extrapolate),
            prompt_max_requests_by_layers=_by_layers(table.get("prompt_max_requests_by_layers"), max_layers),
            decode_max_tokens_by_layers=_by_layers(table.get("decode_max_tokens_by_layers"), max_layers),
        )
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        if isinstance(exc, HelixInputError):
            raise
        raise HelixInputError(
            f"a per-layer-count table is incomplete or not whole numbers ({type(exc).__name__}: {exc})",
            where=where,
            field=field,
            fix=fix,
        ) from None
