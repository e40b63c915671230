"""The scheduler's KV capacities from what the workers really allocated.

Every worker reports ``kv_blocks`` and ``kv_block_size`` (its `EngineConfig.block_size`); a node's
capacity in token×layer units is blocks × block size × layers held. Both runtimes (Ray and plain
processes) build their `Topology` through `with_real_kv`, so the block size has one source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from helix.scheduling import Topology


def with_real_kv(topology: Topology, worker_info: Mapping[str, Mapping[str, Any]]) -> Topology:
    """The topology with each node's KV capacity set to its worker's blocks × block size × layers."""
    limits = {}
    for name, limit in topology.limits.items():
        info = worker_info[name]
        real = info["kv_blocks"] * info["kv_block_size"] * topology.ranges[name].num_layers
        limits[name] = dataclasses.replace(limit, kv_capacity_token_layers=real)
    return dataclasses.replace(topology, limits=limits)
