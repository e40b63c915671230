"""Options shared by several commands: loading a cluster, a model and a capacity model."""

from __future__ import annotations

import contextlib
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
