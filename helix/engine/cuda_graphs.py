"""CUDA graphs for pure-decode steps: one graph per batch-size bucket over static buffers.

A decode step of B sequences replays the graph of the smallest bucket >= B; rows B..bucket-1 are
padding that write their K/V to the scratch block and attend to it alone. Inputs are copied into
the static buffers before a replay; outputs are cloned out after it.
"""

from __future__ import annotations

import bisect

import torch

from helix.engine.batch import AttentionMetadata
from helix.engine.model.llama import LlamaStage


def graph_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to `max_batch_size` (inclusive)."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    buckets += list(range(16, max_batch_size, 16)) + [max_batch_size]
    return sorted(set(buckets))


class DecodeGraphs:
    """Captured decode graphs of one stage and their static input/output buffers."""

    def __init__(
        self,
        model: LlamaStage,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        max_batch_size: int,
        max_blocks_per_seq: int,
        scratch_block: int,
        block_size: int,
    ) -> None:
        device = kv_caches[0][0].device
        hidden, dtype = model.config.hidden_size, kv_caches[0][0].dtype
        self.model, self.kv_caches, self.block_size = model, kv_caches, block_size
        self.scratch_block = scratch_block
        n = max_batch_size
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(n, hidden, dtype=dtype, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), scratch_block * block_size, dtype=torch.int64, device=device)
        self.context_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.full(
            (n, max_blocks_per_seq), scratch_block, dtype=torch.int32, device=device
        )
        self.buckets = graph_buckets(max_batch_size)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._capture_all()

    def _forward(self, batch_size: int) -> torch.Tensor:
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch_size],
            prefill=(),
            num_prefill_tokens=0,
            decode_block_tables=self.block_tables[:batch_size],
            decode_context_lens=self.context_lens[:batch_size],
            max_decode_context_len=self.block_tables.shape[1] * self.block_size,
            block_size=self.block_size,
            decode_backend="triton",
        )
        inputs = self.input_ids if self.model.is_first else self.hidden
        out = self.model(inputs[:batch_size], self.positions[:batch_size], self.kv_caches, meta)
        return self.model.compute_logits(out) if self.model.is_last else out

    @torch.inference_mode()
    def _capture_all(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        for batch_size in reversed(self.buckets):
            self._forward(batch_size)  # warm up: compile kernels, pick GEMM algorithms
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self._forward(batch_size)
            self._graphs[batch_size] = (graph, out)
        torch.cuda.synchronize()

    def bucket_for(self, batch_size: int) -> int | None:
        index = bisect.bisect_left(self.buckets, batch_size)
        return self.buckets[index] if index < len(self.buckets) else None

    @torch.inference_mode()
    def run(
        self,
        inputs: torch.Tensor,  # [B] token ids or [B, H] hidden states
        positions: list[int],
        slots: list[int],
        block_tables: list[list[int]],
    ) -> torch.Tensor:  # [B, H] hidden states or [B, V] float32 logits
        batch_size = len(positions)
        bucket = self.bucket_for(batch_size)
        assert bucket is not None
        num_pad = bucket - batch_size
        width = max(len(t) for t in block_tables)
        scratch_slot = self.scratch_block * self.block_size
        host = torch.tensor(
            [
                positions + [0] * num_pad,
                slots + [scratch_slot] * num_pad,
                [p + 1 for p in positions] + [1] * num_pad,
            ],
            dtype=torch.int64,
            pin_memory=True,
        )
        pad_row = [self.scratch_block] * width
        rows = [t + pad_row[len(t) :] for t in block_tables] + [pad_row] * num_pad
        tables = torch.tensor(rows, dtype=torch.int32, pin_memory=True)
        # Pinned memory and non-blocking copies: the host never waits for earlier stages' work.
        self.positions[:bucket].copy_(host[0], non_blocking=True)
        self.slot_mapping[:bucket].copy_(host[1], non_blocking=True)
        self.context_lens[:bucket].copy_(host[2], non_blocking=True)
        self.block_tables[:bucket, :width].copy_(tables, non_blocking=True)
        target = self.input_ids if self.model.is_first else self.hidden
        target[:batch_size].copy_(inputs)
        graph, out = self._graphs[bucket]
        graph.replay()
        return out[:batch_size].clone()

    def replay_only(self, batch_size: int) -> None:
        """Replay the graph of `batch_size`'s bucket on the current buffers (for timing the GPU alone)."""
        bucket = self.bucket_for(batch_size)
        assert bucket is not None
        self._graphs[bucket][0].replay()
