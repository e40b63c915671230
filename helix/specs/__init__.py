"""Specs: GPU types, models, clusters, and the units they are written in. The bottom layer."""

from helix.specs.cluster import ClusterSpec, LinkSpec, NodeSpec, RegionSpec
from helix.specs.gpu import GPUCatalog, GPUSpec, default_catalog
from helix.specs.model import ModelSpec, builtin_model, load_model_spec

__all__ = [
    "ClusterSpec",
    "GPUCatalog",
    "GPUSpec",
    "LinkSpec",
    "ModelSpec",
    "NodeSpec",
    "RegionSpec",
    "builtin_model",
    "default_catalog",
    "load_model_spec",
]
