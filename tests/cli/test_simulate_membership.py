import json

import pytest

from helix.cli.main import main
from helix.reference import reference_available, reference_dir

pytestmark = pytest.mark.skipif(not reference_available(), reason="Helix reference data not available")


def _args(tmp_path, trace):
    ref = reference_dir()
    path = tmp_path / "trace.yaml"
    path.write_text(trace)
    return [
        "simulate",
        "--cluster",
        str(ref / "clusters" / "cluster10.ini"),
        "--model",
        "llama-1-30b",
        "--plan",
        str(ref / "placements" / "cluster10_llama30b_helix_milp.ini"),
        "--profiles",
        str(ref / "profiles"),
        "--mode",
        "online",
        "--rate",
        "0.5",
        "--duration",
        "60",
        "--warmup",
        "0",
        "--membership",
        str(path),
        "-o",
        str(tmp_path / "out"),
        "-q",
    ]


def test_membership_trace_replans_and_plots(tmp_path):
    main(_args(tmp_path, "- {time_s: 10, kind: drain, node: n3}\n"))
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    (rp,) = result["elastic"]["replans"]
    assert rp["trigger"] == {"time_s": 10.0, "kind": "drain", "node": "n3"}
    assert "n3" not in rp["placement"]
    assert (tmp_path / "out" / "membership.png").stat().st_size > 0


@pytest.mark.parametrize(
    "trace, field",
    [("- {time_s: 1, kind: leave, node: n3}\n", "kind"), ("- {time_s: 1, kind: join, node: zz}\n", "node")],
)
def test_bad_membership_trace_exits_2(tmp_path, trace, field, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_args(tmp_path, trace))
    assert exc.value.code == 2
    assert field in capsys.readouterr().err
