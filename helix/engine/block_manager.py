"""Paged KV-cache bookkeeping: fixed-size blocks, one block table per sequence, and prefix caching.

Check-then-act pairs: `can_allocate`/`allocate` for a new sequence, `can_append`/`append` for more
tokens of a known one, `free` on finish, cancel or preemption. A failed act raises
`KVCacheExhaustedError` and changes nothing. Slot `s` of the cache is token `s % block_size` of block
`s // block_size`.

Prefix caching (`enable_caching`, on by default): a full block whose K/V are computed is addressed
by the hash of its tokens and of every token before it (`commit`). A new sequence whose prompt starts
with cached blocks reuses them (`match_prefix`, then `allocate(..., num_cached_blocks=n)`): blocks
are reference-counted, so sequences share them, and a block no sequence holds stays cached until a
new block is needed and it is the least recently released one (LRU eviction). `free` only drops
references, so cancel and preemption are as safe as finishing.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from helix.engine.errors import KVCacheExhaustedError


class BlockManager:
    """Owns which cache blocks are free, cached or held, and which sequence holds which, in order."""

    def __init__(self, num_blocks: int, block_size: int, *, enable_caching: bool = True) -> None:
        assert num_blocks >= 0 and block_size >= 1
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self._free_blocks: deque[int] = deque(range(num_blocks))  # unreferenced, no hash
        self._evictable: OrderedDict[int, None] = OrderedDict()  # unreferenced, hashed: LRU first
        self._ref_counts = [0] * num_blocks
        self._hash_of_block: dict[int, int] = {}
        self._block_of_hash: dict[int, int] = {}
        self._block_tables: dict[int, list[int]] = {}
        self._num_tokens: dict[int, int] = {}
        self._committed: dict[int, int] = {}  # full blocks of the sequence already hashed
        self._chain: dict[int, int] = {}  # hash of the sequence's last committed block
        self.hit_tokens = 0  # prompt tokens served from the cache so far (for metrics)
        self.queried_tokens = 0

    # ---- queries ----
    @property
    def num_free_blocks(self) -> int:
        """Blocks a new allocation may take: unreferenced ones, cached or not."""
        return len(self._free_blocks) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._block_of_hash)

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

    def ref_count(self, block: int) -> int:
        return self._ref_counts[block]

    def slots(self, seq_id: int, start: int, end: int) -> list[int]:
        """Cache slots of token positions [start, end) of a sequence (all must be allocated)."""
        assert 0 <= start <= end <= self._num_tokens[seq_id]
        table, size = self._block_tables[seq_id], self.block_size
        return [table[p // size] * size + p % size for p in range(start, end)]

    # ---- prefix cache ----
    def _hashes(self, token_ids: list[int], num_blocks: int, parent: int = 0):
        size = self.block_size
        for index in range(num_blocks):
            parent = hash((parent, tuple(token_ids[index * size : (index + 1) * size])))
            yield parent

    def match_prefix(self, token_ids: list[int]) -> int:
        """Leading full blocks of `token_ids` that are cached (at least one token is left to compute)."""
        if not self.enable_caching:
            return 0
        hits = 0
        for block_hash in self._hashes(token_ids, (len(token_ids) - 1) // self.block_size):
            if block_hash not in self._block_of_hash:
                break
            hits += 1
        return hits

    def commit(self, seq_id: int, token_ids: list[int], num_computed_tokens: int) -> None:
        """Address the sequence's full blocks whose K/V are computed by their tokens' hash.

        `token_ids` holds at least the first `num_computed_tokens` tokens of the sequence."""
        if not self.enable_caching or seq_id not in self._block_tables:
            return
        done = self._committed.get(seq_id, 0)
        full = min(num_computed_tokens, len(token_ids)) // self.block_size
        if full <= done:
            return
        table, size = self._block_tables[seq_id], self.block_size
        parent = self._chain.get(seq_id, 0)
        for index in range(done, min(full, len(table))):
            parent = hash((parent, tuple(token_ids[index * size : (index + 1) * size])))
            block = table[index]
            if parent not in self._block_of_hash and block not in self._hash_of_block:
                self._block_of_hash[parent] = block
                self._hash_of_block[block] = parent
        self._committed[seq_id] = min(full, len(table))
        self._chain[seq_id] = parent

    def _cached_prefix(self, token_ids: list[int] | None, num_cached_blocks: int) -> list[int]:
        if not num_cached_blocks:
            return []
        assert token_ids is not None, "cached blocks need the sequence's tokens"
        blocks = []
        for block_hash in self._hashes(token_ids, num_cached_blocks):
            block = self._block_of_hash.get(block_hash)
            if block is None:
                raise ValueError("the prefix is no longer cached (match_prefix, then allocate)")
            blocks.append(block)
        return blocks

    # ---- check-then-act ----
    def can_allocate(
        self, num_tokens: int, token_ids: list[int] | None = None, num_cached_blocks: int = 0
    ) -> bool:
        cached = self._cached_prefix(token_ids, num_cached_blocks) if num_cached_blocks else []
        revived = sum(1 for b in cached if self._ref_counts[b] == 0)
        fresh = self.num_blocks_for(num_tokens) - len(cached)
        return fresh <= self.num_free_blocks - revived

    def allocate(
        self, seq_id: int, num_tokens: int, token_ids: list[int] | None = None, num_cached_blocks: int = 0
    ) -> list[int]:
        """Give a new sequence blocks for `num_tokens` tokens, the first `num_cached_blocks` of them the
        cached blocks of `token_ids`' prefix; returns its block table."""
        if seq_id in self._block_tables:
            raise ValueError(f"sequence {seq_id} already holds KV blocks")
        cached = self._cached_prefix(token_ids, num_cached_blocks)
        revived = sum(1 for b in cached if self._ref_counts[b] == 0)
        fresh = self.num_blocks_for(num_tokens) - len(cached)
        if fresh > self.num_free_blocks - revived:
            raise KVCacheExhaustedError(fresh + revived, self.num_free_blocks)
        for block in cached:
            self._take_ref(block)
        table = cached + [self._new_block() for _ in range(max(0, fresh))]
        self._block_tables[seq_id] = table
        self._num_tokens[seq_id] = num_tokens
        self._committed[seq_id] = len(cached)
        if cached:
            self._chain[seq_id] = self._hash_of_block[cached[-1]]
        if token_ids is not None:
            self.queried_tokens += len(token_ids)
            self.hit_tokens += len(cached) * self.block_size
        return table

    def num_new_blocks_for_append(self, seq_id: int, num_new_tokens: int) -> int:
        total = self._num_tokens[seq_id] + num_new_tokens
        return self.num_blocks_for(total) - len(self._block_tables[seq_id])

    def can_append(self, seq_id: int, num_new_tokens: int = 1) -> bool:
        return self.num_new_blocks_for_append(seq_id, num_new_tokens) <= self.num_free_blocks

    def append(self, seq_id: int, num_new_tokens: int = 1) -> list[int]:
        """Make room for `num_new_tokens` more tokens; returns the blocks added (maybe none)."""
        needed = self.num_new_blocks_for_append(seq_id, num_new_tokens)
        if needed > self.num_free_blocks:
            raise KVCacheExhaustedError(needed, self.num_free_blocks)
        added = [self._new_block() for _ in range(needed)]
        self._block_tables[seq_id].extend(added)
        self._num_tokens[seq_id] += num_new_tokens
        return added

    def grow_to(self, seq_id: int, num_tokens: int) -> bool:
        """`append` of a known sequence up to `num_tokens` tokens in all, when the free blocks allow: True
        when done (or nothing to add), False for an unknown sequence or too few free blocks (nothing
        changes). The check and the act in one call: a decode step grows every sequence by a token."""
        held = self._num_tokens.get(seq_id)
        if held is None:
            return False
        if num_tokens <= held:
            return True
        table = self._block_tables[seq_id]
        needed = self.num_blocks_for(num_tokens) - len(table)
        if needed > 0:
            if needed > self.num_free_blocks:
                return False
            table.extend([self._new_block() for _ in range(needed)])
        self._num_tokens[seq_id] = num_tokens
        return True

    def free(self, seq_id: int) -> None:
        """Drop a sequence's references (no-op for an unknown sequence, so cancel is idempotent)."""
        table = self._block_tables.pop(seq_id, None)
        self._num_tokens.pop(seq_id, None)
        self._committed.pop(seq_id, None)
        self._chain.pop(seq_id, None)
        for block in reversed(table or ()):  # the prefix's blocks are evicted last
            self._ref_counts[block] -= 1
            assert self._ref_counts[block] >= 0, "a block was freed twice"
            if self._ref_counts[block] == 0:
                if block in self._hash_of_block:
                    self._evictable[block] = None
                else:
                    self._free_blocks.append(block)

    # ---- blocks ----
    def _take_ref(self, block: int) -> None:
        if self._ref_counts[block] == 0:
            self._evictable.pop(block, None)
        self._ref_counts[block] += 1

    def _new_block(self) -> int:
        if self._free_blocks:
            block = self._free_blocks.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)  # least recently released
            del self._block_of_hash[self._hash_of_block.pop(block)]
        self._ref_counts[block] = 1
        return block
