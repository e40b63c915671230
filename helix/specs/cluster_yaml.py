"""Load a cluster from YAML.

Format (every bandwidth in Gbit/s, latency in ms)::

    name: demo
    coordinator: {region: us-east, nic_gbps: 10}
    regions:
      us-east: {bandwidth_gbps: 10, latency_ms: 1}
      eu-west: {bandwidth_gbps: 10, latency_ms: 1}
    inter_region: {bandwidth_gbps: 1, latency_ms: 50}       # default between any two regions
    region_pairs:                                         # optional per-pair override (symmetric)
      - {regions: [us-east, eu-west], bandwidth_gbps: 0.5, latency_ms: 80}
    gpu_types: {MyGPU: {vram_gb: 32, peak_tflops: 100, hbm_gbytes_per_s: 900, nic_gbps: 25}}
    nodes:
      - {name: a100-0, gpu: A100-40GB, region: us-east}
      - {name: l4, gpu: L4, region: eu-west, count: 3}     # expands to l4-0, l4-1, l4-2
      - {name: t4-fast, gpu: T4, region: eu-west, nic_gbps: 25}
    links:                                                # optional overrides, symmetric by default
      - {src: a100-0, dst: l4-0, bandwidth_gbps: 2, latency_ms: 5, symmetric: false}
    profiles: path/to/profiles                            # optional profile tables (`helix`: Helix's)

Links between every pair of nodes (and the coordinator) come from the region defaults; `links` overrides
single pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helix.errors import HelixInputError
from helix.reference import BUNDLED_PROFILES_NAME
from helix.specs.cluster import COORDINATOR, ClusterSpec, LinkSpec, NodeSpec, RegionSpec, validate_cluster
from helix.specs.gpu import GPUCatalog, default_catalog, parse_gpu_types
from helix.specs.limits import (
    MAX_YAML_FILE_BYTES,
    check_node_count,
    finite_number,
    load_yaml_text,
    read_input_text,
    short_repr,
    whole_number,
)
from helix.specs.units import MS, gbps_to_bytes_per_s

_LINK_FIELDS = frozenset({"bandwidth_gbps", "latency_ms"})
_NODE_FIELDS = frozenset({"name", "gpu", "region", "nic_gbps", "count"})
_TOP_FIELDS = {
    "name",
    "coordinator",
    "regions",
    "inter_region",
    "region_pairs",
    "gpu_types",
    "nodes",
    "links",
    "profiles",
}


class _Reader:
    """Field access with one clear message per problem."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, field: str, problem: str, fix: str = "") -> HelixInputError:
        return HelixInputError(problem, where=self.where, field=field, fix=fix)

    def mapping(self, raw: Any, field: str, allowed: frozenset[str] | None = None) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.error(
                field, f"must be a mapping, got {short_repr(raw)}", fix="write it as `key: value` lines"
            )
        if allowed is not None:
            unknown = sorted(str(k) for k in raw if k not in allowed)
            if unknown:
                raise self.error(
                    f"{field}.{unknown[0]}",
                    "unknown field",
                    fix=f"allowed fields: {', '.join(sorted(allowed))}",
                )
        return raw

    def name(self, raw: dict[str, Any], key: str, field: str) -> str:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(
                f"{field}.{key}", f"must be a name, got {short_repr(value)}", fix="write a plain name"
            )
        return str(value)

    def number(
        self,
        raw: dict[str, Any],
        key: str,
        field: str,
        *,
        default: float | None = None,
        positive: bool = True,
    ) -> float:
        if key not in raw:
            if default is None:
                raise self.error(f"{field}.{key}", "is missing", fix=f"add {key}: <number>")
            return default
        value = finite_number(raw[key], where=self.where, field=f"{field}.{key}")
        if (positive and value <= 0) or value < 0:
            raise self.error(
                f"{field}.{key}",
                f"must be {'> 0' if positive else '>= 0'}, got {value}",
                fix="use a positive number",
            )
        return float(value)

    def sequence(self, raw: Any, field: str) -> list[Any]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.error(field, f"must be a list, got {short_repr(raw)}", fix="write it as `- ...` items")
        return raw

    def link_values(self, raw: dict[str, Any], field: str) -> tuple[float, float]:
        bandwidth = gbps_to_bytes_per_s(self.number(raw, "bandwidth_gbps", field))
        latency = self.number(raw, "latency_ms", field, default=0.0, positive=False) * MS
        return bandwidth, latency


def _expand_nodes(
    reader: _Reader, raw: Any, catalog: GPUCatalog, regions: dict[str, RegionSpec]
) -> list[NodeSpec]:
    if not isinstance(raw, list) or not raw:
        raise reader.error("nodes", "must be a non-empty list", fix="list the cluster's nodes")
    check_node_count(len(raw), where=reader.where)
    counts = []
    for i, item in enumerate(raw):
        field = f"nodes[{i}]"
        item = reader.mapping(item, field, _NODE_FIELDS)
        if "count" in item:
            count = whole_number(item["count"], where=reader.where, field=f"{field}.count")
            if count < 1:
                raise reader.error(f"{field}.count", f"must be >= 1, got {count}", fix="use a positive count")
            counts.append(count)
            check_node_count(sum(counts), where=reader.where, field=f"{field}.count")
    nodes = []
    for i, item in enumerate(raw):
        field = f"nodes[{i}]"
        for key in ("name", "gpu"):
            if key not in item:
                raise reader.error(f"{field}.{key}", "is missing", fix=f"add {key}: ...")
        gpu = catalog.get(reader.name(item, "gpu", field), where=reader.where, field=f"{field}.gpu")
        region = reader.name(item, "region", field) if "region" in item else next(iter(regions), "default")
        if regions and region not in regions:
            raise reader.error(
                f"{field}.region", f"unknown region {region!r}", fix=f"use one of {sorted(regions)}"
            )
        nic = item.get("nic_gbps")
        nic_bytes = (
            gpu.nic_bytes_per_s
            if nic is None
            else gbps_to_bytes_per_s(reader.number(item, "nic_gbps", field))
        )
        count = (
            whole_number(item["count"], where=reader.where, field=f"{field}.count")
            if "count" in item
            else None
        )
        base = reader.name(item, "name", field)
        names = [base] if count is None else [f"{base}-{j}" for j in range(count)]
        nodes.extend(NodeSpec(name=n, gpu=gpu, region=region, nic_bytes_per_s=nic_bytes) for n in names)
    return nodes


def _regions(reader: _Reader, raw: Any) -> dict[str, RegionSpec]:
    if raw is None:
        return {"default": RegionSpec("default", gbps_to_bytes_per_s(10.0), 1 * MS)}
    regions = {}
    if not reader.mapping(raw, "regions"):
        raise reader.error("regions", "is empty", fix="name at least one region, or leave `regions` out")
    for name, values in raw.items():
        values = reader.mapping(values, f"regions.{name}", _LINK_FIELDS)
        bandwidth, latency = reader.link_values(values, f"regions.{name}")
        regions[str(name)] = RegionSpec(str(name), bandwidth, latency)
    return regions


def _pair_defaults(
    reader: _Reader, data: dict[str, Any], regions: dict[str, RegionSpec]
) -> dict[frozenset[str], tuple[float, float]]:
    inter = data.get("inter_region", {"bandwidth_gbps": 1.0, "latency_ms": 50.0})
    default = reader.link_values(reader.mapping(inter, "inter_region", _LINK_FIELDS), "inter_region")
    pairs: dict[frozenset[str], tuple[float, float]] = {}
    for a in regions:
        for b in regions:
            pairs[frozenset((a, b))] = (
                (regions[a].bandwidth_bytes_per_s, regions[a].latency_s) if a == b else default
            )
    for i, item in enumerate(reader.sequence(data.get("region_pairs"), "region_pairs")):
        field = f"region_pairs[{i}]"
        item = reader.mapping(item, field, _LINK_FIELDS | {"regions"})
        pair = item.get("regions")
        if not isinstance(pair, list) or len(pair) != 2 or any(str(r) not in regions for r in pair):
            raise reader.error(
                f"{field}.regions", "must name two known regions", fix=f"use two of {sorted(regions)}"
            )
        pairs[frozenset(str(r) for r in pair)] = reader.link_values(item, field)
    return pairs


def _links(
    reader: _Reader,
    data: dict[str, Any],
    nodes: list[NodeSpec],
    coord_region: str,
    pairs: dict[frozenset[str], tuple[float, float]],
) -> list[LinkSpec]:
    region_of = {n.name: n.region for n in nodes} | {COORDINATOR: coord_region}
    ends = [COORDINATOR] + [n.name for n in nodes]
    values = {}
    for a in ends:
        for b in ends:
            if a != b:
                values[(a, b)] = pairs[frozenset((region_of[a], region_of[b]))]
    for i, item in enumerate(reader.sequence(data.get("links"), "links")):
        field = f"links[{i}]"
        item = reader.mapping(item, field, _LINK_FIELDS | {"src", "dst", "symmetric"})
        src = reader.name(item, "src", field) if "src" in item else ""
        dst = reader.name(item, "dst", field) if "dst" in item else ""
        for key, end in (("src", src), ("dst", dst)):
            if end not in region_of:
                raise reader.error(
                    f"{field}.{key}",
                    f"link to unknown node {end!r}",
                    fix=f"use a node name or {COORDINATOR!r}",
                )
        link_values = reader.link_values(item, field)
        values[(src, dst)] = link_values
        symmetric = item.get("symmetric", True)
        if not isinstance(symmetric, bool):
            raise reader.error(f"{field}.symmetric", "must be true or false", fix="write `symmetric: false`")
        if symmetric:
            values[(dst, src)] = link_values
    return [LinkSpec(a, b, bw, lat) for (a, b), (bw, lat) in values.items()]


def cluster_from_dict(
    data: Any, *, where: str = "cluster", catalog: GPUCatalog | None = None, base_dir: Path | None = None
) -> ClusterSpec:
    """Build and validate a `ClusterSpec` from parsed YAML."""
    reader = _Reader(where)
    data = reader.mapping(data, "(top level)")
    unknown = set(data) - _TOP_FIELDS
    if unknown:
        raise reader.error(sorted(unknown)[0], "unknown field", fix=f"allowed fields: {sorted(_TOP_FIELDS)}")
    catalog = (catalog or default_catalog()).with_types(parse_gpu_types(data.get("gpu_types"), where=where))
    regions = _regions(reader, data.get("regions"))
    coordinator = reader.mapping(
        data.get("coordinator", {}), "coordinator", frozenset({"region", "nic_gbps"})
    )
    coord_region = (
        reader.name(coordinator, "region", "coordinator") if "region" in coordinator else next(iter(regions))
    )
    if coord_region not in regions:
        raise reader.error(
            "coordinator.region", f"unknown region {coord_region!r}", fix=f"use one of {sorted(regions)}"
        )
    coord_nic = gbps_to_bytes_per_s(reader.number(coordinator, "nic_gbps", "coordinator", default=10.0))
    nodes = _expand_nodes(reader, data.get("nodes"), catalog, regions)
    links = _links(reader, data, nodes, coord_region, _pair_defaults(reader, data, regions))
    profiles = data.get("profiles")
    if profiles is not None and not isinstance(profiles, str):
        raise reader.error(
            "profiles", f"must be a path, got {short_repr(profiles)}", fix="write a directory path"
        )
    if profiles is not None and base_dir is not None:
        local = base_dir / str(profiles)
        profiles = (
            str(local.resolve())
            if (local / "profile_tables.json").is_file() or str(profiles) != BUNDLED_PROFILES_NAME
            else profiles
        )
    try:
        return ClusterSpec(
            name=reader.name(data, "name", "(top level)") if "name" in data else Path(where).stem,
            nodes=tuple(nodes),
            links=tuple(links),
            coordinator_region=coord_region,
            coordinator_nic_bytes_per_s=coord_nic,
            profiles_dir=profiles,
            regions=tuple(regions.values()),
        )
    except HelixInputError as exc:
        raise exc.located(where) from None


def load_cluster_yaml(path: str | Path, catalog: GPUCatalog | None = None) -> ClusterSpec:
    path = Path(path)
    text = read_input_text(path, what="cluster file", max_bytes=MAX_YAML_FILE_BYTES)
    data = load_yaml_text(text, where=str(path))
    return cluster_from_dict(data, where=str(path), catalog=catalog, base_dir=path.parent)


__all__ = ["cluster_from_dict", "load_cluster_yaml", "validate_cluster"]
