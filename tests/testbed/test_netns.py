"""The test bed itself: addresses, isolation, region shaping, teardown by PID; the cluster-spec mapping."""

from __future__ import annotations

import os
import sys
import time

import pytest

from helix.specs.cluster import COORDINATOR, ClusterSpec, LinkSpec, NodeSpec
from helix.specs.gpu import default_catalog
from helix.testbed.netns import HostSpec, TestBed, netns_available
from helix.testbed.regions import region_testbed

REASON = netns_available()
needs_netns = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")

SERVER = """
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5000)); srv.listen(4)
while True:
    conn, _ = srv.accept()
    total = 0
    while (chunk := conn.recv(65536)):
        total += len(chunk)
    conn.close()
"""

CLIENT = """
import socket, sys, time
started = time.perf_counter()
try:
    with socket.create_connection((sys.argv[1], 5000), timeout=5) as sock:
        sock.sendall(b"x" * int(sys.argv[2]))
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    print(f"{time.perf_counter() - started:.3f}")
except OSError as exc:
    print("refused", type(exc).__name__)
"""


@pytest.fixture()
def bed():
    testbed = TestBed(
        f"hxt{os.getpid()}",
        (HostSpec("a", "east"), HostSpec("b", "east"), HostSpec("c", "west")),
        {("east", "west"): 4.0, ("west", "east"): 4.0},
    )
    testbed.up()
    try:
        yield testbed
    finally:
        testbed.down()
        assert testbed.existing_namespaces() == [] and testbed.processes() == []


def _send_s(bed: TestBed, src: str, dst_address: str, nbytes: int) -> str:
    result = bed.run(src, [sys.executable, "-c", CLIENT, dst_address, str(nbytes)], timeout_s=60)
    return result.stdout.strip()


@needs_netns
def test_hosts_reach_each_other_and_inter_region_traffic_is_shaped(bed):
    for host in ("a", "c"):
        bed.spawn(host, [sys.executable, "-c", SERVER, bed.address(host)])
    time.sleep(1.0)
    intra = float(_send_s(bed, "b", bed.address("a"), 1_000_000))  # east → east: unshaped
    inter = float(_send_s(bed, "b", bed.address("c"), 1_000_000))  # east → west: 4 Mbit/s ≈ 2 s
    assert inter > 1.5, (intra, inter)
    assert intra < inter / 4, (intra, inter)
    assert _send_s(bed, "b", "127.0.0.1", 10).startswith("refused")  # a's loopback is not b's


@needs_netns
def test_down_stops_every_process_inside(bed):
    proc = bed.spawn(
        "a",
        [
            sys.executable,
            "-c",
            "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)",
        ],
    )
    time.sleep(0.5)
    assert len(bed.processes()) >= 2
    bed.down()
    assert bed.processes() == [] and bed.existing_namespaces() == []
    assert proc.wait(timeout=5) is not None


def test_region_testbed_maps_regions_and_bandwidth():
    gpu = default_catalog().get("T4")
    nodes = (
        NodeSpec("e0", gpu, "east", 1e9),
        NodeSpec("e1", gpu, "east", 1e9),
        NodeSpec("w0", gpu, "west", 1e9),
    )
    ends = [COORDINATOR, "e0", "e1", "w0"]
    region = {COORDINATOR: "east", "e0": "east", "e1": "east", "w0": "west"}
    links = tuple(
        LinkSpec(a, b, 1.25e9 if region[a] == region[b] else 625_000.0, 0.03)
        for a in ends
        for b in ends
        if a != b
    )
    cluster = ClusterSpec("geo", nodes, links, coordinator_region="east")
    bed, layout = region_testbed(cluster, "hxr")
    assert [h.region for h in bed.hosts] == ["east", "west"]
    assert bed.rates_mbit == {("east", "west"): 5.0, ("west", "east"): 5.0}
    assert layout.host_of_node == {"e0": "r0", "e1": "r0", "w0": "r1"}
    assert layout.resources == {
        "r0": {"helix_node_e0": 1.0, "helix_node_e1": 1.0},
        "r1": {"helix_node_w0": 1.0},
    }
    assert layout.coordinator_host == "r0"


def test_node_testbed_shapes_each_cross_region_pair():
    from helix.testbed.regions import node_testbed

    gpu = default_catalog().get("T4")
    nodes = (NodeSpec("e0", gpu, "east", 1e9), NodeSpec("w0", gpu, "west", 1e9))
    region = {COORDINATOR: "east", "e0": "east", "w0": "west"}
    links = tuple(
        LinkSpec(a, b, 1.25e9 if region[a] == region[b] else 500_000.0, 0.0)
        for a in region
        for b in region
        if a != b
    )
    bed, layout = node_testbed(ClusterSpec("geo", nodes, links, coordinator_region="east"), "hxn")
    assert [h.name for h in bed.hosts] == ["co", "h0", "h1"]
    assert bed.rates_mbit == {("co", "h1"): 4.0, ("h0", "h1"): 4.0, ("h1", "co"): 4.0, ("h1", "h0"): 4.0}
    assert layout.resources == {"co": {}, "h0": {"helix_node_e0": 1.0}, "h1": {"helix_node_w0": 1.0}}
