import pytest

from helix.errors import HelixInputError
from helix.specs.cluster import COORDINATOR
from helix.specs.helix_ini import eval_unit_expr, load_helix_ini, load_helix_placement


def test_unit_expressions():
    assert eval_unit_expr("1000 * mbps", where="f", field="x") == 1e9
    assert eval_unit_expr("54 * MilliSec", where="f", field="x") == pytest.approx(0.054)
    with pytest.raises(HelixInputError):
        eval_unit_expr("__import__('os')", where="f", field="x")


def test_single24(ref):
    c = load_helix_ini(ref / "clusters" / "single24.ini")
    assert c.composition() == {"A100-40GB": 4, "L4": 8, "T4": 12}
    assert len(c.links) == 24 + 24 + 2 * 276
    # Helix's quirk: 1000 mbps is read as 1e9 bytes/s.
    assert c.link("n0", "n1").bandwidth_bytes_per_s == 1e9
    assert c.node("n6").gpu.name == "A100-40GB"


def test_si_units_divide_by_eight(ref):
    c = load_helix_ini(ref / "clusters" / "single24.ini", helix_units=False)
    assert c.link("n0", "n1").bandwidth_bytes_per_s == 1.25e8
    assert c.link(COORDINATOR, "n3").bandwidth_bytes_per_s == 1.25e8


def test_3cluster24_has_slow_cross_region_links(ref):
    c = load_helix_ini(ref / "clusters" / "3cluster24.ini")
    assert c.link("n0", "n4").bandwidth_bytes_per_s == pytest.approx(11.2e6)
    assert c.link("n0", "n4").latency_s == pytest.approx(0.054)


def test_placement_file(ref):
    p = load_helix_placement(ref / "placements" / "cluster10_llama30b_helix_milp.ini")
    assert len(p) == 10 and all(r.num_layers == 6 for _, r in p.items())


def test_not_a_cluster_file(tmp_path):
    path = tmp_path / "x.ini"
    path.write_text("[Foo]\na=1\n")
    with pytest.raises(HelixInputError, match="NodeNames"):
        load_helix_ini(path)
