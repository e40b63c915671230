"""Import Helix's INI cluster files (and its ``machine_profiles.ini``).

Helix writes values as Python expressions over unit names (``1000 * mbps``, ``54 * MilliSec``) and then
divides bit rates by sizes in bytes without the factor 8, so its "1 Gbps" link carries 1e9 bytes/s.
`helix_units=True` (the default here, for reproducing Helix's numbers) keeps that reading;
`helix_units=False` converts bits to bytes properly.

Node ``i`` of the file becomes node ``n{i}``; ``source`` and ``sink`` are both the coordinator. A
``[Link-i-j]`` section is one symmetric link.
"""

from __future__ import annotations

import ast
import configparser
import math
import operator
from pathlib import Path

from helix.errors import HelixInputError
from helix.specs.cluster import COORDINATOR, ClusterSpec, LinkSpec, NodeSpec
from helix.specs.gpu import GPUCatalog, default_catalog
from helix.specs.limits import MAX_CONFIG_FILE_BYTES, check_node_count, read_input_text, short_repr
from helix.specs.placement import LayerRange, Placement
from helix.specs.units import HELIX_INI_NAMES

MAX_EXPRESSION_CHARS = 200
_OPS = {ast.Mult: operator.mul, ast.Div: operator.truediv, ast.Add: operator.add, ast.Sub: operator.sub}


def eval_unit_expr(text: str, *, where: str, field: str) -> float:
    """Evaluate a Helix value such as ``12.5 * mbps`` (numbers, unit names, + - * /)."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in HELIX_INI_NAMES:
            return HELIX_INI_NAMES[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(ast.dump(node))

    fix = "write a number times a unit, e.g. `1000 * mbps`"
    if len(text) > MAX_EXPRESSION_CHARS:
        raise HelixInputError(
            f"value is longer than {MAX_EXPRESSION_CHARS} characters", where=where, field=field, fix=fix
        )
    try:
        value = walk(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise HelixInputError(f"cannot read value {text!r}", where=where, field=field, fix=fix) from None
    except ZeroDivisionError:
        raise HelixInputError(f"division by zero in {text!r}", where=where, field=field, fix=fix) from None
    if not math.isfinite(value):
        raise HelixInputError(f"value {text!r} is not finite", where=where, field=field, fix=fix)
    return value


def node_name(index: int) -> str:
    """The node name given to Helix's compute node `index`."""
    return f"n{index}"


def _end(token: str, num_nodes: int, where: str, section: str) -> str:
    if token in ("source", "sink"):
        return COORDINATOR
    if not token.isdigit() or int(token) >= num_nodes:
        raise HelixInputError(
            f"link end {token!r} is not a node of this file",
            where=where,
            field=section,
            fix=f"name links `Link-<i>-<j>` with 0 <= i, j < {num_nodes}, `source` or `sink`",
        )
    return node_name(int(token))


def _value(parser: configparser.ConfigParser, section: str, key: str, where: str) -> str:
    if key not in parser[section]:
        raise HelixInputError("is missing", where=where, field=f"{section}.{key}", fix=f"add `{key} = ...`")
    return parser[section][key]


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keep key case
    text = read_input_text(path, what="INI file", max_bytes=MAX_CONFIG_FILE_BYTES)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        message = " ".join(str(getattr(exc, "message", exc)).split())
        raise HelixInputError(
            f"invalid INI ({message[:300]})", where=str(path), fix="fix the INI syntax"
        ) from None
    return parser


def _nic_by_type(machine_profiles: Path | None, bits_to_bytes: float) -> dict[str, float]:
    if machine_profiles is None:
        return {}
    parser = _read_ini(machine_profiles)
    nics = {}
    for section in parser.sections():
        if section in ("SourceNode", "SinkNode"):
            continue
        where = str(machine_profiles)
        inbound = eval_unit_expr(
            _value(parser, section, "inbound_nic_speed", where), where=where, field=section
        )
        outbound = eval_unit_expr(
            _value(parser, section, "outbound_nic_speed", where), where=where, field=section
        )
        nics[section] = min(inbound, outbound) * bits_to_bytes
    return nics


def load_helix_ini(
    path: str | Path,
    machine_profiles: str | Path | None = None,
    *,
    helix_units: bool = True,
    catalog: GPUCatalog | None = None,
) -> ClusterSpec:
    """Read a Helix cluster file. `machine_profiles` defaults to ``machine_profiles.ini`` beside it."""
    path = Path(path)
    where = str(path)
    catalog = catalog or default_catalog()
    if machine_profiles is None and (path.parent / "machine_profiles.ini").exists():
        machine_profiles = path.parent / "machine_profiles.ini"
    bits_to_bytes = 1.0 if helix_units else 1.0 / 8.0
    nics = _nic_by_type(Path(machine_profiles) if machine_profiles else None, bits_to_bytes)
    parser = _read_ini(path)
    if not parser.has_section("NodeNames"):
        raise HelixInputError(
            "missing section [NodeNames]", where=where, field="NodeNames", fix="is this a Helix cluster file?"
        )
    raw_count = _value(parser, "NodeNames", "total_compute_nodes", where)
    if not raw_count.strip().isdigit():
        raise HelixInputError(
            f"must be a whole number, got {raw_count!r}",
            where=where,
            field="NodeNames.total_compute_nodes",
            fix="write the number of [ComputeNode-i] sections",
        )
    num_nodes = int(raw_count)
    check_node_count(num_nodes, where=where, field="NodeNames.total_compute_nodes")
    nodes = []
    for i in range(num_nodes):
        section = f"ComputeNode-{i}"
        if not parser.has_section(section):
            raise HelixInputError("missing section", where=where, field=section)
        gpu_name = _value(parser, section, "type", where).strip().strip("'\"")
        gpu = catalog.get(gpu_name, where=where, field=f"{section}.type")
        nic = nics.get(gpu_name, gpu.nic_bytes_per_s)
        nodes.append(NodeSpec(name=node_name(i), gpu=gpu, region="default", nic_bytes_per_s=nic))
    links = []
    for section in parser.sections():
        if not section.startswith("Link-"):
            continue
        ends = section[len("Link-") :].split("-")
        if len(ends) != 2:
            raise HelixInputError(
                "a link section must name two ends", where=where, field=section, fix="name it `Link-<i>-<j>`"
            )
        bandwidth = eval_unit_expr(
            _value(parser, section, "bandwidth", where), where=where, field=f"{section}.bandwidth"
        )
        latency = eval_unit_expr(
            _value(parser, section, "latency", where), where=where, field=f"{section}.latency"
        )
        src, dst = (_end(e, num_nodes, where, section) for e in ends)
        links.append(LinkSpec(src, dst, bandwidth * bits_to_bytes, latency))
        if COORDINATOR not in (src, dst):
            links.append(LinkSpec(dst, src, bandwidth * bits_to_bytes, latency))
    coordinator_nic = 10e9 * bits_to_bytes
    try:
        return ClusterSpec(
            name=path.stem,
            nodes=tuple(nodes),
            links=tuple(links),
            coordinator_region="default",
            coordinator_nic_bytes_per_s=coordinator_nic,
        )
    except HelixInputError as exc:
        raise exc.located(where) from None


def load_helix_placement(path: str | Path) -> Placement:
    """Read a Helix placement (``[Solution] compute_node_<i+offset>=[layer ids]``); ``[]`` = unused."""
    path = Path(path)
    parser = _read_ini(path)
    if not parser.has_section("Solution"):
        raise HelixInputError("missing section [Solution]", where=str(path), fix="is this a Helix placement?")
    offset_text = parser["Settings"].get("offset", "2") if parser.has_section("Settings") else "2"
    if not offset_text.strip().isdigit():
        raise HelixInputError(
            f"must be a whole number, got {offset_text!r}", where=str(path), field="Settings.offset"
        )
    offset = int(offset_text)
    check_node_count(len(parser["Solution"]), where=str(path), field="Solution")
    ranges = {}
    for key, value in parser["Solution"].items():
        field = f"Solution.{key}"
        fix = "write `compute_node_<i>=[first, ..., last]` with contiguous whole layer ids"
        try:
            if len(value) > MAX_EXPRESSION_CHARS * 10:
                raise ValueError(value)
            layers = ast.literal_eval(value.strip())
            index = int(key.rsplit("_", 1)[1]) - offset
            if not isinstance(layers, (list, tuple)) or not all(type(v) is int and v >= 0 for v in layers):
                raise ValueError(value)
        except (ValueError, SyntaxError, IndexError, TypeError, RecursionError, MemoryError):
            raise HelixInputError(
                f"cannot read {short_repr(value)}", where=str(path), field=field, fix=fix
            ) from None
        if not layers:
            continue
        if index < 0:
            raise HelixInputError(f"node index {index} is negative", where=str(path), field=field, fix=fix)
        if node_name(index) in ranges:
            raise HelixInputError("the node is listed twice", where=str(path), field=field, fix=fix)
        if list(layers) != list(range(layers[0], layers[-1] + 1)):
            raise HelixInputError("layers must be a contiguous ascending range", where=str(path), field=field)
        ranges[node_name(index)] = LayerRange(layers[0], layers[-1] + 1)
    return Placement(ranges)
