"""Allocating a stage's paged KV cache and sizing it from the memory left after the weights."""

from __future__ import annotations

import os

import torch

from helix.engine.config import ModelConfig

CPU_KV_CACHE_BYTES = 256 << 20  # default KV budget per stage on CPU (RAM is shared)


def kv_block_bytes(config: ModelConfig, num_layers: int, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one KV block across `num_layers` layers (K and V)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return num_layers * block_size * config.kv_bytes_per_token_per_layer(itemsize)


def allocate_kv_cache(
    config: ModelConfig,
    num_layers: int,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """Zeroed cache [num_layers, 2, num_blocks + 1, block_size, Hkv, D]; block `num_blocks` is scratch."""
    shape = (num_layers, 2, num_blocks + 1, block_size, config.num_kv_heads, config.head_dim)
    return torch.zeros(shape, dtype=dtype, device=device)


def available_kv_bytes(device: torch.device, memory_utilization: float, activation_bytes: int) -> int:
    """Bytes the KV cache may take: on CUDA, `utilization` of the device minus what is in use
    (weights, other processes) and the activation peak; on CPU `CPU_KV_CACHE_BYTES`, capped by
    free RAM."""
    if device.type == "cuda":
        free_bytes, total_bytes = torch.cuda.mem_get_info(device)
        used_bytes = total_bytes - free_bytes
        return int(total_bytes * memory_utilization) - used_bytes - activation_bytes
    free_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return int(min(CPU_KV_CACHE_BYTES, free_ram * memory_utilization / 2))
