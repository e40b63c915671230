"""Membership: the live part of a cluster spec.

The cluster spec lists every node that may serve; at any time only some are members (a node fails,
joins or is drained). `restrict` gives the spec of the live members, with every link between them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from helix.errors import HelixInputError
from helix.specs.cluster import COORDINATOR, ClusterSpec


def restrict(cluster: ClusterSpec, members: Iterable[str]) -> ClusterSpec:
    """The sub-cluster of `members` (node names of `cluster`), keeping their links and the coordinator's."""
    keep = set(members)
    unknown = sorted(keep - set(cluster.node_names))
    if unknown:
        raise HelixInputError(
            f"unknown node(s) {', '.join(unknown)}",
            field="node",
            fix=f"name nodes of the cluster spec: {', '.join(cluster.node_names)}",
        )
    if not keep:
        raise HelixInputError("no live node left", field="members", fix="keep at least one node")
    live = keep | {COORDINATOR}
    return replace(
        cluster,
        nodes=tuple(n for n in cluster.nodes if n.name in keep),
        links=tuple(link for link in cluster.links if link.src in live and link.dst in live),
    )


def rename(cluster: ClusterSpec, names: dict[str, str]) -> ClusterSpec:
    """`cluster` with nodes renamed by `names` (others keep their names); links follow."""

    def new(name: str) -> str:
        return names.get(name, name)

    return replace(
        cluster,
        nodes=tuple(replace(n, name=new(n.name)) for n in cluster.nodes),
        links=tuple(replace(link, src=new(link.src), dst=new(link.dst)) for link in cluster.links),
    )
