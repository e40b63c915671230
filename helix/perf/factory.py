"""Pick the capacity model for a cluster: measured profiles when available, else the roofline."""

from __future__ import annotations

from pathlib import Path

from helix.perf.base import CapacityModel
from helix.perf.helix_profile import profile_capacity_model
from helix.perf.roofline import RooflineCapacityModel
from helix.reference import resolve_profiles_dir
from helix.specs.cluster import ClusterSpec
from helix.specs.gpu import default_catalog
from helix.specs.model import ModelSpec

CAPACITY_KINDS = ("auto", "profile", "roofline")


def capacity_model_for(
    cluster: ClusterSpec,
    model: ModelSpec,
    *,
    profiles_dir: str | Path | None = None,
    kind: str = "auto",
    extrapolate: bool = False,
) -> CapacityModel:
    """The capacity model for `model` on `cluster` (typical throughput depends on its composition).

    `kind`: ``profile`` needs profile tables (`profiles_dir`, or the cluster file's ``profiles:``;
    ``helix`` names Helix's bundled tables for LLaMA-2-70B / LLaMA-1-30B);
    ``roofline`` uses GPU specs only; ``auto`` takes profiles when a directory is known.
    """
    directory = resolve_profiles_dir(profiles_dir or cluster.profiles_dir)
    catalog = default_catalog().with_types(list({n.gpu.name: n.gpu for n in cluster.nodes}.values()))
    if kind == "roofline" or (kind == "auto" and directory is None):
        return RooflineCapacityModel(model, cluster.composition(), catalog=catalog)
    if directory is None:
        from helix.errors import HelixInputError

        raise HelixInputError(
            "profile capacity model needs profile tables",
            field="--profiles",
            fix="pass --profiles DIR (written by `helix profile`) or --capacity roofline",
        )
    return profile_capacity_model(
        directory, model, cluster.composition(), extrapolate=extrapolate, catalog=catalog
    )
