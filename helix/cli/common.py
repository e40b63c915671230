"""Options shared by several commands: loading a cluster, a model and a capacity model."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from helix.errors import HelixInputError
from helix.perf.base import CapacityModel
from helix.perf.factory import CAPACITY_KINDS, capacity_model_for
from helix.reference import resolve_profiles_dir
from helix.specs.cluster import ClusterSpec
from helix.specs.loading import load_cluster
from helix.specs.model import ModelSpec, load_model_spec

ClusterOpt = typer.Option(..., "--cluster", "-c", help="Cluster file (.yaml, or Helix .ini) or bundled name.")
ModelOpt = typer.Option(..., "--model", "-m", help="Built-in model name or a Hugging Face config.json / dir.")
ProfilesOpt = typer.Option(
    None,
    "--profiles",
    help="Profile-table directory (`helix profile` writes one), or `helix` for Helix's bundled tables.",
)
CapacityOpt = typer.Option("auto", "--capacity", help="Capacity model: auto | profile | roofline.")
HelixUnitsOpt = typer.Option(
    True,
    "--helix-units/--si-units",
    help="Helix INI files: read bandwidths as Helix does (bits taken as bytes) to reproduce its numbers.",
)


def load_inputs(
    cluster_path: str,
    model_name: str,
    profiles: Path | None,
    capacity_kind: str,
    helix_units: bool = True,
    extrapolate: bool = False,
) -> tuple[ClusterSpec, ModelSpec, CapacityModel]:
    if capacity_kind not in CAPACITY_KINDS:
        raise HelixInputError(
            f"unknown capacity model {capacity_kind!r}",
            field="--capacity",
            fix=f"use one of {', '.join(CAPACITY_KINDS)}",
        )
    profiles = resolve_profiles_dir(profiles)
    if profiles is not None and not Path(profiles).is_dir():
        raise HelixInputError(
            "not a directory",
            where=str(profiles),
            field="--profiles",
            fix="pass a directory written by `helix profile`, or `helix` for Helix's bundled tables",
        )
    cluster = load_cluster(cluster_path, helix_units=helix_units)
    model = load_model_spec(model_name)
    capacity = capacity_model_for(
        cluster, model, profiles_dir=profiles, kind=capacity_kind, extrapolate=extrapolate
    )
    return cluster, model, capacity


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr for a while, so that solver libraries printing banners from C code
    cannot mix with a command's JSON output on stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check_number(
    flag: str,
    value: float | int | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    fix: str = "",
) -> None:
    """Raise a `HelixInputError` naming `flag` unless `value` is finite and within the given interval."""
    if value is None:
        return
    inside = math.isfinite(value)
    if low is not None:
        inside = inside and (value > low if low_open else value >= low)
    if high is not None:
        inside = inside and (value < high if high_open else value <= high)
    if inside:
        return
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    expected = " and ".join(parts) or "finite"
    raise HelixInputError(
        f"must be {expected}, got {value:g}", field=flag, fix=fix or f"pass {flag} with a value {expected}"
    )


def check_choice(flag: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise HelixInputError(f"unknown value {value!r}", field=flag, fix=f"use one of {', '.join(choices)}")


def check_output_path(flag: str, path: Path | None, *, directory: bool = False) -> None:
    """Fail before any work when an output path cannot be written: try it (creating missing parent
    directories, which the command would create anyway) and leave no file behind."""
    if path is None:
        return
    path = Path(path)
    try:
        if path.exists() and path.is_dir() != directory:
            raise IsADirectoryError(21, "is a directory" if path.is_dir() else "is a file, not a directory")
        folder = path if directory else path.parent
        folder.mkdir(parents=True, exist_ok=True)
        probe = path if not directory else folder / ".helix-write-check"
        existed = probe.exists()
        with open(probe, "a"):
            pass
        if not existed:
            probe.unlink()
    except OSError as exc:
        raise HelixInputError(
            f"cannot write here ({exc.strerror or exc})",
            where=str(path),
            field=flag,
            fix="choose a path in a directory you can write to",
        ) from None
