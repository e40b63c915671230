"""`helix plan` / `helix evaluate` through the real entry point: outputs, and exit code 2 on bad input."""

import json
import subprocess
import sys

import pytest


def helix(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "helix.cli.main", *args], capture_output=True, text=True, cwd=cwd
    )


def test_plan_and_evaluate(tmp_path):
    out = helix(
        "plan",
        "-c",
        "geo-mixed",
        "-m",
        "llama-3-70b",
        "--method",
        "swarm",
        "-o",
        str(tmp_path / "p.json"),
        "--plot",
        str(tmp_path / "p.png"),
        "-q",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["max_flow_tokens_per_s"] > 0
    assert (tmp_path / "p.png").stat().st_size > 10_000
    ev = helix("evaluate", str(tmp_path / "p.json"), "--json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["max_flow_tokens_per_s"] == pytest.approx(summary["max_flow_tokens_per_s"], abs=1e-3)
    assert report["bottleneck"]


def test_helix_cluster_with_profiles(ref, tmp_path):
    out = helix(
        "plan",
        "-c",
        str(ref / "clusters" / "single24.ini"),
        "-m",
        "llama-2-70b",
        "--method",
        "swarm",
        "--profiles",
        str(ref / "profiles"),
        "-o",
        str(tmp_path / "p.json"),
        "-q",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["max_flow_tokens_per_s"] == pytest.approx(757.853, abs=1e-3)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_CLUSTERS = {
    "unknown_gpu": ("nodes: [{name: a, gpu: Z80}]", "nodes[0].gpu"),
    "negative": ("regions: {r: {bandwidth_gbps: -1}}\nnodes: [{name: a, gpu: T4}]", "bandwidth_gbps"),
    "missing": ("nodes: [{gpu: T4}]", "nodes[0].name"),
    "unknown_link": (
        "nodes: [{name: a, gpu: H100}]\nlinks: [{src: a, dst: zz, bandwidth_gbps: 1}]",
        "links[0].dst",
    ),
    "too_small": ("nodes: [{name: a, gpu: T4}]", "can hold only"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLUSTERS))
def test_bad_cluster_exits_2_with_one_message(tmp_path, case):
    text, expected = BAD_CLUSTERS[case]
    path = write(tmp_path, "c.yaml", text)
    out = helix("plan", "-c", path, "-m", "llama-2-70b", "--method", "swarm", "-o", str(tmp_path / "p.json"))
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0


def test_coordinator_without_links_is_rejected(tmp_path, ref):
    text = (ref / "clusters" / "cluster10.ini").read_text()
    text = text.replace(
        "[SourceNode]\nconnected_nodes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "[SourceNode]\nconnected_nodes=[]"
    )
    kept = [block for block in text.split("\n\n") if not block.startswith("[Link-source")]
    path = write(tmp_path, "c.ini", "\n\n".join(kept))
    out = helix(
        "plan", "-c", path, "-m", "llama-1-30b", "--method", "swarm", "--profiles", str(ref / "profiles")
    )
    assert out.returncode == 2 and "coordinator" in out.stderr


def test_plan_exceeding_memory_or_uncovered(tmp_path):
    base = {
        "format": "helix-plan",
        "version": 1,
        "model": {"name": "llama-3-70b", "num_layers": 80},
        "cluster": {"name": "geo-mixed", "nodes": []},
        "method": "x",
        "sources": {"cluster": "geo-mixed", "model": "llama-3-70b"},
    }
    over = write(tmp_path, "over.json", json.dumps({**base, "placement": {"l4-0": [0, 80]}}))
    out = helix("evaluate", over)
    assert out.returncode == 2 and "l4-0" in out.stderr and "at most" in out.stderr
    gap = write(tmp_path, "gap.json", json.dumps({**base, "placement": {"h100-0": [0, 20]}}))
    out = helix("evaluate", gap)
    assert out.returncode == 2 and "held by no node" in out.stderr


def test_unknown_method_and_bad_flags(tmp_path):
    out = helix("plan", "-c", "geo-mixed", "-m", "llama-3-70b", "--method", "nope")
    assert out.returncode == 2 and "--method" in out.stderr
    out = helix("plan", "-c", "geo-mixed", "-m", "llama-3-70b", "--method", "swarm", "--capacity", "guess")
    assert out.returncode == 2 and "--capacity" in out.stderr


def test_default_milp_and_throughput_objective(tmp_path):
    out = helix(
        "plan",
        "-c",
        "demo",
        "-m",
        "smollm2-135m",
        "--mip-gap",
        "0.01",
        "--check",
        "1",
        "--check-duration",
        "20",
        "--confirm",
        "1",
        "-o",
        str(tmp_path / "p.json"),
        "-q",
    )
    assert out.returncode == 0, out.stderr
    default = json.loads(out.stdout)
    assert default["method"] == "milp" and default["gap"] is not None
    assert default["objective"] == "served" and default["stopped_by"]
    assert default["max_flow_tokens_per_s"] <= default["upper_bound_tokens_per_s"] + 1e-6
    expected = default["expected"]
    assert 0 < expected["decode_tokens_per_s_estimate"] <= expected["decode_upper_bound_tokens_per_s"]
    assert expected["decode_tokens_per_s_simulated"] > 0 and expected["ttft_s_estimate"] > 0
    assert (
        expected["decode_tokens_per_s_confirmed"] > 0 and "seeds [0, 1, 2, 3, 4]" in expected["confirmed_by"]
    )
    assert "Running HiGHS" not in out.stdout + out.stderr  # the banner goes to the solver log
    assert (tmp_path / "p.solver.log").exists()
    out = helix(
        "plan",
        "-c",
        "demo",
        "-m",
        "smollm2-135m",
        "--objective",
        "throughput",
        "--mip-gap",
        "0.01",
        "-o",
        str(tmp_path / "t.json"),
        "-q",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["max_flow_tokens_per_s"] <= default["max_flow_tokens_per_s"] + 1e-6
    out = helix("plan", "-c", "demo", "-m", "smollm2-135m", "--objective", "nope")
    assert out.returncode == 2 and "objective" in out.stderr
    out = helix("plan", "-c", "demo", "-m", "smollm2-135m", "--confirm", "-1")
    assert out.returncode == 2 and "--confirm" in out.stderr


def test_bundled_names_work_from_any_folder_and_bounds_agree(tmp_path):
    """The README's Helix quickstart, run outside the repository: bundled cluster and profiles, the published
    757.853 tokens/s, and `evaluate` reporting the same bound as `plan` (the tightest one known)."""
    out = helix(
        "plan", "-c", "single24", "-m", "llama-2-70b", "--profiles", "helix", "--method", "swarm",
        "-o", "swarm.json", "-q", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    ev = helix("evaluate", "swarm.json", "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["max_flow_tokens_per_s"] == pytest.approx(757.853, abs=1e-3)
    assert report["upper_bound_tokens_per_s"] == pytest.approx(
        min(summary["upper_bound_tokens_per_s"], report["compute_upper_bound_tokens_per_s"]), rel=1e-6
    )
    assert report["gap"] == pytest.approx(1 - 757.853 / report["upper_bound_tokens_per_s"], abs=1e-5)
