"""Fuzzing the readers of user files: cluster YAML, Helix INI, plan JSON and workload traces.

Whatever the bytes, a reader returns a valid result or raises `HelixInputError` — never another exception.
"""

from __future__ import annotations

import json
import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix.errors import HelixInputError
from helix.placement.plan_io import load_plan
from helix.sim.workload import load_lengths
from helix.specs.cluster import ClusterSpec
from helix.specs.cluster_yaml import load_cluster_yaml
from helix.specs.helix_ini import load_helix_ini, load_helix_placement

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["T4", "A100-40GB", "L4", "coordinator", "r0", "a", ".inf", "1e999"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = ["name", "gpu", "region", "count", "nic_gbps", "bandwidth_gbps", "latency_ms", "src", "dst"]


@st.composite
def cluster_dicts(draw):
    """Cluster dicts near the real format, each field possibly replaced by junk."""

    def maybe(value):
        return draw(st.one_of(st.just(value), values)) if draw(st.integers(0, 4)) == 0 else value

    node_fields = st.fixed_dictionaries(
        {"name": st.text(min_size=1, max_size=5), "gpu": st.sampled_from(["T4", "A100-40GB", "L4", "Z80"])},
        optional={
            "count": st.one_of(st.integers(-2, 6), st.floats(0, 5), st.integers(10**3, 10**7)),
            "region": st.sampled_from(["r0", "r1", "nowhere"]),
            "nic_gbps": st.one_of(st.floats(allow_nan=True), st.integers(-1, 100)),
        },
    )
    node_fields = st.tuples(node_fields, st.sampled_from(KEYS), values, st.booleans()).map(
        lambda t: {**t[0], t[1]: t[2]} if t[3] else t[0]
    )
    data = {
        "name": maybe("fuzz"),
        "regions": maybe({"r0": {"bandwidth_gbps": 10, "latency_ms": 1}, "r1": {"bandwidth_gbps": 1}}),
        "coordinator": maybe({"region": "r0"}),
        "nodes": maybe(draw(st.lists(node_fields, min_size=0, max_size=5))),
    }
    if draw(st.booleans()):
        data["links"] = maybe(
            draw(
                st.lists(
                    st.dictionaries(st.sampled_from(KEYS + ["symmetric"]), values, max_size=5), max_size=3
                )
            )
        )
    if draw(st.booleans()):
        data[draw(st.text(max_size=6))] = draw(values)
    return data


def _clean_or_valid(read, path):
    try:
        result = read(path)
    except HelixInputError as exc:
        assert str(exc) and "\n" not in exc.problem
        return None
    return result


@SETTINGS
@given(data=cluster_dicts())
def test_cluster_yaml_from_near_valid_dicts(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    cluster = _clean_or_valid(load_cluster_yaml, path)
    if cluster is not None:
        assert isinstance(cluster, ClusterSpec) and cluster.nodes
        assert all(
            math.isfinite(link.bandwidth_bytes_per_s) and link.bandwidth_bytes_per_s > 0
            for link in cluster.links
        )


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_cluster_yaml_from_arbitrary_bytes(tmp_path, raw):
    path = tmp_path / "c.yaml"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    _clean_or_valid(load_cluster_yaml, path)


INI_VALUES = st.one_of(
    st.text(alphabet="0123456789.*/+-() e", max_size=15).map(lambda t: t + " mbps" if t else t),
    st.sampled_from(["1000 * mbps", "1 * gbps / 0", "54 * MilliSec", "1e308 * 1e308", "x", "", "mbps mbps"]),
    st.text(max_size=10),
)


@st.composite
def helix_ini_texts(draw):
    n = draw(st.one_of(st.integers(0, 3), st.sampled_from(["two", "-1", "100000", ""])))
    lines = ["[NodeNames]", f"total_compute_nodes = {n}"]
    count = n if isinstance(n, int) else 0
    for i in range(draw(st.integers(0, count + 1))):
        if draw(st.integers(0, 5)):
            lines += [
                f"[ComputeNode-{i}]",
                f"type = {draw(st.sampled_from(['A100-40GB', 'T4', 'L4', 'Z80', '']))}",
            ]
    ends = ["source", "sink", "0", "1", "2", "9", "x", "0-1"]
    for _ in range(draw(st.integers(0, 4))):
        a, b = draw(st.sampled_from(ends)), draw(st.sampled_from(ends))
        lines.append(f"[Link-{a}-{b}]")
        if draw(st.integers(0, 5)):
            lines.append(f"bandwidth = {draw(INI_VALUES)}")
        if draw(st.integers(0, 5)):
            lines.append(f"latency = {draw(INI_VALUES)}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=20)))
    return "\n".join(lines) + "\n"


@SETTINGS
@given(text=helix_ini_texts())
def test_helix_ini_cluster(tmp_path, text):
    path = tmp_path / "c.ini"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _clean_or_valid(lambda p: load_helix_ini(p, helix_units=True), path)


@SETTINGS
@given(
    entries=st.dictionaries(
        st.one_of(
            st.sampled_from(["compute_node_2", "compute_node_3", "compute_node_x", "node"]),
            st.text(max_size=6),
        ),
        st.one_of(
            st.lists(st.integers(-2, 90), max_size=6).map(str),
            st.sampled_from(
                ["[]", "[1, 2, 3]", "[3, 2]", "(1, 2)", "[True]", "[1.5]", "'abc'", "{}", "[" * 50]
            ),
            st.text(max_size=10),
        ),
        max_size=4,
    )
)
def test_helix_ini_placement(tmp_path, entries):
    body = "".join(
        f"{k.strip() or 'k'} = {v}\n" for k, v in entries.items() if "\n" not in k + v and "=" not in k
    )
    path = tmp_path / "p.ini"
    path.write_text("[Solution]\n" + body, encoding="utf-8", errors="surrogatepass")
    _clean_or_valid(load_helix_placement, path)


@st.composite
def plan_dicts(draw):
    def maybe(value):
        return draw(values) if draw(st.integers(0, 3)) == 0 else value

    placement = draw(
        st.dictionaries(
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.lists(st.integers(-1, 40), min_size=2, max_size=2), values),
            max_size=3,
        )
    )
    return {
        "format": maybe("helix-plan"),
        "version": maybe(1),
        "model": maybe({"name": "llama-3-8b", "num_layers": maybe(32)}),
        "cluster": maybe({"name": "t", "nodes": maybe(["a", "b", "c"])}),
        "placement": maybe(placement),
        "partial_overlap": maybe(False),
        "max_flow_tokens_per_s": maybe(1.0),
    }


@SETTINGS
@given(plan=plan_dicts())
def test_plan_json_near_valid(tmp_path, plan):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(plan, allow_nan=True))
    record = _clean_or_valid(load_plan, path)
    if record is not None:
        assert all(0 <= r.start < r.end for r in record.placement.ranges.values())


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200), values.map(json.dumps)))
def test_plan_json_arbitrary(tmp_path, raw):
    path = tmp_path / "p.json"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    _clean_or_valid(load_plan, path)


cells = st.one_of(
    st.integers(-5, 3000).map(str),
    st.sampled_from(["", "inf", "nan", "-inf", "2.7", "1e999", "12.0", "x", "2023-11-16 18:15:46.6805900"]),
    st.text(max_size=6),
)


@SETTINGS
@given(
    header=st.sampled_from(
        ["input_tokens,output_tokens", "TIMESTAMP,ContextTokens,GeneratedTokens", "a,b", "", "input_tokens"]
    ),
    rows=st.lists(st.lists(cells, min_size=0, max_size=4), max_size=6),
    binary=st.one_of(st.none(), st.binary(max_size=50)),
)
def test_workload_trace(tmp_path, header, rows, binary):
    path = tmp_path / "w.csv"
    if binary is not None:
        path.write_bytes(binary)
    else:
        text = header + "\n" + "".join(",".join(r) + "\n" for r in rows)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    lengths = _clean_or_valid(load_lengths, path)
    if lengths is not None:
        assert (lengths.prompt_tokens > 0).all() and (lengths.output_tokens >= 1).all()
