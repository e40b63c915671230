"""CUDA graphs for pure-decode steps: one graph per batch-size bucket over static buffers.

A decode step of B sequences replays the graph of the smallest bucket >= B; rows B..bucket-1 are
padding that write their K/V to the scratch block and attend to it alone. The host sends only what it
must: the inputs, each row's context length and its block table. Positions and cache slots are derived
inside the graph (position = length - 1, slot = table[position // block] * block + position % block).

Host work per step is kept small and off the GPU's path: block tables live in a persistent host
matrix whose rows are rewritten only where a sequence changed (a new sequence in that row, or a new
block every `block_size` tokens), and are staged through two pinned buffers used in turn, so the copy of
step t may still be in flight while the host prepares step t + 1 (an event guards each buffer's reuse).
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from helix.engine.batch import AttentionMetadata
from helix.engine.model.llama import LlamaStage


def graph_buckets(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to `max_batch_size` (inclusive)."""
    buckets = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    buckets += list(range(16, max_batch_size, 16)) + [max_batch_size]
    return sorted(set(buckets))


class _HostStaging:
    """Block tables and context lengths on the host, and the pinned buffers they travel through."""

    def __init__(self, max_batch: int, max_blocks: int, scratch_block: int) -> None:
        self.scratch_block = scratch_block
        self.tables = np.full((max_batch, max_blocks), scratch_block, dtype=np.int32)
        self.row_seq = [-1] * max_batch  # sequence whose table row i holds (-1: padding)
        self.row_len = [1] * max_batch  # blocks of that row already written
        pinned = torch.cuda.is_available()
        self.pinned = [
            torch.empty(max_batch * (max_blocks + 1), dtype=torch.int32, pin_memory=pinned) for _ in range(2)
        ]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def fill(self, seq_ids, context_lens, tables, bucket: int) -> torch.Tensor:
        """Write rows [0, bucket); returns the pinned prefix to send: lens [max_batch], then tables rows."""
        rows, row_seq, row_len = self.tables, self.row_seq, self.row_len
        for i, (seq_id, table) in enumerate(zip(seq_ids, tables, strict=True)):
            n = len(table)
            if row_seq[i] != seq_id:
                rows[i, :n] = table
                row_seq[i], row_len[i] = seq_id, n
            elif n != row_len[i]:
                rows[i, row_len[i] : n] = table[row_len[i] :]
                row_len[i] = n
        for i in range(len(seq_ids), bucket):
            if row_seq[i] != -1:
                rows[i, 0] = self.scratch_block
                row_seq[i], row_len[i] = -1, 1
        buffer = self.pinned[self.turn]
        event = self.events[self.turn]
        if event is not None:
            event.synchronize()  # the copy that last read this buffer is done
        num_rows, width = rows.shape
        host = buffer.numpy()
        host[: len(context_lens)] = context_lens
        host[len(context_lens) : bucket] = 1
        host[num_rows : num_rows + bucket * width] = rows[:bucket].reshape(-1)
        return buffer[: num_rows + bucket * width]

    def mark_sent(self) -> None:
        if torch.cuda.is_available():
            event = self.events[self.turn] or torch.cuda.Event()
            event.record()
            self.events[self.turn] = event
        self.turn ^= 1


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
        n = self.max_batch_size = max_batch_size
        self.max_blocks = max_blocks_per_seq
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(n, hidden, dtype=dtype, device=device)
        # lens [n] then tables [n, max_blocks], one buffer so that one copy carries both (a bucket of
        # B rows reads lens[:B] and the first B table rows: the layout does not depend on the bucket)
        self.metadata = torch.empty(n * (max_blocks_per_seq + 1), dtype=torch.int32, device=device)
        self.staging = _HostStaging(n, max_blocks_per_seq, scratch_block)
        self.buckets = graph_buckets(max_batch_size)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        for bucket in self.buckets:
            self._write_padding(bucket)
        self._capture_all()

    def _views(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.max_batch_size
        lens = self.metadata[:bucket]
        tables = self.metadata[n : n + bucket * self.max_blocks].view(bucket, self.max_blocks)
        return lens, tables

    def _write_padding(self, bucket: int) -> None:
        lens, tables = self._views(bucket)
        lens.fill_(1)
        tables.fill_(self.scratch_block)

    def _forward(self, batch_size: int) -> torch.Tensor:
        lens, tables = self._views(batch_size)
        positions = (lens - 1).long()
        blocks = tables.gather(1, (positions // self.block_size)[:, None])[:, 0].long()
        slots = blocks * self.block_size + positions % self.block_size
        meta = AttentionMetadata(
            slot_mapping=slots,
            prefill=(),
            num_prefill_tokens=0,
            decode_block_tables=tables,
            decode_context_lens=lens,
            max_decode_context_len=self.max_blocks * self.block_size,
            block_size=self.block_size,
            decode_backend="triton",
        )
        inputs = self.input_ids if self.model.is_first else self.hidden
        out = self.model(inputs[:batch_size], positions, self.kv_caches, meta)
        return self.model.compute_logits(out) if self.model.is_last else out

    @torch.inference_mode()
    def _capture_all(self) -> None:
        from helix.engine.model.triton_gemm import CHOOSER

        pool = torch.cuda.graph_pool_handle()
        for batch_size in reversed(self.buckets):
            self._write_padding(batch_size)
            CHOOSER.tuning = True
            try:
                self._forward(batch_size)  # warm up: compile kernels, pick GEMM kernels
            finally:
                CHOOSER.tuning = False
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
        seq_ids: list[int],
        context_lens: list[int],  # including the new token
        block_tables: list[list[int]],
        *,
        clone: bool = True,
    ) -> torch.Tensor:  # [B, H] hidden states or [B, V] float32 logits
        """Replay the bucket's graph. With `clone=False` the output is the graph's static buffer,
        valid until the next replay (consumers on the same stream may read it in order)."""
        batch_size = len(seq_ids)
        bucket = self.bucket_for(batch_size)
        assert bucket is not None
        host = self.staging.fill(seq_ids, context_lens, block_tables, bucket)
        self.metadata[: host.shape[0]].copy_(host, non_blocking=True)
        self.staging.mark_sent()
        target = self.input_ids if self.model.is_first else self.hidden
        target[:batch_size].copy_(inputs, non_blocking=True)
        graph, out = self._graphs[bucket]
        graph.replay()
        return out[:batch_size].clone() if clone else out[:batch_size]

    def replay_only(self, batch_size: int) -> None:
        """Replay the graph of `batch_size`'s bucket on the current buffers (for timing the GPU alone)."""
        bucket = self.bucket_for(batch_size)
        assert bucket is not None
        self._graphs[bucket][0].replay()
