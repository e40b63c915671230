"""Helix's published reference data (profiles, clusters, placements, traces), bundled in the package.

The files under ``helix/data/helix_reference`` come from the Helix paper's artifact
(Thesys-lab/Helix-ASPLOS25, Apache-2.0); the Azure length and arrival traces are from Microsoft's Azure LLM
inference trace 2023 (CC-BY 4.0). See ``helix/data/helix_reference/NOTICE.md``. ``$HELIX_REFERENCE_DIR``
points at another copy with the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "helix_reference"

# `--profiles helix` (or `profiles: helix` in a cluster file) names Helix's bundled profile tables.
BUNDLED_PROFILES_NAME = "helix"


def reference_dir() -> Path:
    env = os.environ.get("HELIX_REFERENCE_DIR")
    if env:
        return Path(env)
    return BUNDLED_REFERENCE_DIR


def reference_available() -> bool:
    return (reference_dir() / "profiles" / "profile_tables.json").exists()


def resolve_profiles_dir(value: str | Path | None) -> Path | None:
    """A profile-table directory: the path itself, or Helix's bundled tables for ``helix`` (unless a folder
    of that name holding profile tables is in the way)."""
    if value is None:
        return None
    path = Path(value)
    if str(value) == BUNDLED_PROFILES_NAME and not (path / "profile_tables.json").is_file():
        return reference_dir() / "profiles"
    return path


def reference_file(*parts: str) -> Path:
    """A file of the reference data; a ``.csv`` may be stored gzip-compressed as ``.csv.gz``."""
    path = reference_dir().joinpath(*parts)
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        return path.with_name(path.name + ".gz")
    return path
