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


def node_testbed(
    cluster: ClusterSpec, prefix: str, *, nodes: list[str] | None = None, coordinator_host: str = "co"
) -> tuple[TestBed, RegionLayout]:
    """A test bed with one host per plan node (``h0``, ``h1``, ...) plus the coordinator's host; traffic
    between hosts of different regions is limited to the spec's link bandwidth for that node pair, as
    the simulator models it (one shaped class per destination host on each host's egress)."""
    used = [n.name for n in cluster.nodes if nodes is None or n.name in nodes]
    host_of_node = {node: f"h{i}" for i, node in enumerate(used)}
    hosts = (HostSpec(coordinator_host, coordinator_host), *(HostSpec(h, h) for h in host_of_node.values()))
    end_of_host = {coordinator_host: COORDINATOR, **{h: n for n, h in host_of_node.items()}}
    rates: dict[tuple[str, str], float] = {}
    for a, src in end_of_host.items():
        for b, dst in end_of_host.items():
            link = cluster.link(src, dst) if a != b else None
            if link is not None and _region(cluster, src) != _region(cluster, dst):
                rates[(a, b)] = link.bandwidth_bytes_per_s * 8 / 1e6
    bed = TestBed(prefix, hosts, rates)
    resources = {coordinator_host: {}, **{h: {f"helix_node_{n}": 1.0} for n, h in host_of_node.items()}}
    region_hosts: dict[str, str] = {}
    for node, host in host_of_node.items():
        region_hosts.setdefault(cluster.node(node).region, host)
    return bed, RegionLayout(region_hosts, host_of_node, coordinator_host, resources)
