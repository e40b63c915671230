"""Every results file under benchmarks/results is written by a script, and holds only fields a script
writes: a key typed in by hand (or left over from another run) fails here."""

from __future__ import annotations

import ast
import importlib.util
import json
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

#: results file (glob, relative to benchmarks/results) → (the script that writes it — the first of the
#: sources, the others being the modules whose writer it runs —, whether its top-level keys are data,
#: e.g. ``<cluster>_<method>``, rather than field names).
PRODUCERS: dict[str, tuple[str, bool]] = {
    "baselines.json": ("benchmarks/bench_baselines.py", True),
    "baselines/*.json": ("benchmarks/bench_baselines.py helix/placement/plan_io.py", False),
    "capacity_model.json": ("benchmarks/bench_capacity_model.py", False),
    "engine_h100.json": ("benchmarks/bench_engine.py", False),
    "engine_h200.json": ("benchmarks/bench_engine.py", False),
    "runtime_1gpu.json": ("benchmarks/bench_runtime_1gpu.py", False),
    "planner.json": ("benchmarks/bench_planner.py", False),
    "runtime_2gpu.json": ("benchmarks/bench_runtime_2gpu.py", False),
    "runtime_cpu.json": ("benchmarks/bench_runtime_cpu.py", False),
    "runtime_cpu_unpadded.json": ("benchmarks/bench_runtime_cpu.py", False),
    "simulation.json": ("benchmarks/bench_simulator.py", False),
    "elastic.json": ("benchmarks/bench_elastic.py", False),
    "failover.json": ("benchmarks/bench_failover.py", False),
    "plans_served.json": ("benchmarks/bench_plans_served.py", False),
    "runtime_geo.json": ("benchmarks/bench_runtime_geo.py", False),
    "tp_2gpu.json": ("benchmarks/bench_tp_2gpu.py", False),
    "stage_step_h200.json": ("benchmarks/profile_stage_step.py", False),
    "hop_host_cpu.json": ("benchmarks/bench_hop_host.py", False),
    "runtime_1gpu_runs/*.json": ("benchmarks/bench_runtime_1gpu.py", False),
    "hop_profile_h200.json": ("benchmarks/profile_runtime_hop.py", False),
}


def _results() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("*.json"))


def _producer(path: Path) -> tuple[str, bool] | None:
    rel = path.relative_to(RESULTS).as_posix()
    return next((v for k, v in PRODUCERS.items() if fnmatch(rel, k) and ("/" in k) == ("/" in rel)), None)


def _literals(source_path: Path, seen: set[Path] | None = None, depth: int = 0) -> set[str]:
    """String constants of a script and of the `helix` / `benchmarks` modules it imports (two levels)."""
    seen = set() if seen is None else seen
    if source_path in seen:
        return set()
    seen.add(source_path)
    tree = ast.parse(source_path.read_text())
    found = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for node in ast.walk(tree):
        if depth < 2 and isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helix"):
            spec = importlib.util.find_spec(node.module)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                found |= _literals(Path(spec.origin), seen, depth + 1)
    return found


@pytest.mark.parametrize("path", _results(), ids=lambda p: p.relative_to(RESULTS).as_posix())
def test_every_result_has_a_script_and_only_fields_it_writes(path):
    producer = _producer(path)
    assert producer is not None, f"{path.name}: no script writes it (add it to PRODUCERS or remove it)"
    sources, data_keys = producer
    script = sources.split()[0]
    for source in sources.split():
        assert (ROOT / source).exists(), f"{source} is missing"
    data = json.loads(path.read_text())
    if data_keys or not isinstance(data, dict):
        return
    literals = set().union(*(_literals(ROOT / source) for source in sources.split()))
    unknown = sorted(k for k in data if k not in literals)
    assert not unknown, f"{path.name}: fields {unknown} are written by no script ({script})"


def test_the_check_catches_a_hand_typed_field(tmp_path):
    literals = _literals(ROOT / "benchmarks" / "bench_runtime_2gpu.py")
    assert "hop_overhead_per_token_ms" in literals and "repeat_run" not in literals
