"""A worker: one planned node's layer range, stepping every request that reached it since the last step.

`Worker` is plain Python (no Ray, no sockets) so it is testable on its own: `step(batches)` takes the
`HopBatch`es received since the previous step, runs one continuous-batching step over all of them on the
stage (prompt chunks and decode tokens together), and returns the outgoing batches grouped by next hop
(one message per next hop per step) plus, on the last stage, the sampled tokens.

Each request's route is learnt from its prompt iteration; decode iterations follow it (the request's KV
lives on these workers). A request whose KV cannot be allocated gets an error result instead of stalling.

Emulation (`helix.runtime.emulation`): with a `step_timer` every step is padded by sleeping to the time
the node's profile tables give for its batch (prompt tokens, decode sequences); otherwise, with
`slowdown > 1`, to `slowdown ×` its measured compute time, so a CPU worker behaves like a GPU type that
is `slowdown` times slower than the fastest one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch

from helix.runtime.emulation import StepTimer
from helix.runtime.messages import COORDINATOR_HOP, HopBatch, StageItem, TokenResult
from helix.runtime.stage_backend import StageBackend


@dataclass(slots=True)
class WorkerStats:
    """Counters a worker reports (for /metrics and the benchmark)."""

    steps: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    padded_s: float = 0.0
    compute_s: float = 0.0  # measured time of the steps themselves (before padding)
    overrun_steps: int = 0  # profile emulation: steps whose compute exceeded their target
    overrun_s: float = 0.0
    kv_used_blocks: int = 0
    kv_total_blocks: int = 0
    active_seqs: int = 0
    errors: int = 0
    started_at_s: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class StepOutput:
    """What one step produced: batches per next-hop worker name, and tokens for the coordinator."""

    forward: dict[str, HopBatch]
    results: list[TokenResult]


class Worker:
    """One pipeline stage of the serving runtime (see the module docstring)."""

    def __init__(
        self,
        name: str,
        backend: StageBackend,
        *,
        slowdown: float = 1.0,
        step_timer: StepTimer | None = None,
        sleep=time.sleep,
    ) -> None:
        self.name = name
        self.backend = backend
        self.slowdown = max(1.0, float(slowdown))
        self.step_timer = step_timer
        self._sleep = sleep
        self._next_hop: dict[int, str] = {}
        self._skip: dict[int, int] = {}  # requests that enter this range past its start (partial overlap)
        self.stats = WorkerStats(kv_total_blocks=backend.num_kv_blocks)

    def free(self, seq_ids: list[int]) -> None:
        """Release the KV and routing state of finished or cancelled requests (idempotent)."""
        for seq_id in seq_ids:
            self._next_hop.pop(seq_id, None)
            self._skip.pop(seq_id, None)
            self.backend.free(seq_id)
        self._refresh_kv_stats()

    def step(self, batches: list[HopBatch]) -> StepOutput:
        """Run one step over every request in `batches`; see the module docstring."""
        started = time.perf_counter()
        items, inputs, errors = self._admit(batches)
        if not items:
            return StepOutput({}, errors)
        hidden = self._forward(items, inputs)
        sampled = self.backend.sample(items, hidden) if self.backend.is_last else []
        self._account(items, time.perf_counter() - started)  # pads first: stage-done stamps include it
        if self.backend.is_last:
            return StepOutput({}, errors + self._stamp(items, sampled))
        return StepOutput(self._split_by_next_hop(items, hidden), errors)

    def _admit(
        self, batches: list[HopBatch]
    ) -> tuple[list[StageItem], list[torch.Tensor], list[TokenResult]]:
        """Items ordered prompts first, their inputs, and errors for requests that cannot run."""
        prompts: list[tuple[StageItem, torch.Tensor]] = []
        decodes: list[tuple[StageItem, torch.Tensor]] = []
        errors: list[TokenResult] = []
        for batch in batches:
            rows = self._rows(batch)
            for item, row in zip(batch.items, rows, strict=True):
                if item.route is not None:
                    self._learn_route(item)
                elif item.seq_id not in self._next_hop:
                    continue  # freed while this iteration was in flight
                problem = self.backend.reserve(item)
                if problem is not None:
                    errors.append(TokenResult(item.seq_id, error=f"worker {self.name}: {problem}"))
                    self.free([item.seq_id])
                    self.stats.errors += 1
                    continue
                (decodes if item.num_cached_tokens > 0 and item.num_new_tokens == 1 else prompts).append(
                    (item, row)
                )
        ordered = prompts + decodes
        if not ordered:
            return [], [], errors
        return [i for i, _ in ordered], [r for _, r in ordered], errors

    def _forward(self, items: list[StageItem], in_rows: list[torch.Tensor]) -> torch.Tensor:
        """One forward pass, or one per distinct layer skip (Helix's partial overlap), outputs in order.
        (A node holding layer 0 may get token ids from the coordinator and, for requests entering it
        past its start, hidden states in the same step.)"""
        skips = [self._skip.get(i.seq_id, 0) for i in items]
        if not any(skips):
            return self.backend.forward(items, torch.cat(in_rows))
        out_rows: list[torch.Tensor | None] = [None] * len(items)
        for skip in sorted(set(skips)):
            group = [k for k, s in enumerate(skips) if s == skip]
            out = self.backend.forward(
                [items[k] for k in group], torch.cat([in_rows[k] for k in group]), skip
            )
            sizes = [1 if self.backend.is_last else items[k].num_new_tokens for k in group]
            for k, rows in zip(group, torch.split(out, sizes), strict=True):
                out_rows[k] = rows
        return torch.cat(out_rows)  # type: ignore[arg-type]

    def _rows(self, batch: HopBatch) -> list[torch.Tensor]:
        """Per item, its slice of the batch's inputs (token ids on the first stage, else hidden rows)."""
        if batch.hidden is None and self.backend.is_first:
            return [torch.tensor(item.token_ids, dtype=torch.long) for item in batch.items]
        assert batch.hidden is not None, f"worker {self.name} got a batch without hidden states"
        sizes = [item.num_new_tokens for item in batch.items]
        return list(torch.split(batch.hidden, sizes))

    def _learn_route(self, item: StageItem) -> None:
        route = item.route or ()
        index = route.index(self.name)
        self._next_hop[item.seq_id] = route[index + 1] if index + 1 < len(route) else COORDINATOR_HOP
        if item.route_starts is not None and item.route_starts[index] > self.backend.layer_start:
            self._skip[item.seq_id] = item.route_starts[index] - self.backend.layer_start
        if self.backend.is_last:
            self.backend.register_sampling(item.seq_id, item.sampling, item.penalty_prompt_ids)

    def _split_by_next_hop(self, items: list[StageItem], hidden: torch.Tensor) -> dict[str, HopBatch]:
        grouped_items: dict[str, list[StageItem]] = defaultdict(list)
        grouped_rows: dict[str, list[torch.Tensor]] = defaultdict(list)
        now = time.time()
        for item, rows in zip(items, torch.split(hidden, [i.num_new_tokens for i in items]), strict=True):
            hop = self._next_hop[item.seq_id]
            done = (*item.stage_done_s, now) if item.route is not None else ()
            forwarded = StageItem(
                item.seq_id,
                item.num_cached_tokens,
                item.num_new_tokens,
                None,
                item.route,
                item.sampling,
                done,
                item.penalty_prompt_ids,
                item.route_starts,
            )
            grouped_items[hop].append(forwarded)
            grouped_rows[hop].append(rows)
        return {hop: HopBatch(grouped_items[hop], torch.cat(grouped_rows[hop]), now) for hop in grouped_items}

    @staticmethod
    def _stamp(items: list[StageItem], results: list[TokenResult]) -> list[TokenResult]:
        """Prompt results carry when each stage finished the prompt (for swarm-like schedulers)."""
        now = time.time()
        return [
            replace(r, stage_done_s=(*i.stage_done_s, now)) if i.route is not None else r
            for i, r in zip(items, results, strict=True)
        ]

    def _account(self, items: list[StageItem], compute_s: float) -> None:
        pad_s = self._pad_s(items, compute_s)
        if pad_s > 0:
            self._sleep(pad_s)
            self.stats.padded_s += pad_s
        self.stats.steps += 1
        self.stats.tokens += sum(i.num_new_tokens for i in items)
        self.stats.compute_s += compute_s
        self.stats.busy_s += compute_s + pad_s
        self._refresh_kv_stats()

    def _pad_s(self, items: list[StageItem], compute_s: float) -> float:
        """How long to sleep after a step that computed for `compute_s` (see the module docstring)."""
        if self.step_timer is None:
            return compute_s * (self.slowdown - 1.0)
        decodes = sum(1 for i in items if i.num_cached_tokens > 0 and i.num_new_tokens == 1)
        prompt_tokens = sum(i.num_new_tokens for i in items) - decodes
        target_s = self.step_timer.step_s(prompt_tokens, decodes)
        if compute_s > target_s:
            self.stats.overrun_steps += 1
            self.stats.overrun_s += compute_s - target_s
        return max(0.0, target_s - compute_s)

    def _refresh_kv_stats(self) -> None:
        self.stats.kv_used_blocks = self.backend.num_used_kv_blocks
        self.stats.active_seqs = len(self._next_hop)
