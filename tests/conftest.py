"""Shared fixtures: Helix's reference data (skipped when absent) and small clusters."""

from __future__ import annotations

import pytest

from helix.perf.helix_profile import profile_capacity_model
from helix.reference import reference_available, reference_dir
from helix.specs.helix_ini import load_helix_ini
from helix.specs.model import builtin_model

needs_reference = pytest.mark.skipif(not reference_available(), reason="Helix reference data not found")

HELIX_CLUSTER_MODELS = {
    "single24": "llama-2-70b",
    "3cluster24": "llama-2-70b",
    "cluster42": "llama-2-70b",
    "cluster10": "llama-1-30b",
}


@pytest.fixture(scope="session")
def ref():
    if not reference_available():
        pytest.skip("Helix reference data not found")
    return reference_dir()


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
