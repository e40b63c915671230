"""Bounds on every input, checked before any work starts, and the one reader of user files.

A file, a cluster or a simulation far larger than any real deployment gets a clear error instead of
running the machine out of memory or time. The limits are generous: Helix's largest cluster has 42 nodes,
its longest traces a few MB.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from pathlib import Path
from typing import Any

from helix.errors import HelixInputError

MAX_CONFIG_FILE_BYTES = 16 << 20  # Helix INI (a full mesh of links grows with nodes²), plan JSON, profiles
MAX_YAML_FILE_BYTES = 1 << 20  # cluster YAML (links come from regions; PyYAML reads ~ 100 kB/s)
MAX_TRACE_FILE_BYTES = 512 << 20  # workload traces (a day of Azure's trace is ~ 100 MB), after unzipping
MAX_NODES = 1024  # nodes of one cluster (every pair of nodes gets a link: 1M links, ~300 MB, ~4 s to build)
MAX_NESTING_DEPTH = 32  # nested mappings / lists in a YAML or JSON file
MAX_YAML_NODES = 1_000_000  # YAML values after expanding aliases (defeats "billion laughs" files)
MAX_SIMULATED_REQUESTS = 5_000_000  # online arrivals: rate × simulated seconds
MAX_SIMULATED_S = 7 * 24 * 3600.0  # simulated warm-up + window


def read_input_bytes(path: str | Path, *, what: str, field: str = "", max_bytes: int) -> bytes:
    """The bytes of a user file (``.gz`` unpacked), with one clear error for each way reading fails."""
    path = Path(path)
    where = str(path)
    try:
        if path.is_dir():
            raise HelixInputError(
                f"is a directory, not a {what}", where=where, field=field, fix="give a file"
            )
        if path.exists() and not path.is_file():  # a device or pipe (/dev/zero, /dev/stdin) never ends
            raise HelixInputError(
                f"is not a regular file (a device or a pipe), not a {what}",
                where=where,
                field=field,
                fix="give a file",
            )
        size = path.stat().st_size
        if size > max_bytes:
            raise HelixInputError(
                f"the {what} is {size / 2**20:.1f} MiB, more than the {max_bytes / 2**20:.0f} MiB limit",
                where=where,
                field=field,
                fix="give a smaller file",
            )
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:  # includes gzip.BadGzipFile
        reason = exc.strerror or str(exc)
        raise HelixInputError(
            f"cannot read the {what} ({reason})", where=where, field=field, fix="check the path and the file"
        ) from None
    except (EOFError, zlib.error) as exc:
        raise HelixInputError(
            f"cannot read the {what} (corrupt gzip data: {exc})", where=where, field=field
        ) from None
    if len(data) > max_bytes:
        raise HelixInputError(
            f"the {what} unpacks to more than the {max_bytes / 2**20:.0f} MiB limit",
            where=where,
            field=field,
            fix="give a smaller file",
        )
    return data


def read_input_text(path: str | Path, *, what: str, field: str = "", max_bytes: int) -> str:
    """A user file as UTF-8 text; a binary file is an error naming the first bad byte."""
    data = read_input_bytes(path, what=what, field=field, max_bytes=max_bytes)
    where = str(path)
    if b"\x00" in data[:65536]:
        raise HelixInputError(
            f"this is a binary file, not a {what}", where=where, field=field, fix="give a text file"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HelixInputError(
            f"not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})",
            where=where,
            field=field,
            fix=f"save the {what} as UTF-8 text",
        ) from None


def check_nesting(data: Any, *, where: str, limit: int = MAX_NESTING_DEPTH) -> None:
    """Raise if mappings / lists nest deeper than `limit` (walks iteratively, shared values once)."""
    stack = [(data, 1)]
    seen: set[int] = set()
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list, tuple)) or id(value) in seen:
            continue
        if depth > limit:
            raise HelixInputError(
                f"nested more than {limit} levels deep",
                where=where,
                fix="flatten the file: no real config nests this deep",
            )
        seen.add(id(value))
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children)


def finite_number(value: Any, *, where: str, field: str, fix: str = "write a finite number") -> float:
    """`value` as a finite float: no booleans, strings, ``.inf`` or ``.nan``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HelixInputError(f"must be a number, got {short_repr(value)}", where=where, field=field, fix=fix)
    number = float(value)
    if not math.isfinite(number):
        raise HelixInputError(f"must be finite, got {value}", where=where, field=field, fix=fix)
    return number


def whole_number(value: Any, *, where: str, field: str, fix: str = "write a whole number") -> int:
    """`value` as an int; ``2.0`` is accepted, ``2.7`` is not rounded silently."""
    number = finite_number(value, where=where, field=field, fix=fix)
    if number != int(number):
        raise HelixInputError(f"must be a whole number, got {value}", where=where, field=field, fix=fix)
    return int(number)


def short_repr(value: Any, limit: int = 60) -> str:
    """`repr` of a value cut to `limit` characters (error messages stay one line)."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_node_count(count: int, *, where: str, field: str = "nodes") -> None:
    if count > MAX_NODES:
        raise HelixInputError(
            f"{count} nodes is more than the {MAX_NODES}-node limit",
            where=where,
            field=field,
            fix=f"describe at most {MAX_NODES} nodes (group GPUs of one machine into one node)",
        )


def check_simulation_size(*, horizon_s: float, rate_per_s: float | None) -> None:
    """Raise before a simulation whose length or number of arrivals would run away."""
    if not math.isfinite(horizon_s) or horizon_s > MAX_SIMULATED_S:
        raise HelixInputError(
            f"warm-up + duration is {horizon_s:g} s, more than the {MAX_SIMULATED_S:g} s limit (a week)",
            field="--duration",
            fix="simulate a shorter window: minutes are enough for steady state",
        )
    if rate_per_s is not None and rate_per_s * horizon_s > MAX_SIMULATED_REQUESTS:
        raise HelixInputError(
            f"{rate_per_s:g} requests/s over {horizon_s:g} s is {rate_per_s * horizon_s:.3g} requests, more "
            f"than the {MAX_SIMULATED_REQUESTS:,} a simulation may hold",
            field="--rate",
            fix="lower --rate or --duration (the cluster's max flow bounds the useful rate)",
        )


def load_yaml_text(text: str, *, where: str) -> Any:
    """Parse YAML safely within the limits: no more than `MAX_YAML_NODES` values once aliases are expanded
    (a few-line "billion laughs" file names one list a billion times), no deeper than `MAX_NESTING_DEPTH`."""
    import yaml

    _check_flow_nesting(text, where)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise HelixInputError(
            f"invalid YAML ({problem[:300]})", where=where, fix="fix the YAML text"
        ) from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise HelixInputError(
                "nested too deeply to read",
                where=where,
                fix="flatten the file: no real config nests this deep",
            ) from None
        except yaml.YAMLError as exc:
            problem = " ".join(str(exc).split())
            raise HelixInputError(
                f"invalid YAML ({problem[:300]})", where=where, fix="fix the YAML syntax"
            ) from None
        if node is None:
            return None
        _check_yaml_graph(node, where)
        try:
            return loader.construct_document(node)
        except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
            problem = " ".join(str(exc).split())
            raise HelixInputError(f"invalid YAML value ({problem[:300]})", where=where) from None
    finally:
        loader.dispose()


_QUOTED = re.compile(r"'[^'\n]*'|\"(?:[^\"\\\n]|\\.)*\"|#[^\n]*")


def _check_flow_nesting(text: str, where: str) -> None:
    """Refuse deeply nested ``[...]`` / ``{...}`` before the parser recurses into them (its recursion is
    slow to fail); quoted strings and comments are skipped. Block nesting is checked after composing."""
    depth = deepest = 0
    for char in _QUOTED.sub("", text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_NESTING_DEPTH:
                raise HelixInputError(
                    f"nested more than {MAX_NESTING_DEPTH} levels deep",
                    where=where,
                    fix="flatten the file: no real config nests this deep",
                )
        elif char in "]}":
            depth = max(0, depth - 1)


def _check_yaml_graph(root: Any, where: str) -> None:
    """Expanded size and depth of a composed YAML node graph, each shared (aliased) node visited once."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[key], depth[key] = 1, 1
            continue
        children = (
            [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        )
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_YAML_NODES:
                raise HelixInputError(
                    f"expands to more than {MAX_YAML_NODES:,} values (aliases repeated inside aliases)",
                    where=where,
                    fix="write the values out, or use fewer nested aliases",
                )
            if depth[key] > MAX_NESTING_DEPTH:
                raise HelixInputError(
                    f"nested more than {MAX_NESTING_DEPTH} levels deep",
                    where=where,
                    fix="flatten the file: no real config nests this deep",
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise HelixInputError("an alias refers to itself", where=where, fix="remove the recursive alias")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def parse_json_text(text: str, *, where: str) -> Any:
    """JSON within the limits (nesting no deeper than `MAX_NESTING_DEPTH`). NaN / Infinity are read (the
    planner's own details may hold an infinite bound); the fields a plan is read from are checked finite."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HelixInputError(
            f"invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
            where=where,
            fix="fix the JSON",
        ) from None
    except RecursionError:
        raise HelixInputError("nested too deeply to read", where=where, fix="flatten the file") from None
    check_nesting(data, where=where)
    return data
