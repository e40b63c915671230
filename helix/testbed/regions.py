"""A cluster spec's regions on the test bed: one emulated host per region, inter-region bandwidth as rates.

Each region of the spec becomes one host (namespace) holding all of that region's plan nodes: its Ray
node advertises ``helix_node_<n>`` for each of them, so the region's workers share a host and talk
unshaped, as inside a datacenter. Traffic from region a to region b is limited to the bandwidth of the
spec's links from a's nodes to b's nodes (their minimum, in Mbit/s), shared by all of them: one
shaped class per region pair, like one WAN link between two sites. The coordinator lives on its
region's host. Latency is not emulated (no ``netem`` here); it stays in the spec and the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from helix.errors import HelixInputError
from helix.specs.cluster import COORDINATOR, ClusterSpec
from helix.testbed.netns import HostSpec, TestBed


@dataclass(frozen=True, slots=True)
class RegionLayout:
    """Which host each region and plan node is on, and each host's Ray resources."""

    host_of_region: dict[str, str]
    host_of_node: dict[str, str]
    coordinator_host: str
    resources: dict[str, dict[str, float]]


def region_testbed(
    cluster: ClusterSpec, prefix: str, *, nodes: set[str] | None = None
) -> tuple[TestBed, RegionLayout]:
    """A test bed with one host per region of `cluster` (only regions of `nodes`, when given, plus the
    coordinator's), and its layout."""
    used = [n for n in cluster.nodes if nodes is None or n.name in nodes]
    regions = list(dict.fromkeys([cluster.coordinator_region, *(n.region for n in used)]))
    regions = [r for r in regions if r]
    if not regions:
        raise HelixInputError("the cluster has no regions", field="regions", fix="give nodes regions")
    host_of_region = {region: f"r{i}" for i, region in enumerate(regions)}
    rates: dict[tuple[str, str], float] = {}
    for link in cluster.links:
        a, b = _region(cluster, link.src), _region(cluster, link.dst)
        if a == b or a not in host_of_region or b not in host_of_region:
            continue
        mbit = link.bandwidth_bytes_per_s * 8 / 1e6
        rates[(a, b)] = min(rates.get((a, b), mbit), mbit)
    bed = TestBed(prefix, tuple(HostSpec(host_of_region[r], r) for r in regions), rates)
    host_of_node = {n.name: host_of_region[n.region] for n in used}
    resources: dict[str, dict[str, float]] = {host: {} for host in host_of_region.values()}
    for node, host in host_of_node.items():
        resources[host][f"helix_node_{node}"] = 1.0
    coordinator_host = host_of_region[cluster.coordinator_region or regions[0]]
    return bed, RegionLayout(host_of_region, host_of_node, coordinator_host, resources)


def _region(cluster: ClusterSpec, end: str) -> str:
    return cluster.coordinator_region if end == COORDINATOR else cluster.node(end).region
