"""GPU types: the catalog of built-in node types and user-added ones (YAML).

A *GPU type* here is a node type: a machine with `num_gpus` identical GPUs used together (tensor
parallel) as one pipeline node, e.g. ``T4x4`` or ``8xH100``. Figures are per node (summed over its GPUs).
Peak FLOP/s are dense fp16/bf16 tensor-core figures from the vendors' data sheets; the NIC figure is a
typical cloud instance's network bandwidth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from helix.errors import HelixInputError
from helix.specs.limits import finite_number, whole_number
from helix.specs.units import GB, gbps_to_bytes_per_s


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """One node type.

    Attributes:
        name: canonical name, e.g. ``A100-40GB``.
        vram_bytes: device memory of the whole node.
        peak_tflops: dense fp16/bf16 tensor TFLOP/s of the whole node.
        hbm_gbytes_per_s: memory bandwidth of the whole node in GB/s.
        nic_gbps: network interface speed in Gbit/s (each direction).
        num_gpus: GPUs in the node (tensor parallel inside it).
        aliases: other names accepted for this type (case-insensitive), e.g. Helix's ``A100``.
    """

    name: str
    vram_bytes: float
    peak_tflops: float
    hbm_gbytes_per_s: float
    nic_gbps: float
    num_gpus: int = 1
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in ("vram_bytes", "peak_tflops", "hbm_gbytes_per_s", "nic_gbps"):
            value = getattr(self, field)
            if not (value > 0 and math.isfinite(value)):
                raise HelixInputError(
                    f"must be a finite number > 0, got {value!r}", field=f"gpu_types.{self.name}.{field}"
                )
        if self.num_gpus < 1:
            raise HelixInputError("must be >= 1", field=f"gpu_types.{self.name}.num_gpus")

    @property
    def nic_bytes_per_s(self) -> float:
        return gbps_to_bytes_per_s(self.nic_gbps)

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_gbytes_per_s * 1e9

    @property
    def peak_flops_per_s(self) -> float:
        return self.peak_tflops * 1e12

    def times(self, n: int, name: str, aliases: tuple[str, ...] = ()) -> GPUSpec:
        """A node of `n` of these GPUs."""
        return GPUSpec(
            name=name,
            vram_bytes=self.vram_bytes * n,
            peak_tflops=self.peak_tflops * n,
            hbm_gbytes_per_s=self.hbm_gbytes_per_s * n,
            nic_gbps=self.nic_gbps,
            num_gpus=self.num_gpus * n,
            aliases=aliases,
        )


def _single_gpus() -> list[GPUSpec]:
    return [
        GPUSpec("H200", 141 * GB, 989.0, 4800.0, 100.0, aliases=("H200-141GB",)),
        GPUSpec("H100-80GB", 80 * GB, 989.0, 3350.0, 100.0, aliases=("H100",)),
        GPUSpec("A100-80GB", 80 * GB, 312.0, 2039.0, 100.0),
        GPUSpec("A100-40GB", 40 * GB, 312.0, 1555.0, 10.0, aliases=("A100",)),
        GPUSpec("L40S", 48 * GB, 362.0, 864.0, 50.0),
        GPUSpec("A10G", 24 * GB, 70.0, 600.0, 25.0),
        GPUSpec("L4", 24 * GB, 121.0, 300.0, 10.0),
        GPUSpec("T4", 16 * GB, 65.0, 320.0, 10.0),
        GPUSpec("V100-16GB", 16 * GB, 125.0, 900.0, 10.0, aliases=("V100",)),
    ]


def _builtin_specs() -> list[GPUSpec]:
    singles = {spec.name: spec for spec in _single_gpus()}
    multi = [
        singles["L4"].times(2, "L4x2"),
        singles["T4"].times(2, "T4x2"),
        singles["T4"].times(4, "T4x4"),
        singles["A10G"].times(4, "A10Gx4"),
        singles["L40S"].times(4, "L40Sx4"),
        singles["A100-80GB"].times(8, "8xA100-80GB"),
        singles["H100-80GB"].times(8, "8xH100", aliases=("H100x8",)),
        singles["H200"].times(8, "8xH200", aliases=("H200x8",)),
    ]
    return list(singles.values()) + multi


class GPUCatalog:
    """Name → `GPUSpec` lookup with case-insensitive aliases. Immutable once built."""

    def __init__(self, specs: list[GPUSpec]) -> None:
        self._by_key: dict[str, GPUSpec] = {}
        for spec in specs:
            for key in (spec.name, *spec.aliases):
                self._by_key[key.lower()] = spec
        self._specs = tuple(specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self._specs)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._by_key

    def get(self, name: str, *, where: str = "", field: str = "") -> GPUSpec:
        try:
            return self._by_key[name.lower()]
        except KeyError:
            raise HelixInputError(
                f"unknown GPU type {name!r}",
                where=where,
                field=field,
                fix=f"use one of {', '.join(self.names)} or define it under gpu_types",
            ) from None

    def with_types(self, specs: list[GPUSpec]) -> GPUCatalog:
        """A new catalog with `specs` added (replacing same-named built-ins)."""
        new_names = {s.name.lower() for s in specs}
        kept = [s for s in self._specs if s.name.lower() not in new_names]
        return GPUCatalog(kept + specs)


def default_catalog() -> GPUCatalog:
    """The built-in GPU types."""
    return GPUCatalog(_builtin_specs())


_GPU_FIELDS = {"vram_gb", "peak_tflops", "hbm_gbytes_per_s", "nic_gbps", "num_gpus", "aliases"}


def parse_gpu_types(raw: Any, *, where: str) -> list[GPUSpec]:
    """Parse a ``gpu_types:`` mapping (name → fields, VRAM in GB) from YAML."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise HelixInputError("must be a mapping of type name to fields", where=where, field="gpu_types")
    specs = []
    for name, fields in raw.items():
        field = f"gpu_types.{name}"
        if not isinstance(fields, dict):
            raise HelixInputError("must be a mapping", where=where, field=field)
        unknown = set(fields) - _GPU_FIELDS
        if unknown:
            raise HelixInputError(
                f"unknown field(s) {sorted(unknown)}",
                where=where,
                field=field,
                fix=f"allowed fields: {sorted(_GPU_FIELDS)}",
            )
        for required in ("vram_gb", "peak_tflops", "hbm_gbytes_per_s"):
            if required not in fields:
                raise HelixInputError(
                    "is missing", where=where, field=f"{field}.{required}", fix=f"add {required}: <number>"
                )
        aliases = fields.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise HelixInputError("must be a list of names", where=where, field=f"{field}.aliases")
        number = {
            key: finite_number(fields[key], where=where, field=f"{field}.{key}")
            for key in ("vram_gb", "peak_tflops", "hbm_gbytes_per_s", "nic_gbps")
            if key in fields
        }
        try:
            spec = GPUSpec(
                name=str(name),
                vram_bytes=number["vram_gb"] * GB,
                peak_tflops=number["peak_tflops"],
                hbm_gbytes_per_s=number["hbm_gbytes_per_s"],
                nic_gbps=number.get("nic_gbps", 10.0),
                num_gpus=whole_number(fields.get("num_gpus", 1), where=where, field=f"{field}.num_gpus"),
                aliases=tuple(aliases),
            )
        except HelixInputError as exc:
            raise exc.located(where) from None
        except (TypeError, ValueError) as exc:
            raise HelixInputError(
                f"bad value ({exc})",
                where=where,
                field=field,
                fix="use numbers for vram_gb, peak_tflops, ...",
            ) from None
        specs.append(spec)
    return specs


def load_catalog(path: str | Path | None = None) -> GPUCatalog:
    """The built-in catalog, extended with the ``gpu_types`` of a YAML file if given."""
    catalog = default_catalog()
    if path is None:
        return catalog
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise HelixInputError(f"cannot read ({exc})", where=str(path)) from None
    raw = raw.get("gpu_types", raw) if isinstance(raw, dict) else raw
    return catalog.with_types(parse_gpu_types(raw, where=str(path)))


def replace(spec: GPUSpec, **changes: Any) -> GPUSpec:
    return dataclasses.replace(spec, **changes)
