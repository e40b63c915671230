"""One stage's executor: its model, paged KV cache, block manager and decode graphs.

`execute(batch, inputs)` runs one continuous-batching step of the stage: prompt chunks and decode
tokens together, any lengths. Inputs are token ids [T] on the first stage and hidden states [T, H]
on the others; the output is hidden states [T, H], or float32 logits [num_chunks, V] of each chunk's
last token on the last stage. The stage's K/V blocks are reserved on first sight of a sequence and
extended as it grows; `free(seq_id)` returns them.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from helix.engine.batch import AttentionMetadata, PrefillSegment, StepBatch, decode_chunks
from helix.engine.block_manager import BlockManager
from helix.engine.config import EngineConfig
from helix.engine.cuda_graphs import DecodeGraphs
from helix.engine.errors import KVCacheExhaustedError
from helix.engine.kv_cache import allocate_kv_cache, available_kv_bytes, kv_block_bytes
from helix.engine.model.llama import LlamaStage
from helix.errors import HelixInputError


def choose_decode_backend(requested: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """`triton` (paged kernel) on CUDA in 16-bit floats when Triton is installed, else `sdpa`."""
    has_triton = importlib.util.find_spec("triton") is not None
    usable = device.type == "cuda" and has_triton and dtype in (torch.float16, torch.bfloat16)
    usable = usable and head_dim >= 16 and head_dim & (head_dim - 1) == 0
    if requested == "triton" and not usable:
        raise HelixInputError(
            "the Triton attention backend needs CUDA, Triton, 16-bit weights and a power-of-2 head size",
            field="attention_backend",
            fix="use attention_backend='auto' or 'sdpa'",
        )
    return "triton" if requested in ("auto", "triton") and usable else "sdpa"


class ModelRunner:
    """Executes steps of one layer-range stage on one device."""

    def __init__(self, model: LlamaStage, engine_config: EngineConfig | None = None) -> None:
        self.model = model
        self.engine_config = engine_config = engine_config or EngineConfig()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        config = model.config
        self.max_model_len = min(
            engine_config.max_model_len or config.max_position_embeddings, model.rotary.max_positions
        )
        self.block_size = engine_config.block_size
        self.decode_backend = choose_decode_backend(
            engine_config.attention_backend, self.device, self.dtype, config.head_dim
        )
        triton_path = self.decode_backend == "triton"
        model.use_fused_kernels(triton_path, skinny_gemm=triton_path and engine_config.skinny_gemm)
        self.varlen_prefill = triton_path  # all prompt chunks of a step in one varlen kernel
        num_blocks = engine_config.num_kv_blocks or self._blocks_from_memory()
        if num_blocks < 1:
            raise HelixInputError(
                "no memory left for the KV cache after the weights",
                field="layer_range",
                fix="hold fewer layers on this device or raise gpu_memory_utilization",
            )
        num_layers = model.layer_range.num_layers
        self.kv_cache = allocate_kv_cache(
            config, num_layers, num_blocks, self.block_size, self.dtype, self.device
        )
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(num_layers)]
        self.block_manager = BlockManager(
            num_blocks, self.block_size, enable_caching=engine_config.enable_prefix_caching
        )
        self.scratch_block = num_blocks
        self.graphs: DecodeGraphs | None = None
        self.capture_graphs()

    def capture_graphs(self) -> None:
        """(Re)capture the decode graphs (CUDA, Triton backend), e.g. after switching kernels."""
        config = self.engine_config
        self.graphs = None
        if config.use_cuda_graphs and self.device.type == "cuda" and self.decode_backend == "triton":
            max_blocks = -(-self.max_model_len // self.block_size)
            self.graphs = DecodeGraphs(
                self.model,
                self.kv_caches,
                config.max_graph_batch_size,
                max_blocks,
                self.scratch_block,
                self.block_size,
            )

    # ---- capacity ----
    def _blocks_from_memory(self) -> int:
        """KV blocks that fit next to the weights and the activations of the largest step."""
        activation_bytes = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self._warmup(min(self.engine_config.max_num_batched_tokens, self.max_model_len))
            activation_bytes = torch.cuda.max_memory_allocated(self.device) - before
        budget = available_kv_bytes(self.device, self.engine_config.gpu_memory_utilization, activation_bytes)
        block_bytes = kv_block_bytes(
            self.model.config, self.model.layer_range.num_layers, self.block_size, self.dtype
        )
        return max(0, budget // block_bytes)

    @torch.inference_mode()
    def _warmup(self, num_tokens: int) -> None:
        """Run one prompt of `num_tokens` through a one-block scratch cache to measure activations."""
        config = self.model.config
        cache = allocate_kv_cache(
            config, self.model.layer_range.num_layers, 0, self.block_size, self.dtype, self.device
        )
        caches = [(cache[i, 0], cache[i, 1]) for i in range(cache.shape[0])]
        meta = AttentionMetadata(
            slot_mapping=torch.zeros(num_tokens, dtype=torch.int64, device=self.device),
            prefill=(PrefillSegment(0, num_tokens, 0, None),),
            num_prefill_tokens=num_tokens,
            decode_block_tables=None,
            decode_context_lens=None,
            max_decode_context_len=0,
            block_size=self.block_size,
            decode_backend=self.decode_backend,
        )
        if self.varlen_prefill:
            meta.prefill_starts = torch.zeros(1, dtype=torch.int32, device=self.device)
            meta.prefill_num_new = torch.full((1,), num_tokens, dtype=torch.int32, device=self.device)
            meta.prefill_num_cached = torch.zeros(1, dtype=torch.int32, device=self.device)
            width = -(-num_tokens // self.block_size)
            meta.prefill_tables = torch.zeros(1, width, dtype=torch.int32, device=self.device)
            meta.max_prefill_new = num_tokens
        positions = torch.arange(num_tokens, device=self.device)
        if self.model.is_first:
            inputs = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        else:
            inputs = torch.zeros(num_tokens, config.hidden_size, dtype=self.dtype, device=self.device)
        out = self.model(inputs, positions, caches, meta)
        if self.model.is_last:
            self.model.compute_logits(out[-1:])
        del cache, caches, out

    # ---- KV reservation ----
    def num_blocks_needed(self, batch: StepBatch) -> int:
        """New blocks this stage must take to run `batch`."""
        manager, needed = self.block_manager, 0
        for chunk in batch.chunks:
            if manager.has(chunk.seq_id):
                extra = chunk.num_total_tokens - manager.num_tokens(chunk.seq_id)
                needed += max(0, manager.num_new_blocks_for_append(chunk.seq_id, max(0, extra)))
            else:
                needed += manager.num_blocks_for(chunk.num_total_tokens)
        return needed

    def can_reserve(self, batch: StepBatch) -> bool:
        return self.num_blocks_needed(batch) <= self.block_manager.num_free_blocks

    def reserve(self, batch: StepBatch) -> None:
        """Take the blocks `batch` needs, all or none (`KVCacheExhaustedError`)."""
        self._check_lengths(batch)
        needed = self.num_blocks_needed(batch)
        if needed > self.block_manager.num_free_blocks:
            raise KVCacheExhaustedError(needed, self.block_manager.num_free_blocks)
        manager = self.block_manager
        for chunk in batch.chunks:
            if not manager.has(chunk.seq_id):
                manager.allocate(chunk.seq_id, chunk.num_total_tokens)
            elif chunk.num_total_tokens > manager.num_tokens(chunk.seq_id):
                manager.append(chunk.seq_id, chunk.num_total_tokens - manager.num_tokens(chunk.seq_id))

    def _check_lengths(self, batch: StepBatch) -> None:
        for chunk in batch.chunks:
            if chunk.num_total_tokens > self.max_model_len:
                raise HelixInputError(
                    f"sequence {chunk.seq_id} needs {chunk.num_total_tokens} tokens of context, "
                    f"more than the context window of {self.max_model_len}",
                    field="prompt",
                    fix="shorten the prompt or ask for fewer tokens",
                )
            known = self.block_manager.has(chunk.seq_id)
            if chunk.num_cached_tokens and not known:
                raise ValueError(f"sequence {chunk.seq_id} has no cached tokens on this stage")

    def free(self, seq_id: int) -> None:
        self.block_manager.free(seq_id)

    # ---- execution ----
    @torch.inference_mode()
    def execute(
        self, batch: StepBatch, inputs: torch.Tensor, skip_layers: int = 0, *, clone_output: bool = True
    ) -> torch.Tensor:
        """Run one step (see the module docstring for shapes); `skip_layers` > 0 runs only the stage's
        layers from that local index on (inputs are then hidden states).

        `clone_output=False` lets a replayed decode graph hand back its static output buffer (valid
        until this stage's next step; readers on the same CUDA stream see it in order)."""
        graphs = self.graphs
        if (
            graphs is not None
            and skip_layers == 0
            and batch.is_pure_decode
            and graphs.bucket_for(len(batch.chunks))
        ):
            self._reserve_decode(batch)
            manager = self.block_manager
            seq_ids = [c.seq_id for c in batch.chunks]
            lens = [c.num_cached_tokens + 1 for c in batch.chunks]
            tables = [manager.block_table(i) for i in seq_ids]
            return graphs.run(
                inputs.to(self.device, non_blocking=True), seq_ids, lens, tables, clone=clone_output
            )
        self.reserve(batch)
        inputs = inputs.to(self.device, non_blocking=True)
        positions_t, meta = self.prepare(batch)
        hidden = self.model(inputs, positions_t, self.kv_caches, meta, skip_layers)
        if not self.model.is_last:
            return hidden
        rows = torch.tensor(batch.last_token_rows()).to(self.device, non_blocking=True)
        return self.model.compute_logits(hidden.index_select(0, rows))

    @torch.inference_mode()
    def execute_decode(self, seq_ids: list[int], context: list[int], inputs: torch.Tensor) -> torch.Tensor:
        """`execute` of a pure-decode step whose KV is already reserved: sequence `seq_ids[i]` computes
        one new token after `context[i]` cached ones and already holds `context[i] + 1` tokens of blocks
        (`BlockManager.append`). A runtime worker grows its requests' KV while it admits them, so its
        decode steps replay a graph without building a `StepBatch` (no Python object per request)."""
        graphs = self.graphs
        if graphs is None or not graphs.bucket_for(len(seq_ids)):
            return self.execute(StepBatch(decode_chunks(seq_ids, context)), inputs)
        manager = self.block_manager
        lens = [c + 1 for c in context]
        for seq_id, length in zip(seq_ids, lens, strict=True):
            if manager.num_tokens(seq_id) < length:  # a caller that did not reserve: fail, never misplace K/V
                raise ValueError(f"sequence {seq_id} has no KV reserved for position {length - 1}")
        tables = [manager.block_table(s) for s in seq_ids]
        return graphs.run(inputs.to(self.device, non_blocking=True), seq_ids, lens, tables)

    def _reserve_decode(self, batch: StepBatch) -> None:
        """`reserve` for decode chunks of known sequences, without the general checks' overhead."""
        manager, limit = self.block_manager, self.max_model_len
        for chunk in batch.chunks:
            if not manager.has(chunk.seq_id) or chunk.num_total_tokens > limit:
                self.reserve(batch)  # the general path raises the right error
                return
        for chunk in batch.chunks:
            extra = chunk.num_total_tokens - manager.num_tokens(chunk.seq_id)
            if extra > 0:
                if manager.num_new_blocks_for_append(chunk.seq_id, extra) > manager.num_free_blocks:
                    raise KVCacheExhaustedError(1, manager.num_free_blocks)
                manager.append(chunk.seq_id, extra)

    def prepare(self, batch: StepBatch) -> tuple[torch.Tensor, AttentionMetadata]:
        """Positions [T] and attention metadata of a (reserved) batch."""
        manager, device, size = self.block_manager, self.device, self.block_size
        chunks = batch.chunks
        num_tokens = batch.num_tokens
        positions = np.empty(num_tokens, dtype=np.int64)
        slots = np.empty(num_tokens, dtype=np.int64)
        segments, start = [], 0
        decode_tables, decode_lens = [], []
        prompt_tables = []
        for chunk in chunks:
            first, end = chunk.num_cached_tokens, chunk.num_total_tokens
            table = manager.block_table(chunk.seq_id)
            pos = np.arange(first, end)
            positions[start : start + chunk.num_new_tokens] = pos
            slots[start : start + chunk.num_new_tokens] = np.asarray(table)[pos // size] * size + pos % size
            if chunk.is_decode:
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                cached = torch.tensor(table, device=device) if first and not self.varlen_prefill else None
                segments.append(PrefillSegment(start, chunk.num_new_tokens, first, cached))
                prompt_tables.append(table)
            start += chunk.num_new_tokens
        tables_t = lens_t = None
        if decode_tables:
            tables_t = self._padded_tables(decode_tables)
            lens_t = torch.tensor(decode_lens, dtype=torch.int32).to(device, non_blocking=True)
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(slots).to(device, non_blocking=True),
            prefill=tuple(segments),
            num_prefill_tokens=sum(s.num_new for s in segments),
            decode_block_tables=tables_t,
            decode_context_lens=lens_t,
            max_decode_context_len=max(decode_lens, default=0),
            block_size=self.block_size,
            decode_backend=self.decode_backend,
        )
        if segments and self.varlen_prefill:
            described = torch.tensor(
                [[s.start, s.num_new, s.num_cached] for s in segments], dtype=torch.int32
            ).T.contiguous()
            described = described.to(device, non_blocking=True)
            meta.prefill_starts, meta.prefill_num_new, meta.prefill_num_cached = described
            meta.prefill_tables = self._padded_tables(prompt_tables)
            meta.max_prefill_new = max(s.num_new for s in segments)
        return torch.from_numpy(positions).to(device, non_blocking=True), meta

    def _padded_tables(self, tables: list[list[int]]) -> torch.Tensor:
        width = max(len(t) for t in tables)
        padded = np.full((len(tables), width), self.scratch_block, dtype=np.int32)
        for row, table in enumerate(tables):
            padded[row, : len(table)] = table
        return torch.from_numpy(padded).to(self.device, non_blocking=True)
