"""Input limits and the one reader of user files."""

from __future__ import annotations

import gzip

import pytest

from helix.errors import HelixInputError
from helix.specs.limits import (
    MAX_NESTING_DEPTH,
    check_nesting,
    check_simulation_size,
    finite_number,
    load_yaml_text,
    read_input_text,
    whole_number,
)


def test_alias_bomb_is_refused_before_it_expands():
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    with pytest.raises(HelixInputError, match="expands to more than"):
        load_yaml_text("\n".join(lines), where="bomb.yaml")


def test_shared_aliases_below_the_limit_are_fine():
    data = load_yaml_text("base: &b {bandwidth_gbps: 1}\nregions: {r0: *b, r1: *b}\n", where="c.yaml")
    assert data["regions"]["r0"] == {"bandwidth_gbps": 1}


@pytest.mark.parametrize(
    "depth, ok", [(MAX_NESTING_DEPTH - 1, True), (MAX_NESTING_DEPTH + 1, False), (3000, False)]
)
def test_nesting(depth, ok):
    text = "[" * depth + "]" * depth
    if ok:
        load_yaml_text(text, where="c.yaml")
        return
    with pytest.raises(HelixInputError, match="nest"):
        load_yaml_text(text, where="c.yaml")


def test_check_nesting_walks_iteratively():
    data: list = []
    inner = data
    for _ in range(10_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(HelixInputError, match="nested more than"):
        check_nesting(data, where="p.json")


def test_numbers():
    assert finite_number(3, where="w", field="f") == 3.0
    assert whole_number(2.0, where="w", field="f") == 2
    for bad in (float("inf"), float("nan"), True, "3"):
        with pytest.raises(HelixInputError):
            finite_number(bad, where="w", field="f")
    with pytest.raises(HelixInputError, match="whole number, got 2.7"):
        whole_number(2.7, where="w", field="count")


def test_reader_size_binary_and_gzip(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("x" * 2000)
    with pytest.raises(HelixInputError, match="MiB limit"):
        read_input_text(big, what="cluster file", max_bytes=1000)
    packed = tmp_path / "w.csv.gz"
    packed.write_bytes(gzip.compress(b"a" * 5000))
    with pytest.raises(HelixInputError, match="unpacks to more"):
        read_input_text(packed, what="trace", max_bytes=1000)
    packed.write_bytes(gzip.compress(b"input_tokens,output_tokens\n1,2\n"))
    assert read_input_text(packed, what="trace", max_bytes=1000).startswith("input_tokens")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"name: \x00")
    with pytest.raises(HelixInputError, match="binary file"):
        read_input_text(binary, what="cluster file", max_bytes=1000)


def test_simulation_size():
    check_simulation_size(horizon_s=660, rate_per_s=100)
    with pytest.raises(HelixInputError, match="--rate"):
        check_simulation_size(horizon_s=660, rate_per_s=1e7)
    with pytest.raises(HelixInputError, match="--duration"):
        check_simulation_size(horizon_s=1e9, rate_per_s=None)
