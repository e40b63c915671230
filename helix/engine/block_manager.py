"""Paged KV-cache bookkeeping: fixed-size blocks and one block table per sequence.

Check-then-act pairs: `can_allocate`/`allocate` for a new sequence, `can_append`/`append` for more
tokens of a known one, `free` on finish or cancel. A failed act raises `KVCacheExhaustedError` and
changes nothing. Slot `s` of the cache is token `s % block_size` of block `s // block_size`.
"""

from __future__ import annotations

from collections import deque

from helix.engine.errors import KVCacheExhaustedError


class BlockManager:
    """Owns which cache blocks are free and which sequence holds which blocks, in order."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        assert num_blocks >= 0 and block_size >= 1
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free_blocks: deque[int] = deque(range(num_blocks))
        self._block_tables: dict[int, list[int]] = {}
        self._num_tokens: dict[int, int] = {}

    # ---- queries ----
    @property
    def num_free_blocks(self) -> int:
        return len(self._free_blocks)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_blocks)

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def has(self, seq_id: int) -> bool:
        return seq_id in self._block_tables

    def seq_ids(self) -> list[int]:
        return list(self._block_tables)

    def block_table(self, seq_id: int) -> list[int]:
        return self._block_tables[seq_id]

    def num_tokens(self, seq_id: int) -> int:
        return self._num_tokens[seq_id]

    def slots(self, seq_id: int, start: int, end: int) -> list[int]:
        """Cache slots of token positions [start, end) of a sequence (all must be allocated)."""
        assert 0 <= start <= end <= self._num_tokens[seq_id]
        table, size = self._block_tables[seq_id], self.block_size
        return [table[p // size] * size + p % size for p in range(start, end)]

    # ---- check-then-act ----
    def can_allocate(self, num_tokens: int) -> bool:
        return self.num_blocks_for(num_tokens) <= len(self._free_blocks)

    def allocate(self, seq_id: int, num_tokens: int) -> list[int]:
        """Give a new sequence blocks for `num_tokens` tokens; returns its block table."""
        if seq_id in self._block_tables:
            raise ValueError(f"sequence {seq_id} already holds KV blocks")
        needed = self.num_blocks_for(num_tokens)
        if needed > len(self._free_blocks):
            raise KVCacheExhaustedError(needed, len(self._free_blocks))
        self._block_tables[seq_id] = [self._free_blocks.popleft() for _ in range(needed)]
        self._num_tokens[seq_id] = num_tokens
        return self._block_tables[seq_id]

    def num_new_blocks_for_append(self, seq_id: int, num_new_tokens: int) -> int:
        total = self._num_tokens[seq_id] + num_new_tokens
        return self.num_blocks_for(total) - len(self._block_tables[seq_id])

    def can_append(self, seq_id: int, num_new_tokens: int = 1) -> bool:
        return self.num_new_blocks_for_append(seq_id, num_new_tokens) <= len(self._free_blocks)

    def append(self, seq_id: int, num_new_tokens: int = 1) -> list[int]:
        """Make room for `num_new_tokens` more tokens; returns the blocks added (maybe none)."""
        needed = self.num_new_blocks_for_append(seq_id, num_new_tokens)
        if needed > len(self._free_blocks):
            raise KVCacheExhaustedError(needed, len(self._free_blocks))
        added = [self._free_blocks.popleft() for _ in range(needed)]
        self._block_tables[seq_id].extend(added)
        self._num_tokens[seq_id] += num_new_tokens
        return added

    def free(self, seq_id: int) -> None:
        """Return a sequence's blocks (no-op for an unknown sequence, so cancel is idempotent)."""
        table = self._block_tables.pop(seq_id, None)
        self._num_tokens.pop(seq_id, None)
        if table:
            self._free_blocks.extend(table)
        assert len(self._free_blocks) <= self.num_blocks, "a block was freed twice"
