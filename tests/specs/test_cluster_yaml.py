import pytest

from helix.errors import HelixInputError
from helix.specs.cluster import COORDINATOR
from helix.specs.cluster_yaml import cluster_from_dict, load_cluster_yaml
from helix.specs.loading import load_cluster

BASE = {
    "name": "t",
    "coordinator": {"region": "east"},
    "regions": {
        "east": {"bandwidth_gbps": 8, "latency_ms": 1},
        "west": {"bandwidth_gbps": 16, "latency_ms": 2},
    },
    "inter_region": {"bandwidth_gbps": 0.8, "latency_ms": 40},
    "nodes": [
        {"name": "a", "gpu": "A100-80GB", "region": "east"},
        {"name": "l4", "gpu": "L4", "region": "west", "count": 2},
    ],
}


def make(**changes):
    data = {**BASE, **changes}
    return cluster_from_dict(data, where="c.yaml")


def test_expands_counts_and_builds_full_mesh():
    c = make()
    assert c.node_names == ("a", "l4-0", "l4-1")
    # 4 endpoints (3 nodes + coordinator) → 12 directed links.
    assert len(c.links) == 12
    assert c.link("l4-0", "l4-1").bandwidth_bytes_per_s == 16e9 / 8
    assert c.link("a", "l4-0").bandwidth_bytes_per_s == 0.8e9 / 8
    assert c.link("a", "l4-0").latency_s == pytest.approx(0.040)
    assert c.link(COORDINATOR, "a").bandwidth_bytes_per_s == 1e9


def test_link_override_directed_and_symmetric():
    c = make(links=[{"src": "a", "dst": "l4-0", "bandwidth_gbps": 4, "latency_ms": 5, "symmetric": False}])
    assert c.link("a", "l4-0").bandwidth_bytes_per_s == 0.5e9
    assert c.link("l4-0", "a").bandwidth_bytes_per_s == 0.1e9
    c = make(links=[{"src": "a", "dst": "l4-0", "bandwidth_gbps": 4}])
    assert c.link("l4-0", "a").bandwidth_bytes_per_s == 0.5e9


def test_nic_override():
    c = make(nodes=[{"name": "t", "gpu": "T4", "nic_gbps": 32, "region": "east"}])
    assert c.node("t").nic_bytes_per_s == 4e9


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"nodes": [{"name": "x", "gpu": "NoSuchGPU", "region": "east"}]}, "nodes[0].gpu"),
        ({"nodes": [{"gpu": "T4"}]}, "nodes[0].name"),
        ({"nodes": [{"name": "x", "gpu": "T4", "region": "mars"}]}, "nodes[0].region"),
        ({"regions": {"east": {"bandwidth_gbps": -3}}}, "regions.east.bandwidth_gbps"),
        ({"regions": {"east": {"latency_ms": 1}}}, "regions.east.bandwidth_gbps"),
        ({"links": [{"src": "a", "dst": "ghost", "bandwidth_gbps": 1}]}, "links[0].dst"),
        ({"coordinator": {"region": "nowhere"}}, "coordinator.region"),
        ({"nodes": []}, "nodes"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_fields_are_named(changes, field):
    with pytest.raises(HelixInputError) as info:
        make(**changes)
    assert f"c.yaml: {field}" in str(info.value)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("nodes: [\n")
    with pytest.raises(HelixInputError, match="invalid YAML"):
        load_cluster_yaml(path)


def test_bundled_cluster_loads_by_name():
    c = load_cluster("geo-mixed")
    assert len(c.nodes) == 14 and {n.region for n in c.nodes} == {"us-east", "us-west"}


def test_missing_file_names_bundled():
    with pytest.raises(HelixInputError, match="geo-mixed"):
        load_cluster("no/such/cluster.yaml")
