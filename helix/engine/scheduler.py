"""Continuous batching: which sequences run in the next step, with KV admission on every stage.

Each step keeps every running sequence going (one decode token each, or the next chunk of its
prompt) and admits waiting sequences while the token budget, the sequence limit and every stage's
free KV blocks allow. When a running sequence cannot grow, the most recently admitted one is
preempted: its blocks are freed and it waits at the front of the queue to be recomputed.
With prefix caching, a sequence admitted with nothing computed starts after the leading prompt blocks
that every stage has cached (`BlockManager.match_prefix`): they are shared, not recomputed.
"""

from __future__ import annotations

from collections import deque

from helix.engine.batch import SeqChunk, StepBatch
from helix.engine.block_manager import BlockManager
from helix.engine.config import EngineConfig
from helix.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    """Owns the waiting queue and the running list; reserves KV blocks on all stages' managers."""

    def __init__(self, engine_config: EngineConfig, block_managers: list[BlockManager]) -> None:
        self.config = engine_config
        self.block_managers = block_managers
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preempted = 0  # preemptions so far (for metrics)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Forget a finished or cancelled sequence and free its blocks everywhere."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        for manager in self.block_managers:
            manager.free(seq.seq_id)

    def schedule(self) -> tuple[list[Sequence], StepBatch]:
        """The sequences of the next step (prompt chunks first, then decodes) and its batch."""
        budget = self.config.max_num_batched_tokens
        decodes: list[Sequence] = []
        prompts: list[tuple[Sequence, int]] = []
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or seq.last_step_pending:
                continue  # preempted while making room for an earlier one, or about to finish
            num_new = min(seq.num_pending_tokens, budget)
            if num_new == 0 or not self._grow(seq, num_new):
                continue
            budget -= num_new
            if seq.num_computed_tokens > 0 and num_new == 1:
                decodes.append(seq)
            else:
                prompts.append((seq, num_new))
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            hits = self._prefix_hits(seq)
            num_new = min(seq.num_pending_tokens - hits * self._block_size, budget)
            total = hits * self._block_size + num_new
            if not self._fits(seq.seq_id, total, seq.prompt_token_ids, hits):
                break
            self.waiting.popleft()
            if hits:
                seq.num_computed_tokens = hits * self._block_size
                for manager in self.block_managers:
                    manager.allocate(seq.seq_id, total, seq.prompt_token_ids, hits)
            else:
                self._reserve(seq.seq_id, num_new)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            if seq.num_computed_tokens and num_new == 1:  # one token after a cached prefix
                decodes.append(seq)
            else:
                prompts.append((seq, num_new))
            budget -= num_new
        chunks = [SeqChunk(s.seq_id, s.num_computed_tokens, n) for s, n in prompts]
        chunks += [SeqChunk(s.seq_id, s.num_computed_tokens, 1) for s in decodes]
        return [s for s, _ in prompts] + decodes, StepBatch(tuple(chunks))

    @property
    def _block_size(self) -> int:
        return self.block_managers[0].block_size

    def _prefix_hits(self, seq: Sequence) -> int:
        """Leading prompt blocks cached on every stage (only for a sequence with nothing computed)."""
        if seq.num_computed_tokens or not self.config.enable_prefix_caching:
            return 0
        return min(m.match_prefix(seq.prompt_token_ids) for m in self.block_managers)

    def _fits(self, seq_id: int, num_tokens: int, token_ids=None, num_cached_blocks: int = 0) -> bool:
        for manager in self.block_managers:
            if manager.has(seq_id):
                extra = num_tokens - manager.num_tokens(seq_id)
                if extra > 0 and not manager.can_append(seq_id, extra):
                    return False
            elif not manager.can_allocate(num_tokens, token_ids, num_cached_blocks):
                return False
        return True

    def _reserve(self, seq_id: int, num_new: int) -> None:
        for manager in self.block_managers:
            if not manager.has(seq_id):
                manager.allocate(seq_id, num_new)
            else:
                manager.append(seq_id, num_new)

    def _grow(self, seq: Sequence, num_new: int) -> bool:
        """Reserve room for `num_new` more tokens of a running sequence, preempting others if needed."""
        while not self._fits(seq.seq_id, seq.num_computed_tokens + num_new):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self._reserve(seq.seq_id, num_new)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.num_preempted += 1
        self.running.remove(seq)
        for manager in self.block_managers:
            manager.free(seq.seq_id)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
