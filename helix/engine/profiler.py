"""Measuring a model on a device: per-layer prompt and decode times, KV blocks per layer count.

Outputs the table format of Helix's profiles (see `write_profile`): `prompt_bs2time.csv` rows
`tokens,ms` and `decode_bs2time.csv` rows `batch,ms`, both for ONE layer, and `profile_tables.json`.
Timings use random weights (time does not depend on values) in a middle stage of
`num_layers_timed` layers, divided by that count. Decode sequences each hold
`decode_context_tokens` tokens of context (1,000 by default, about Helix's typical context).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass

import torch

from helix.engine.batch import SeqChunk, StepBatch
from helix.engine.config import EngineConfig, LayerRange, ModelConfig
from helix.engine.kv_cache import kv_block_bytes
from helix.engine.loader import build_stage
from helix.engine.model_runner import ModelRunner


def reference_decode_batches(max_batch: int) -> tuple[int, ...]:
    """Helix's decode grid: 2..20 by 2, 25..100 by 5, then by 20, up to `max_batch`."""
    grid = list(range(2, 21, 2)) + list(range(25, 101, 5)) + list(range(120, 801, 20))
    return tuple(b for b in grid if b <= max_batch)


@dataclass(frozen=True, slots=True)
class ProfileOptions:
    """What to measure; defaults follow Helix's grids, scaled down on CPU by `for_device`."""

    prompt_tokens: tuple[int, ...] = tuple(range(250, 8001, 250))
    decode_batches: tuple[int, ...] = reference_decode_batches(512)
    decode_context_tokens: int = 1000
    prompt_seq_tokens: int = 1000  # a prompt batch of T tokens is sequences of at most this many
    num_layers_timed: int = 2
    num_repeats: int = 3
    block_size: int = 16
    memory_utilization: float = 0.9
    min_kv_tokens: int = 32768  # a layer count is usable if its KV cache holds this many tokens
    max_prompt_requests: int = 3

    @classmethod
    def for_device(cls, device: torch.device) -> ProfileOptions:
        if device.type == "cuda":
            return cls()
        return cls(prompt_tokens=tuple(range(250, 2001, 250)), decode_batches=reference_decode_batches(32))


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """Per-layer timings and capacity tables of one model on one device."""

    machine_type: str
    prompt_ms: tuple[tuple[int, float], ...]  # (tokens, ms per layer)
    decode_ms: tuple[tuple[int, float], ...]  # (batch, ms per layer)
    kv_blocks_by_layers: dict[int, int]
    prompt_max_requests_by_layers: dict[int, int]
    decode_max_tokens_by_layers: dict[int, int]

    @property
    def max_layers(self) -> int:
        return max(self.kv_blocks_by_layers, default=0)


def machine_type(device: torch.device) -> str:
    """E.g. `H100` for "NVIDIA H100 80GB HBM3", `CPU` on the CPU."""
    if device.type != "cuda":
        return "CPU"
    words = torch.cuda.get_device_name(device).replace("NVIDIA", "").split()
    return words[0].upper() if words else "GPU"


def _timed_ms(runner: ModelRunner, batch: StepBatch, inputs: torch.Tensor, repeats: int) -> float:
    """Median wall time of `execute` in ms; sequences are freed and re-reserved around each run."""
    times = []
    for i in range(repeats + 1):  # the first run warms up
        _synchronize(runner.device)
        start = time.perf_counter()
        runner.execute(batch, inputs)
        _synchronize(runner.device)
        if i:
            times.append((time.perf_counter() - start) * 1000.0)
        for chunk in batch.chunks:  # undo the step's growth so every run sees the same lengths
            _reset_seq(runner, chunk)
    return statistics.median(times)


def _reset_seq(runner: ModelRunner, chunk: SeqChunk) -> None:
    runner.free(chunk.seq_id)
    if chunk.num_cached_tokens:
        runner.block_manager.allocate(chunk.seq_id, chunk.num_cached_tokens)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(runner: ModelRunner, num_tokens: int) -> torch.Tensor:
    hidden = runner.model.config.hidden_size
    generator = torch.Generator(device=runner.device).manual_seed(num_tokens)
    return torch.randn(num_tokens, hidden, generator=generator, device=runner.device, dtype=runner.dtype)


def time_prompts(runner: ModelRunner, options: ProfileOptions) -> list[tuple[int, float]]:
    rows = [(0, 0.0)]
    for tokens in options.prompt_tokens:
        sizes = [options.prompt_seq_tokens] * (tokens // options.prompt_seq_tokens)
        sizes += [tokens % options.prompt_seq_tokens] if tokens % options.prompt_seq_tokens else []
        batch = StepBatch(tuple(SeqChunk(i, 0, n) for i, n in enumerate(sizes)))
        ms = _timed_ms(runner, batch, _inputs(runner, tokens), options.num_repeats)
        rows.append((tokens, ms / options.num_layers_timed))
    return rows


def time_decodes(runner: ModelRunner, options: ProfileOptions) -> list[tuple[int, float]]:
    rows = [(0, 0.0)]
    context = options.decode_context_tokens
    for batch_size in options.decode_batches:
        for seq_id in range(batch_size):
            runner.block_manager.allocate(seq_id, context)
        batch = StepBatch(tuple(SeqChunk(i, context, 1) for i in range(batch_size)))
        ms = _timed_ms(runner, batch, _inputs(runner, batch_size), options.num_repeats)
        for seq_id in range(batch_size):
            runner.free(seq_id)
        rows.append((batch_size, ms / options.num_layers_timed))
    return rows


def _device_memory(device: torch.device) -> tuple[int, int]:
    """(total bytes, bytes in use by anything) of the device (RAM for the CPU)."""
    if device.type == "cuda":
        free_bytes, total_bytes = torch.cuda.mem_get_info(device)
        return total_bytes, total_bytes - free_bytes
    page = os.sysconf("SC_PAGE_SIZE")
    total_bytes = page * os.sysconf("SC_PHYS_PAGES")
    return total_bytes, total_bytes - page * os.sysconf("SC_AVPHYS_PAGES")


def capacity_tables(
    config: ModelConfig,
    dtype: torch.dtype,
    options: ProfileOptions,
    total_bytes: int,
    reserved_bytes: int,
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """KV blocks, prompt-request and decode-batch limits for each usable layer count k.

    blocks(k) = (total * utilization - reserved - k * layer weight bytes) / (k * block bytes per
    layer), where `reserved` is memory used by others before loading plus the activation peak;
    k is usable while blocks(k) hold `min_kv_tokens`. decode_max_tokens(k) is the largest profiled
    batch whose contexts (`decode_context_tokens` each) fit; prompt_max_requests(k) is capped by
    `max_prompt_requests` and the same fit.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    layer_bytes = config.layer_param_count() * itemsize
    block_bytes = kv_block_bytes(config, 1, options.block_size, dtype)
    budget = total_bytes * options.memory_utilization - reserved_bytes
    kv_blocks, prompt_max, decode_max = {}, {}, {}
    for k in range(1, config.num_layers + 1):
        blocks = int((budget - k * layer_bytes) // (k * block_bytes))
        if blocks * options.block_size < options.min_kv_tokens:
            break
        fit = blocks * options.block_size // options.decode_context_tokens
        kv_blocks[k] = blocks
        decode = min(max(options.decode_batches, default=1), fit)
        decode_max[k] = max(1, decode - decode % 5 if decode >= 10 else decode)
        prompt_max[k] = max(1, min(options.max_prompt_requests, fit))
    return kv_blocks, prompt_max, decode_max


def profile_model(
    config: ModelConfig,
    device: torch.device,
    dtype: torch.dtype,
    options: ProfileOptions | None = None,
    *,
    make_runner=None,
    capacity_config: ModelConfig | None = None,
) -> ProfileResult:
    """Time prompt and decode batches of one layer of `config` on `device` and size its KV cache.

    `make_runner(timed_config, layer_range, engine_config, max_len)` builds the timed runner instead
    of one `ModelRunner` (a tensor-parallel node: `helix.engine.tp.profile`); `capacity_config` is the
    shape one device holds for the capacity tables (a rank's shard), `config` by default.
    """
    options = options or ProfileOptions.for_device(device)
    total_bytes, used_before = _device_memory(device)
    n = options.num_layers_timed
    timed = dataclasses.replace(config, num_layers=n + 2)  # a middle stage: no embedding, no head
    max_len = max(options.prompt_seq_tokens, options.decode_context_tokens + options.num_repeats + 2)
    max_batch = max(options.decode_batches, default=1)
    blocks_per_seq = -(-max_len // options.block_size)
    num_prompt_seqs = -(-max(options.prompt_tokens, default=1) // options.prompt_seq_tokens)
    engine_config = EngineConfig(
        block_size=options.block_size,
        num_kv_blocks=blocks_per_seq * max(max_batch, num_prompt_seqs),
        max_model_len=max_len,
        max_num_batched_tokens=max(options.prompt_tokens, default=1),
        max_graph_batch_size=max_batch,
    )
    if make_runner is not None:
        runner = make_runner(timed, LayerRange(1, n + 1), engine_config, max_len)
    else:
        stage = build_stage(timed, LayerRange(1, n + 1), device=device, dtype=dtype, max_positions=max_len)
        runner = ModelRunner(stage, engine_config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    prompt_ms = time_prompts(runner, options)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    decode_ms = time_decodes(runner, options)
    kv, prompt_max, decode_max = capacity_tables(
        capacity_config or config, dtype, options, total_bytes, used_before + max(0, peak - allocated)
    )
    return ProfileResult(machine_type(device), tuple(prompt_ms), tuple(decode_ms), kv, prompt_max, decode_max)
