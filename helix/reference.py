"""Where Helix's published reference data lives (profiles, clusters, placements, traces).

The data is not shipped with the package; benchmarks and tests read it from ``$HELIX_REFERENCE_DIR`` or,
by default, ``<repository>/../shared/data/helix-reference``.
"""

from __future__ import annotations

import os
from pathlib import Path


def reference_dir() -> Path:
    env = os.environ.get("HELIX_REFERENCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "helix-reference"


def reference_available() -> bool:
    return (reference_dir() / "profiles" / "profile_tables.json").exists()
