"""Cluster specs: nodes, regions, directed network links and the coordinator.

The coordinator is the host that sends prompts in and receives tokens back; in link lists it is the
pseudo-node `COORDINATOR`. Every link is directed and explicit after loading: the YAML loader expands
region defaults into a full mesh, then applies per-link overrides.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

from helix.errors import HelixInputError
from helix.specs.gpu import GPUSpec

COORDINATOR = "coordinator"


def natural_sort_key(name: str) -> tuple:
    """Sort key putting ``n2`` before ``n10`` (digit runs compare as numbers)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


@dataclass(frozen=True, slots=True)
class RegionSpec:
    """A region's default links between two of its nodes."""

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A GPU node (possibly several GPUs used as one pipeline stage)."""

    name: str
    gpu: GPUSpec
    region: str
    nic_bytes_per_s: float

    @property
    def gpu_type(self) -> str:
        return self.gpu.name


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A directed network link. `src`/`dst` are node names or `COORDINATOR`."""

    src: str
    dst: str
    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True)
class ClusterSpec:
    """A cluster: its nodes, every directed link, and where the coordinator is.

    Attributes:
        name: a label (file stem by default).
        nodes: the GPU nodes, in file order.
        links: directed links, including coordinator → node and node → coordinator ones.
        coordinator_region: the coordinator's region.
        coordinator_nic_bytes_per_s: the coordinator's NIC.
        profiles_dir: a profile-table directory named by the cluster file, if any.
    """

    name: str
    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...]
    coordinator_region: str = ""
    coordinator_nic_bytes_per_s: float = 1.25e9
    profiles_dir: str | None = None
    regions: tuple[RegionSpec, ...] = field(default=())

    def __post_init__(self) -> None:
        validate_cluster(self)

    @cached_property
    def node_by_name(self) -> dict[str, NodeSpec]:
        return {node.name: node for node in self.nodes}

    @cached_property
    def link_by_pair(self) -> dict[tuple[str, str], LinkSpec]:
        return {(link.src, link.dst): link for link in self.links}

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)

    def node(self, name: str) -> NodeSpec:
        return self.node_by_name[name]

    def link(self, src: str, dst: str) -> LinkSpec | None:
        return self.link_by_pair.get((src, dst))

    def composition(self) -> dict[str, int]:
        """GPU type name → number of nodes of that type."""
        return dict(Counter(node.gpu.name for node in self.nodes))

    def total_vram_bytes(self) -> float:
        return sum(node.gpu.vram_bytes for node in self.nodes)


def validate_cluster(cluster: ClusterSpec, where: str = "") -> None:
    """Field-level checks: unique names, links between known nodes, positive numbers, coordinator links."""
    if not cluster.nodes:
        raise HelixInputError("the cluster has no nodes", where=where, field="nodes", fix="add nodes")
    seen: set[str] = set()
    for i, node in enumerate(cluster.nodes):
        if node.name in seen or node.name == COORDINATOR:
            raise HelixInputError(
                f"duplicate or reserved node name {node.name!r}",
                where=where,
                field=f"nodes[{i}].name",
                fix="give every node a unique name",
            )
        seen.add(node.name)
        if not (node.nic_bytes_per_s > 0 and math.isfinite(node.nic_bytes_per_s)):
            raise HelixInputError("NIC speed must be > 0", where=where, field=f"nodes[{i}].nic_gbps")
    for i, link in enumerate(cluster.links):
        for end in (link.src, link.dst):
            if end != COORDINATOR and end not in seen:
                raise HelixInputError(
                    f"link to unknown node {end!r}",
                    where=where,
                    field=f"links[{i}]",
                    fix=f"use one of the node names, or {COORDINATOR!r}",
                )
        if link.src == link.dst:
            raise HelixInputError("a link from a node to itself", where=where, field=f"links[{i}]")
        ok = link.bandwidth_bytes_per_s > 0 and link.latency_s >= 0
        if not (ok and math.isfinite(link.bandwidth_bytes_per_s) and math.isfinite(link.latency_s)):
            raise HelixInputError(
                f"bandwidth must be finite and > 0 and latency finite and >= 0, got "
                f"{link.bandwidth_bytes_per_s:g} bytes/s and {link.latency_s:g} s",
                where=where,
                field=f"links[{i}]",
                fix="use positive numbers",
            )
    if not any(link.src == COORDINATOR for link in cluster.links):
        raise HelixInputError(
            "the coordinator has no outgoing link to any node",
            where=where,
            field="coordinator",
            fix="give the coordinator a region or links to nodes",
        )
    if not any(link.dst == COORDINATOR for link in cluster.links):
        raise HelixInputError(
            "no node has a link back to the coordinator",
            where=where,
            field="coordinator",
            fix="give the coordinator a region or links from nodes",
        )
