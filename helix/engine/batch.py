"""What one step computes on one stage: a compact, picklable descriptor, and the tensors built from it.

A `StepBatch` lists, per sequence, how many of its tokens already have K/V in this stage's cache and
how many new tokens this step computes. The packed token dimension `T` of every input and output is
the concatenation of the chunks' new tokens in order. Prompt chunks (`num_new_tokens > 1` or nothing
cached yet) come first, decode chunks (one new token after a cached context) last.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SeqChunk:
    """New tokens of one sequence in a step: positions [num_cached_tokens, num_cached + num_new)."""

    seq_id: int
    num_cached_tokens: int
    num_new_tokens: int

    @property
    def is_decode(self) -> bool:
        return self.num_new_tokens == 1 and self.num_cached_tokens > 0

    @property
    def num_total_tokens(self) -> int:
        return self.num_cached_tokens + self.num_new_tokens


@dataclass(frozen=True, slots=True)
class StepBatch:
    """The chunks of one step: prompt chunks first, then decode chunks; each sequence at most once."""

    chunks: tuple[SeqChunk, ...]

    def __post_init__(self) -> None:
        seen_decode = False
        for chunk in self.chunks:
            if chunk.num_new_tokens < 1 or chunk.num_cached_tokens < 0:
                raise ValueError(f"chunk of sequence {chunk.seq_id} has no new tokens")
            if seen_decode and not chunk.is_decode:
                raise ValueError("prompt chunks must come before decode chunks in a StepBatch")
            seen_decode = seen_decode or chunk.is_decode
        if len({c.seq_id for c in self.chunks}) != len(self.chunks):
            raise ValueError("a sequence appears twice in one StepBatch")

    @property
    def num_tokens(self) -> int:
        return sum(c.num_new_tokens for c in self.chunks)

    @property
    def num_decode(self) -> int:
        return sum(1 for c in self.chunks if c.is_decode)

    @property
    def is_pure_decode(self) -> bool:
        return bool(self.chunks) and all(c.is_decode for c in self.chunks)

    def positions(self) -> list[int]:
        """Position of every new token, in packed order (length T)."""
        out: list[int] = []
        for c in self.chunks:
            out.extend(range(c.num_cached_tokens, c.num_total_tokens))
        return out

    def last_token_rows(self) -> list[int]:
        """Row in the packed token dimension of each chunk's last new token."""
        rows, end = [], 0
        for c in self.chunks:
            end += c.num_new_tokens
            rows.append(end - 1)
        return rows


def decode_chunks(seq_ids: list[int], context: list[int]) -> tuple[SeqChunk, ...]:
    """One decode chunk per sequence: a new token after `context[i]` cached ones."""
    return tuple(SeqChunk(s, c, 1) for s, c in zip(seq_ids, context, strict=True))


@dataclass(frozen=True, slots=True)
class PrefillSegment:
    """A prompt chunk: rows [start, start + num_new) of the packed tokens."""

    start: int
    num_new: int
    num_cached: int
    block_table: torch.Tensor | None  # [num_blocks] int64, only when num_cached > 0


@dataclass(slots=True)
class AttentionMetadata:
    """Device tensors the attention layers need for one step (shared by all layers of a stage).

    slot_mapping: [T] int64, cache slot each new token's K/V is written to.
    decode_block_tables: [D, max_blocks] int32 (rows past a sequence's blocks hold any valid block).
    decode_context_lens: [D] int32, context length of each decode sequence including its new token.
    """

    slot_mapping: torch.Tensor
    prefill: tuple[PrefillSegment, ...]
    num_prefill_tokens: int
    decode_block_tables: torch.Tensor | None
    decode_context_lens: torch.Tensor | None
    max_decode_context_len: int
    block_size: int
    decode_backend: str  # "sdpa" (gather the pages) or "triton" (paged kernel)
    # The varlen prefill kernel's view of the prompt chunks (CUDA `triton` backend only), [S] int32
    # each and block tables [S, max_blocks] int32; None on the reference path.
    prefill_starts: torch.Tensor | None = None
    prefill_num_new: torch.Tensor | None = None
    prefill_num_cached: torch.Tensor | None = None
    prefill_tables: torch.Tensor | None = None
    max_prefill_new: int = 0
