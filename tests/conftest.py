"""Shared fixtures: Helix's reference data (bundled in the package) and its clusters."""

from __future__ import annotations

import pytest

from helix.perf.helix_profile import profile_capacity_model
from helix.reference import BUNDLED_REFERENCE_DIR
from helix.specs.helix_ini import load_helix_ini
from helix.specs.model import builtin_model

# The reference data ships inside the package, so nothing is ever skipped for want of it; the marker stays
# for tests that name their dependency on it.
needs_reference = pytest.mark.usefixtures("ref")

HELIX_CLUSTER_MODELS = {
    "single24": "llama-2-70b",
    "3cluster24": "llama-2-70b",
    "cluster42": "llama-2-70b",
    "cluster10": "llama-1-30b",
}


@pytest.fixture(scope="session")
def ref():
    assert (BUNDLED_REFERENCE_DIR / "profiles" / "profile_tables.json").is_file()
    return BUNDLED_REFERENCE_DIR


@pytest.fixture(scope="session")
def helix_setup(ref):
    """name → (cluster, model, profile capacity model) for Helix's four clusters."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cluster = load_helix_ini(ref / "clusters" / f"{name}.ini")
            model = builtin_model(HELIX_CLUSTER_MODELS[name])
            capacity = profile_capacity_model(ref / "profiles", model, cluster.composition())
            cache[name] = (cluster, model, capacity)
        return cache[name]

    return get
