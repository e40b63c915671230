"""A worker: one planned node's layer range, stepping every request that reached it since the last step.

`Worker` is plain Python (no Ray, no sockets) so it is testable on its own: `step(batches)` takes the
`HopBatch`es received since the previous step, runs one continuous-batching step over all of them on the
stage (prompt chunks and decode tokens together), and returns the outgoing batches grouped by next hop
(one message per next hop per step) plus, on the last stage, the sampled tokens — and, for requests whose
route decodes on its own (`StageItem.decode_budget`), their next iterations for the route's first stage.

Each request's route is learnt from its prompt iteration; decode iterations follow it (the request's KV
lives on these workers). When a request needs KV blocks and none are free, the worker preempts instead of
failing (`helix.scheduling.preemption.choose_victims`, units = blocks): it frees the KV of requests
admitted after it (newest first) or, if that is not enough, its own; a preempted request's iteration is
dropped and reported (`TokenResult.preempted`) — at once when it is in this step, otherwise when its next
iteration reaches this worker — and the coordinator re-queues it to re-prefill. Only a request that cannot
fit even in an otherwise empty cache gets an error. Iterations of an older admission of a request than the
one this worker holds, and batches from fenced (declared dead) workers, are dropped.

Emulation (`helix.runtime.emulation`): with a `step_timer` every step is padded by sleeping to the time
the node's profile tables give for its batch (prompt tokens, decode sequences); otherwise, with
`slowdown > 1`, to `slowdown ×` its measured compute time, so a CPU worker behaves like a GPU type that
is `slowdown` times slower than the fastest one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from helix.engine.batch import SeqChunk, decode_chunks
from helix.engine.sampler import SamplerOutput
from helix.runtime.device_turn import DeviceTurn
from helix.runtime.emulation import StepTimer
from helix.runtime.messages import (
    COORDINATOR_HOP,
    DecodeRows,
    HopBatch,
    SampledTokens,
    StageItem,
    TokenResult,
)
from helix.runtime.stage_backend import PendingTokens, StageBackend
from helix.scheduling.preemption import Resident, choose_victims


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
    preemptions: int = 0  # requests whose KV this worker freed to make room for another
    fenced_batches: int = 0  # batches dropped because their sender was declared dead
    started_at_s: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class StepOutput:
    """What one step produced: batches per next-hop worker name, and tokens for the coordinator."""

    forward: dict[str, HopBatch]
    results: list[TokenResult]
    tokens: SampledTokens | None = None  # the decode rows' plain tokens, in columns

    def all_results(self) -> list[TokenResult]:
        """`results`, then the columns' tokens as `TokenResult`s."""
        return self.results + (self.tokens.as_results() if self.tokens is not None else [])


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
        device_turns: bool = True,
    ) -> None:
        """`device_turns`: on CUDA, step in turn with the other workers of this GPU (`DeviceTurn`)."""
        self.name = name
        self.backend = backend
        self.slowdown = max(1.0, float(slowdown))
        self.step_timer = step_timer
        self._sleep = sleep
        self._next_hop: dict[int, str] = {}
        self._admission: dict[int, int] = {}  # request → admission number of the KV it holds here
        self._fenced: set[str] = set()
        self._skip: dict[int, int] = {}  # requests that enter this range past its start (partial overlap)
        self._feedback: dict[int, list] = {}  # last stage: request → [first hop, tokens left to generate]
        # first stage of self-decoding routes of several workers: request → tokens the route has left to
        # generate; `awaiting` holds the requests whose next iteration is on its way back (see `arrived`)
        self._circulating: dict[int, int] = {}
        self.awaiting: set[int] = set()
        self.wave_round_s: float | None = None  # how long the requests in flight took to come back
        self._wave_sent_s = 0.0
        self.stats = WorkerStats(kv_total_blocks=backend.num_kv_blocks)
        self._busy_until_s = 0.0  # when the last finished step ended (overlapped steps count once)
        self._pin = self.overlaps_steps and torch.cuda.is_available()  # inputs staged in pinned memory
        device = getattr(getattr(backend, "runner", None), "device", None)
        use_turns = device_turns and device is not None
        self.turn = DeviceTurn.for_device(device) if use_turns else None  # shared-GPU turns

    def free(self, seq_ids: list[int], admissions: list[int] | None = None) -> None:
        """Release the KV and routing state of finished, cancelled, preempted or re-routed requests
        (idempotent). With `admissions`, state of a newer admission than the one given is kept."""
        for index, seq_id in enumerate(seq_ids):
            if admissions and self._admission.get(seq_id, -1) > admissions[index]:
                continue
            self._drop(seq_id)
        self._refresh_kv_stats()

    def fence(self, names: tuple[str, ...] | list[str]) -> None:
        """Drop every later batch sent by these (dead) workers."""
        self._fenced.update(names)

    def _drop(self, seq_id: int) -> None:
        self._next_hop.pop(seq_id, None)
        self._skip.pop(seq_id, None)
        self._feedback.pop(seq_id, None)
        self._circulating.pop(seq_id, None)
        self.awaiting.discard(seq_id)
        self._admission.pop(seq_id, None)
        self.backend.free(seq_id)

    @property
    def on_cuda(self) -> bool:
        device = getattr(getattr(self.backend, "runner", None), "device", None)
        return device is not None and torch.device(device).type == "cuda"

    @property
    def overlaps_steps(self) -> bool:
        """Whether the loop may launch the next step before this one's outputs are read back (a CUDA
        stage without emulated padding: the padding needs each step's own compute time)."""
        return self.on_cuda and self.step_timer is None and self.slowdown == 1.0

    def step(self, batches: list[HopBatch]) -> StepOutput:
        """Run one step over every request in `batches`; see the module docstring."""
        return self.finish(self.launch(batches))

    def launch(self, batches: list[HopBatch]) -> LaunchedStep:
        """Admit `batches` and queue the step's device work without waiting for it (`finish` reads it
        back). Steps finish in launch order; the next may be launched before this one finishes."""
        started = time.perf_counter()
        if getattr(self.backend, "failure", None) is not None:  # the node is down (a tensor-parallel
            return LaunchedStep([], _Rows(), [], started)  # rank died): like a lost node it answers nothing
        items, rows, inputs, errors = self._admit(batches)
        if not items and not rows.seq_ids:
            return LaunchedStep([], rows, errors, started)
        if self.turn is not None:
            self.turn.acquire()  # released once the step's outputs are on the host (`finish`)
        try:
            return self._launch_device_work(items, rows, inputs, errors, started)
        except Exception:
            if self.turn is not None:
                self.turn.release()
            if getattr(self.backend, "failure", None) is None:
                raise
            return LaunchedStep([], _Rows(), [], started)

    def _launch_device_work(
        self, items, rows: _Rows, inputs: _Inputs, errors, started: float
    ) -> LaunchedStep:
        hidden = self._forward(items, rows, inputs)
        for item in items:
            if item.prefix_ids is not None and item.route is not None and not self._skip.get(item.seq_id):
                self.backend.commit_prefix(item)  # stream order: later steps read the K/V after it
        if self.backend.is_last:
            seq_ids = [i.seq_id for i in items] + rows.seq_ids
            positions = [i.num_cached_tokens + i.num_new_tokens for i in items] + [
                c + 1 for c in rows.context
            ]
            tokens = self.backend.sample_launch(seq_ids, positions, hidden)
            return LaunchedStep(items, rows, errors, started, tokens=tokens)
        event = None
        if hidden.is_cuda:  # to pinned host memory behind an event: the wire sends host tensors
            host = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=True)
            host.copy_(hidden, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            hidden = host
        return LaunchedStep(items, rows, errors, started, hidden=hidden, event=event)

    def finish(self, launched: LaunchedStep) -> StepOutput:
        """Wait for a launched step and return what it produced."""
        items, rows = launched.items, launched.rows
        if not items and not rows.seq_ids:
            return StepOutput({}, launched.errors)
        try:
            if self.backend.is_last:
                assert launched.tokens is not None
                sampled = self.backend.sample_resolve(
                    [i.seq_id for i in items] + rows.seq_ids, launched.tokens
                )
            elif launched.event is not None:
                launched.event.synchronize()
        finally:
            if self.turn is not None:
                self.turn.release()
        now = time.perf_counter()
        self._account(items, rows, now - max(launched.started_s, self._busy_until_s))  # pads first
        self._busy_until_s = time.perf_counter()  # stamps include the padding
        if self.backend.is_last:
            results, tokens = self._results(items, rows, sampled)
            return StepOutput(self._feed_back(items, rows, sampled.tokens), launched.errors + results, tokens)
        assert launched.hidden is not None
        return StepOutput(self._split_by_next_hop(items, rows, launched.hidden), launched.errors)

    def _admit(self, batches: list[HopBatch]) -> tuple[list[StageItem], _Rows, _Inputs, list[TokenResult]]:
        """Items ordered prompts first, the decode rows after them, their inputs packed in that order,
        and results for requests that cannot run (errors, preemptions)."""
        admitted: dict[int, tuple[StageItem, tuple[int, int]]] = {}  # seq → item, (batch, first input row)
        rows: dict[int, tuple[int, int, int, int]] = {}  # decode rows: seq → context, admission, batch, row
        results: list[TokenResult] = []
        sources: list[torch.Tensor | list[int]] = []
        for batch in batches:
            if batch.sender in self._fenced:
                self.stats.fenced_batches += 1
                continue
            source = len(sources)
            sources.append(self._batch_inputs(batch))
            row = self._admit_items(batch.items, source, admitted, rows, results)
            if batch.decodes is not None and len(batch.decodes):
                self._admit_rows(batch.decodes, source, row, admitted, rows, results)
        prompts = [p for p in admitted.values() if not _is_decode(p[0])]
        ordered = prompts + [p for p in admitted.values() if _is_decode(p[0])]
        step_rows = _Rows.of(rows)
        refs = [p[1] for p in ordered] + step_rows.refs
        return [p[0] for p in ordered], step_rows, _Inputs(sources, refs), results

    def _admit_items(self, items: list[StageItem], source: int, admitted, rows, results) -> int:
        """Admit a batch's `StageItem`s; returns the input row after theirs."""
        row = 0
        for item in items:
            first, row = row, row + item.num_new_tokens
            if not self._accept(item, results):
                continue
            if item.route is not None and item.prefix_ids is not None:
                hits = self._prefix_hits(item)
                if hits is None:  # the first stage matched blocks this stage does not hold
                    results.append(
                        TokenResult(item.seq_id, admission=item.admission, preempted=True, prefix_miss=True)
                    )
                    self._drop(item.seq_id)
                    continue
                if hits:
                    item, first = self._start_past_prefix(item, hits, first)
                    if not self._make_room(item, admitted, rows, results):
                        continue
                    problem = self.backend.allocate_prefix(item, hits)
                    if problem is not None:
                        self._error(item.seq_id, item.admission, problem, results)
                        continue
                    admitted[item.seq_id] = (item, (source, first))
                    continue
            if not self.backend.try_grow(item):  # the fast path: a known sequence grows
                if not self._make_room(item, admitted, rows, results):
                    continue
                problem = self.backend.reserve(item)
                if problem is not None:
                    self._error(item.seq_id, item.admission, problem, results)
                    continue
            admitted[item.seq_id] = (item, (source, first))
        return row

    def _admit_rows(self, decodes: DecodeRows, source: int, row: int, admitted, rows, results) -> None:
        """Admit a batch's decode rows from `row` on: a known request of this admission grows its KV by
        one token; one short of blocks goes the way of a `StageItem` (preempting for room)."""
        known_admissions, grow = self._admission, self.backend.try_grow_to
        seq_ids, context_lens, admission_nums = decodes.lists()[:3]
        columns = zip(seq_ids, context_lens, admission_nums, strict=True)
        for index, (seq_id, context, admission) in enumerate(columns, start=row):
            known = known_admissions.get(seq_id)
            if known is None:  # its KV was preempted (or freed) here: this iteration ends
                results.append(TokenResult(seq_id, admission=admission, preempted=True))
                continue
            if known > admission:
                continue  # a late iteration of an older admission
            if not grow(seq_id, context + 1):
                item = StageItem(seq_id, context, 1, admission=admission)
                if not self._make_room(item, admitted, rows, results):
                    continue
                problem = self.backend.reserve(item)
                if problem is not None:
                    self._error(seq_id, admission, problem, results)
                    continue
            rows[seq_id] = (context, admission, source, index)

    def _error(self, seq_id: int, admission: int, problem: str, results: list[TokenResult]) -> None:
        results.append(TokenResult(seq_id, error=f"worker {self.name}: {problem}", admission=admission))
        self._drop(seq_id)
        self.stats.errors += 1

    def _prefix_hits(self, item: StageItem) -> int | None:
        """Cached leading blocks of a prompt iteration to start past: the first stage (given the token
        ids) takes what it holds; a later stage must hold what the first stage took (None: a miss). A
        request entering this range past its start computes everything (no prefix)."""
        assert item.prefix_ids is not None
        if self._skip.get(item.seq_id):
            return 0 if item.num_cached_tokens == 0 else None
        if item.token_ids is not None and item.num_cached_tokens == 0:
            return self.backend.prefix_hits(item.prefix_ids)
        needed = item.num_cached_tokens // self.backend.kv_block_size
        if needed == 0:
            return 0
        return needed if self.backend.prefix_hits(item.prefix_ids) >= needed else None

    def _start_past_prefix(self, item: StageItem, hits: int, first: int) -> tuple[StageItem, int]:
        """On the first stage: the item starts after `hits` cached blocks (its first input row moves on)."""
        if item.num_cached_tokens:
            return item, first  # a later stage: the first stage already started it there
        cached = hits * self.backend.kv_block_size
        assert item.prefix_ids is not None
        moved = replace(item, num_cached_tokens=cached, num_new_tokens=len(item.prefix_ids) - cached)
        return moved, first + cached

    def _accept(self, item: StageItem, results: list[TokenResult]) -> bool:
        """Whether `item` belongs to the admission this worker serves (learning the route of a prompt)."""
        known = self._admission.get(item.seq_id)
        if known is not None and known > item.admission:
            return False  # a late iteration of an older admission
        if item.route is not None:
            if known is not None:
                self._drop(item.seq_id)  # leftovers of an older admission
            self._learn_route(item)
            self._admission[item.seq_id] = item.admission
            return True
        if known is None:  # its KV was preempted (or freed) here: this iteration ends
            results.append(TokenResult(item.seq_id, admission=item.admission, preempted=True))
            return False
        return True

    def _make_room(
        self,
        item: StageItem,
        admitted: dict[int, tuple[StageItem, tuple[int, int]]],
        rows: dict[int, tuple[int, int, int, int]],
        results: list[TokenResult],
    ) -> bool:
        """Preempt (see the module docstring) until `item` fits; False when `item` itself is preempted."""
        shortfall = self.backend.kv_shortfall(item)
        if shortfall == 0:
            return True
        residents = [Resident(s, a, self.backend.num_blocks_held(s)) for s, a in self._admission.items()]
        victims = choose_victims(residents, item.seq_id, item.admission, shortfall)
        if victims == [item.seq_id] and not any(r.units for r in residents if r.request_id != item.seq_id):
            return True  # alone and still too big: the reservation reports the error
        for victim in victims:
            admission = self._admission[victim]
            self._drop(victim)
            self.stats.preemptions += 1
            taken = admitted.pop(victim, None) is not None or rows.pop(victim, None) is not None
            if victim == item.seq_id or taken:
                results.append(TokenResult(victim, admission=admission, preempted=True))
        return item.seq_id not in victims

    def _forward(self, items: list[StageItem], rows: _Rows, inputs: _Inputs) -> torch.Tensor:
        """One forward pass, or one per distinct layer skip (Helix's partial overlap), outputs in order
        (items, then decode rows). (A node holding layer 0 may get token ids from the coordinator and,
        for requests entering it past its start, hidden states in the same step.)"""
        sizes = [i.num_new_tokens for i in items] + [1] * len(rows.seq_ids)
        skip_of = self._skip
        skips = [skip_of.get(i.seq_id, 0) for i in items]
        skips += [skip_of.get(s, 0) for s in rows.seq_ids] if skip_of else [0] * len(rows.seq_ids)
        if not any(skips):
            packed = inputs.pack(sizes, range(len(sizes)), self._pin)
            if not items:
                return self.backend.forward_decode(rows.seq_ids, rows.context, packed)
            return self.backend.forward(self._chunks(items, rows), packed)
        chunks = self._chunks(items, rows)
        out_rows: list[torch.Tensor | None] = [None] * len(sizes)
        for skip in sorted(set(skips)):
            group = [k for k, s in enumerate(skips) if s == skip]
            packed = inputs.pack(sizes, group, self._pin)
            out = self.backend.forward(tuple(chunks[k] for k in group), packed, skip)
            out_sizes = [1 if self.backend.is_last else sizes[k] for k in group]
            for k, rows_out in zip(group, torch.split(out, out_sizes), strict=True):
                out_rows[k] = rows_out
        return torch.cat(out_rows)  # type: ignore[arg-type]

    def _send_off(self, seq_ids: list[int]) -> None:
        """First stage of self-decoding routes: these requests' iterations leave for the next stage; the
        ones with tokens left come back from the route's last stage as its next iteration."""
        circulating, awaiting = self._circulating, self.awaiting
        if not awaiting:
            self._wave_sent_s = time.monotonic()
        for seq_id in seq_ids:
            left = circulating.get(seq_id)
            if left is None:
                continue
            if left > 1:
                circulating[seq_id] = left - 1
                awaiting.add(seq_id)
            else:
                del circulating[seq_id]

    def arrived(self, batch: HopBatch) -> None:
        """Note a received batch: the requests of `awaiting` it brings back are home. When none is left in
        flight, how long the round took updates `wave_round_s`."""
        if not self.awaiting or batch.decodes is None:
            return
        self.awaiting.difference_update(batch.decodes.seq_ids.tolist())
        if not self.awaiting:
            took = time.monotonic() - self._wave_sent_s
            self.wave_round_s = took if self.wave_round_s is None else 0.8 * self.wave_round_s + 0.2 * took

    @staticmethod
    def _chunks(items: list[StageItem], rows: _Rows) -> tuple[SeqChunk, ...]:
        chunks = [SeqChunk(i.seq_id, i.num_cached_tokens, i.num_new_tokens) for i in items]
        return (*chunks, *decode_chunks(rows.seq_ids, rows.context))

    def _batch_inputs(self, batch: HopBatch) -> torch.Tensor | list[int]:
        """A batch's inputs: its token ids in order (first stage) or its hidden rows [T, H]."""
        if batch.hidden is None and self.backend.is_first:
            ids = [t for item in batch.items for t in (item.token_ids or ())]
            if batch.decodes is not None and len(batch.decodes):
                assert batch.decodes.token_ids is not None, (
                    f"worker {self.name} got decode rows without tokens"
                )
                ids += batch.decodes.token_ids.tolist()
            return ids
        assert batch.hidden is not None, f"worker {self.name} got a batch without hidden states"
        return batch.hidden

    def _learn_route(self, item: StageItem) -> None:
        route = item.route or ()
        index = route.index(self.name)
        self._next_hop[item.seq_id] = route[index + 1] if index + 1 < len(route) else COORDINATOR_HOP
        if item.route_starts is not None and item.route_starts[index] > self.backend.layer_start:
            self._skip[item.seq_id] = item.route_starts[index] - self.backend.layer_start
        if self.backend.is_last and item.decode_budget > 0:
            self._feedback[item.seq_id] = [route[0], item.decode_budget]
        if index == 0 and len(route) > 1 and item.decode_budget > 0:
            self._circulating[item.seq_id] = item.decode_budget
        if self.backend.is_last:
            self.backend.register_sampling(
                item.seq_id, item.sampling, item.penalty_prompt_ids, item.penalty_output_ids
            )

    def _results(
        self, items: list[StageItem], rows: _Rows, sampled: SamplerOutput
    ) -> tuple[list[TokenResult], SampledTokens | None]:
        """The step's tokens for the coordinator: a `TokenResult` per item (prompt results also say when
        each stage finished the prompt, for swarm-like schedulers) and per decode row with
        log-probabilities; the other decode rows' tokens in columns."""
        now = time.time()
        results = [
            TokenResult(
                item.seq_id,
                token,
                logprob,
                top,
                admission=item.admission,
                stage_done_s=(*item.stage_done_s, now) if item.route is not None else (),
            )
            for item, token, logprob, top in zip(
                items, sampled.tokens, sampled.logprobs, sampled.top_logprobs, strict=False
            )
        ]
        if not rows.seq_ids:
            return results, None
        first = len(items)
        tokens = sampled.tokens[first:]
        if all(lp is None for lp in sampled.logprobs[first:]) and all(
            t is None for t in sampled.top_logprobs[first:]
        ):
            return results, SampledTokens.of(rows.seq_ids, tokens, rows.admissions)
        extra = zip(
            rows.seq_ids,
            tokens,
            sampled.logprobs[first:],
            sampled.top_logprobs[first:],
            rows.admissions,
            strict=True,
        )
        results += [TokenResult(s, t, lp, top, admission=a) for s, t, lp, top, a in extra]
        return results, None

    def _feed_back(self, items: list[StageItem], rows: _Rows, tokens: list[int]) -> dict[str, HopBatch]:
        """Last stage of a self-decoding route: the next iteration of each request with tokens left,
        grouped by its first hop, as decode rows (see `StageItem.decode_budget`)."""
        feedback = self._feedback
        if not feedback:
            return {}
        admissions = self._admission
        grouped: dict[str, tuple[list[int], list[int], list[int], list[int]]] = {}
        entries = [(i.seq_id, i.num_cached_tokens + i.num_new_tokens, i.admission) for i in items]
        entries += zip(rows.seq_ids, [c + 1 for c in rows.context], rows.admissions, strict=True)
        for (seq_id, context, admission), token in zip(entries, tokens, strict=True):
            entry = feedback.get(seq_id)
            if entry is None or admissions.get(seq_id) != admission:
                continue  # not self-decoding, or freed or re-admitted while the step ran
            entry[1] -= 1
            if entry[1] <= 0:
                del feedback[seq_id]
                continue
            group = grouped.get(entry[0])
            if group is None:
                group = grouped[entry[0]] = ([], [], [], [])
            group[0].append(seq_id)
            group[1].append(context)
            group[2].append(admission)
            group[3].append(token)
        now = time.time()
        return {
            hop: HopBatch([], None, now, self.name, DecodeRows.from_lists(*columns))
            for hop, columns in grouped.items()
        }

    def _split_by_next_hop(
        self, items: list[StageItem], rows: _Rows, hidden: torch.Tensor
    ) -> dict[str, HopBatch]:
        """One batch per next hop; items and rows keep their order (hidden rows pass through whole when
        everything goes to one hop, the common case). Requests freed while the step ran are left out."""
        now = time.time()
        next_hop = self._next_hop
        hops = [next_hop.get(item.seq_id) for item in items] + [next_hop.get(s) for s in rows.seq_ids]
        forwarded = [
            item
            if item.token_ids is None and item.route is None
            else replace(item, token_ids=None, stage_done_s=(*item.stage_done_s, now) if item.route else ())
            for item in items
        ]
        if self._circulating:
            self._send_off([i.seq_id for i in items] + rows.seq_ids)
        if hops and hops[0] is not None and all(hop == hops[0] for hop in hops):
            decodes = rows.decode_rows() if rows.seq_ids else None
            return {hops[0]: HopBatch(forwarded, hidden, now, self.name, decodes)}
        sizes = [i.num_new_tokens for i in items] + [1] * len(rows.seq_ids)
        starts = np.cumsum([0, *sizes]).tolist()
        grouped: dict[str, list[int]] = defaultdict(list)  # hop → entries of this step, in order
        for index, hop in enumerate(hops):
            if hop is not None:
                grouped[hop].append(index)
        out = {}
        for hop, entries in grouped.items():
            index = torch.cat([torch.arange(starts[k], starts[k + 1]) for k in entries])
            picked = [k for k in entries if k < len(items)]
            row_picks = [k - len(items) for k in entries if k >= len(items)]
            decodes = rows.decode_rows(row_picks) if row_picks else None
            out[hop] = HopBatch(
                [forwarded[k] for k in picked], hidden.index_select(0, index), now, self.name, decodes
            )
        return out

    def _account(self, items: list[StageItem], rows: _Rows, compute_s: float) -> None:
        pad_s = self._pad_s(items, rows, compute_s)
        if pad_s > 0:
            self._sleep(pad_s)
            self.stats.padded_s += pad_s
        self.stats.steps += 1
        self.stats.tokens += sum(i.num_new_tokens for i in items) + len(rows.seq_ids)
        self.stats.compute_s += compute_s
        self.stats.busy_s += compute_s + pad_s
        self._refresh_kv_stats()

    def _pad_s(self, items: list[StageItem], rows: _Rows, compute_s: float) -> float:
        """How long to sleep after a step that computed for `compute_s` (see the module docstring)."""
        if self.step_timer is None:
            return compute_s * (self.slowdown - 1.0)
        item_decodes = sum(1 for i in items if _is_decode(i))
        prompt_tokens = sum(i.num_new_tokens for i in items) - item_decodes
        decodes = item_decodes + len(rows.seq_ids)
        target_s = self.step_timer.step_s(prompt_tokens, decodes)
        if compute_s > target_s:
            self.stats.overrun_steps += 1
            self.stats.overrun_s += compute_s - target_s
        return max(0.0, target_s - compute_s)

    def _refresh_kv_stats(self) -> None:
        self.stats.kv_used_blocks = self.backend.num_used_kv_blocks
        self.stats.active_seqs = len(self._next_hop)


@dataclass(slots=True)
class LaunchedStep:
    """A step whose device work is queued (`Worker.launch`); `Worker.finish` reads it back."""

    items: list[StageItem]
    rows: _Rows
    errors: list[TokenResult]
    started_s: float
    hidden: torch.Tensor | None = None  # rows for the next hops (pinned host memory on CUDA)
    event: torch.cuda.Event | None = None  # completes when `hidden` is filled
    tokens: PendingTokens | None = None  # last stage


@dataclass(slots=True)
class _Rows:
    """A step's decode rows in columns (plain lists: the per-request work is list appends), and per
    row its input (batch index, row)."""

    seq_ids: list[int] = field(default_factory=list)
    context: list[int] = field(default_factory=list)
    admissions: list[int] = field(default_factory=list)
    refs: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, rows: dict[int, tuple[int, int, int, int]]) -> _Rows:
        if not rows:
            return cls()
        context, admissions, sources, index = (list(column) for column in zip(*rows.values(), strict=True))
        return cls(list(rows), context, admissions, list(zip(sources, index, strict=True)))

    def decode_rows(self, picks: list[int] | None = None) -> DecodeRows:
        """The rows (or rows `picks`) for the next hop: no token ids."""
        if picks is None:
            return DecodeRows.from_lists(self.seq_ids, self.context, self.admissions)
        return DecodeRows.from_lists(
            [self.seq_ids[k] for k in picks],
            [self.context[k] for k in picks],
            [self.admissions[k] for k in picks],
        )


@dataclass(slots=True)
class _Inputs:
    """The inputs of one step's batches (`sources`: token ids or hidden rows per batch) and, per
    admitted item in step order, (batch index, first row)."""

    sources: list[torch.Tensor | list[int]]
    refs: list[tuple[int, int]]

    def pack(self, all_sizes: list[int], which, pin: bool) -> torch.Tensor:
        """The inputs of entries `which` (indices into the step's items then rows, whose new tokens are
        `all_sizes`), concatenated in that order."""
        refs = [self.refs[k] for k in which]
        sizes = [all_sizes[k] for k in which]
        if isinstance(self.sources[refs[0][0]], list):  # token ids from the coordinator
            ids: list[int] = []
            for (source, first), size in zip(refs, sizes, strict=True):
                ids.extend(self.sources[source][first : first + size])  # type: ignore[index]
            packed = torch.tensor(ids, dtype=torch.long)
        else:
            packed = self._rows(refs, sizes)
        return packed.pin_memory() if pin else packed

    def _rows(self, refs: list[tuple[int, int]], sizes: list[int]) -> torch.Tensor:
        sources = self.sources
        one = refs[0][0]
        whole = sources[one]
        assert isinstance(whole, torch.Tensor)
        expected, in_order = 0, True
        for (source, first), size in zip(refs, sizes, strict=True):
            if source != one or first != expected:
                in_order = False
                break
            expected += size
        if in_order and expected == whole.shape[0]:
            return whole  # the common case: one batch, every item, in order
        offsets = np.cumsum([0] + [s.shape[0] if isinstance(s, torch.Tensor) else 0 for s in sources])
        index = np.concatenate(
            [
                np.arange(first, first + size) + offsets[source]
                for (source, first), size in zip(refs, sizes, strict=True)
            ]
        )
        hidden = [s for s in sources if isinstance(s, torch.Tensor)]
        return torch.cat(hidden).index_select(0, torch.from_numpy(index))


def _is_decode(item: StageItem) -> bool:
    return item.num_cached_tokens > 0 and item.num_new_tokens == 1
