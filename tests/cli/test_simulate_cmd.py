import json

import pytest

from helix.cli.main import main
from helix.reference import BUNDLED_REFERENCE_DIR


def _args(tmp_path, *extra):
    ref = BUNDLED_REFERENCE_DIR
    return [
        "simulate",
        "--cluster",
        str(ref / "clusters" / "single24.ini"),
        "--model",
        "llama-2-70b",
        "--plan",
        str(ref / "placements" / "single24_llama70b_helix_milp.ini"),
        "--profiles",
        str(ref / "profiles"),
        "-o",
        str(tmp_path / "out"),
        "-q",
        *extra,
    ]


def test_simulate_writes_json_and_plots(tmp_path):
    main(_args(tmp_path, "--duration", "20", "--warmup", "5"))
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    summary = result["summary"]
    assert summary["decode_tokens_per_s"] > 0
    # the max flow counts tokens of the typical 750 + 240 request: it bounds decode tokens at 240 / 990 of it
    assert summary["decode_bound_tokens_per_s"] == pytest.approx(summary["max_flow_tokens_per_s"] * 240 / 990)
    assert summary["decode_efficiency"] == pytest.approx(
        summary["decode_tokens_per_s"] / summary["decode_bound_tokens_per_s"]
    )
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {
        "throughput.png",
        "latency_cdf.png",
        "nodes.png",
    }


def test_online_poisson(tmp_path):
    main(
        _args(
            tmp_path, "--mode", "online", "--rate", "0.5", "--duration", "20", "--warmup", "0", "--no-plots"
        )
    )
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["summary"]["counters"]["requests_arrived"] > 0


@pytest.mark.parametrize(
    "extra", [["--model", "llama-30b"], ["--mode", "online", "--rate", "0"], ["--scheduler", "fifo"]]
)
def test_bad_input_exits_2(tmp_path, extra, capsys):
    with pytest.raises(SystemExit) as exc:
        main(_args(tmp_path, "--duration", "5", *extra))
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
