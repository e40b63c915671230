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

from helix.runtime.device_turn import DeviceTurn
from helix.runtime.emulation import StepTimer
from helix.runtime.messages import COORDINATOR_HOP, HopBatch, StageItem, TokenResult
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
        self._admission.pop(seq_id, None)
        self.backend.free(seq_id)

    @property
    def overlaps_steps(self) -> bool:
        """Whether the loop may launch the next step before this one's outputs are read back (a CUDA
        stage without emulated padding: the padding needs each step's own compute time)."""
        device = getattr(getattr(self.backend, "runner", None), "device", None)
        cuda = device is not None and torch.device(device).type == "cuda"
        return cuda and self.step_timer is None and self.slowdown == 1.0

    def step(self, batches: list[HopBatch]) -> StepOutput:
        """Run one step over every request in `batches`; see the module docstring."""
        return self.finish(self.launch(batches))

    def launch(self, batches: list[HopBatch]) -> LaunchedStep:
        """Admit `batches` and queue the step's device work without waiting for it (`finish` reads it
        back). Steps finish in launch order; the next may be launched before this one finishes."""
        started = time.perf_counter()
        if getattr(self.backend, "failure", None) is not None:  # the node is down (a tensor-parallel
            return LaunchedStep([], [], started)  # rank died): like a lost node it answers nothing
        items, inputs, errors = self._admit(batches)
        if not items:
            return LaunchedStep([], errors, started)
        if self.turn is not None:
            self.turn.acquire()  # released once the step's outputs are on the host (`finish`)
        try:
            return self._launch_device_work(items, inputs, errors, started)
        except Exception:
            if self.turn is not None:
                self.turn.release()
            if getattr(self.backend, "failure", None) is None:
                raise
            return LaunchedStep([], [], started)

    def _launch_device_work(self, items, inputs: _Inputs, errors, started: float) -> LaunchedStep:
        hidden = self._forward(items, inputs)
        for item in items:
            if item.prefix_ids is not None and item.route is not None and not self._skip.get(item.seq_id):
                self.backend.commit_prefix(item)  # stream order: later steps read the K/V after it
        if self.backend.is_last:
            return LaunchedStep(items, errors, started, tokens=self.backend.sample_launch(items, hidden))
        event = None
        if hidden.is_cuda:  # to pinned host memory behind an event: the wire sends host tensors
            host = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=True)
            host.copy_(hidden, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            hidden = host
        return LaunchedStep(items, errors, started, hidden=hidden, event=event)

    def finish(self, launched: LaunchedStep) -> StepOutput:
        """Wait for a launched step and return what it produced."""
        items = launched.items
        if not items:
            return StepOutput({}, launched.errors)
        try:
            if self.backend.is_last:
                assert launched.tokens is not None
                sampled = self.backend.sample_resolve(items, launched.tokens)
            elif launched.event is not None:
                launched.event.synchronize()
        finally:
            if self.turn is not None:
                self.turn.release()
        now = time.perf_counter()
        self._account(items, now - max(launched.started_s, self._busy_until_s))  # pads first: stage-done
        self._busy_until_s = time.perf_counter()  # stamps include the padding
        if self.backend.is_last:
            return StepOutput(self._feed_back(items, sampled), launched.errors + self._stamp(items, sampled))
        assert launched.hidden is not None
        return StepOutput(self._split_by_next_hop(items, launched.hidden), launched.errors)

    def _admit(self, batches: list[HopBatch]) -> tuple[list[StageItem], _Inputs, list[TokenResult]]:
        """Items ordered prompts first, their inputs packed in that order, and results for requests that
        cannot run (errors, preemptions)."""
        admitted: dict[int, tuple[StageItem, tuple[int, int]]] = {}  # seq → item, (batch, first input row)
        results: list[TokenResult] = []
        sources: list[torch.Tensor | list[int]] = []
        for batch in batches:
            if batch.sender in self._fenced:
                self.stats.fenced_batches += 1
                continue
            source = len(sources)
            sources.append(self._batch_inputs(batch))
            row = 0
            for item in batch.items:
                first, row = row, row + item.num_new_tokens
                if not self._accept(item, results):
                    continue
                if item.route is not None and item.prefix_ids is not None:
                    hits = self._prefix_hits(item)
                    if hits is None:  # the first stage matched blocks this stage does not hold
                        results.append(
                            TokenResult(
                                item.seq_id, admission=item.admission, preempted=True, prefix_miss=True
                            )
                        )
                        self._drop(item.seq_id)
                        continue
                    if hits:
                        item, first = self._start_past_prefix(item, hits, first)
                        if not self._make_room(item, admitted, results):
                            continue
                        problem = self.backend.allocate_prefix(item, hits)
                        if problem is not None:
                            results.append(
                                TokenResult(
                                    item.seq_id,
                                    error=f"worker {self.name}: {problem}",
                                    admission=item.admission,
                                )
                            )
                            self._drop(item.seq_id)
                            self.stats.errors += 1
                            continue
                        admitted[item.seq_id] = (item, (source, first))
                        continue
                if not self.backend.try_grow(item):  # the fast path: a known sequence grows
                    if not self._make_room(item, admitted, results):
                        continue
                    problem = self.backend.reserve(item)
                    if problem is not None:
                        results.append(
                            TokenResult(
                                item.seq_id, error=f"worker {self.name}: {problem}", admission=item.admission
                            )
                        )
                        self._drop(item.seq_id)
                        self.stats.errors += 1
                        continue
                admitted[item.seq_id] = (item, (source, first))
        prompts = [p for p in admitted.values() if not _is_decode(p[0])]
        ordered = prompts + [p for p in admitted.values() if _is_decode(p[0])]
        if not ordered:
            return [], _Inputs(sources, []), results
        return [p[0] for p in ordered], _Inputs(sources, [p[1] for p in ordered]), results

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
            if victim == item.seq_id or admitted.pop(victim, None) is not None:
                results.append(TokenResult(victim, admission=admission, preempted=True))
        return item.seq_id not in victims

    def _forward(self, items: list[StageItem], inputs: _Inputs) -> torch.Tensor:
        """One forward pass, or one per distinct layer skip (Helix's partial overlap), outputs in order.
        (A node holding layer 0 may get token ids from the coordinator and, for requests entering it
        past its start, hidden states in the same step.)"""
        skips = [self._skip.get(i.seq_id, 0) for i in items]
        if not any(skips):
            return self.backend.forward(items, inputs.pack(items, range(len(items)), self._pin))
        out_rows: list[torch.Tensor | None] = [None] * len(items)
        for skip in sorted(set(skips)):
            group = [k for k, s in enumerate(skips) if s == skip]
            out = self.backend.forward([items[k] for k in group], inputs.pack(items, group, self._pin), skip)
            sizes = [1 if self.backend.is_last else items[k].num_new_tokens for k in group]
            for k, rows in zip(group, torch.split(out, sizes), strict=True):
                out_rows[k] = rows
        return torch.cat(out_rows)  # type: ignore[arg-type]

    def _batch_inputs(self, batch: HopBatch) -> torch.Tensor | list[int]:
        """A batch's inputs: its token ids in order (first stage) or its hidden rows [T, H]."""
        if batch.hidden is None and self.backend.is_first:
            return [t for item in batch.items for t in (item.token_ids or ())]
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
        if self.backend.is_last:
            self.backend.register_sampling(
                item.seq_id, item.sampling, item.penalty_prompt_ids, item.penalty_output_ids
            )

    def _feed_back(self, items: list[StageItem], results: list[TokenResult]) -> dict[str, HopBatch]:
        """Last stage of a self-decoding route: the next iteration of each request with tokens left,
        grouped by its first hop (see `StageItem.decode_budget`)."""
        grouped: dict[str, list[StageItem]] = defaultdict(list)
        for item, result in zip(items, results, strict=True):
            entry = self._feedback.get(item.seq_id)
            if entry is None or result.error is not None or result.preempted:
                continue
            if self._admission.get(item.seq_id) != item.admission:
                continue  # freed or re-admitted while the step ran
            entry[1] -= 1
            context = item.num_cached_tokens + item.num_new_tokens
            if entry[1] <= 0:
                del self._feedback[item.seq_id]
                continue
            grouped[entry[0]].append(
                StageItem(item.seq_id, context, 1, (result.token_id,), admission=item.admission)
            )
        now = time.time()
        return {hop: HopBatch(batch, None, now, self.name) for hop, batch in grouped.items()}

    def _split_by_next_hop(self, items: list[StageItem], hidden: torch.Tensor) -> dict[str, HopBatch]:
        """One batch per next hop; items keep their order (hidden rows pass through whole when every item
        goes to one hop, the common case). Requests freed while the step ran are left out."""
        now = time.time()
        hops = [self._next_hop.get(item.seq_id) for item in items]
        forwarded = [
            item
            if item.token_ids is None and item.route is None
            else replace(item, token_ids=None, stage_done_s=(*item.stage_done_s, now) if item.route else ())
            for item in items
        ]
        if hops and all(hop == hops[0] for hop in hops) and hops[0] is not None:
            return {hops[0]: HopBatch(forwarded, hidden, now, self.name)}
        grouped_items: dict[str, list[StageItem]] = defaultdict(list)
        grouped_rows: dict[str, list[torch.Tensor]] = defaultdict(list)
        sizes = [i.num_new_tokens for i in items]
        for hop, item, rows in zip(hops, forwarded, torch.split(hidden, sizes), strict=True):
            if hop is not None:
                grouped_items[hop].append(item)
                grouped_rows[hop].append(rows)
        return {
            hop: HopBatch(grouped_items[hop], torch.cat(grouped_rows[hop]), now, self.name)
            for hop in grouped_items
        }

    @staticmethod
    def _stamp(items: list[StageItem], results: list[TokenResult]) -> list[TokenResult]:
        """Results carry their admission; prompt results also when each stage finished the prompt (for
        swarm-like schedulers)."""
        now = time.time()
        return [
            replace(
                r, admission=i.admission, stage_done_s=(*i.stage_done_s, now) if i.route is not None else ()
            )
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
        decodes = sum(1 for i in items if _is_decode(i))
        prompt_tokens = sum(i.num_new_tokens for i in items) - decodes
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
    errors: list[TokenResult]
    started_s: float
    hidden: torch.Tensor | None = None  # rows for the next hops (pinned host memory on CUDA)
    event: torch.cuda.Event | None = None  # completes when `hidden` is filled
    tokens: PendingTokens | None = None  # last stage


@dataclass(slots=True)
class _Inputs:
    """The inputs of one step's batches (`sources`: token ids or hidden rows per batch) and, per
    admitted item in step order, (batch index, first row)."""

    sources: list[torch.Tensor | list[int]]
    refs: list[tuple[int, int]]

    def pack(self, items: list[StageItem], which, pin: bool) -> torch.Tensor:
        """The inputs of items `which` (indices into the step's items), concatenated in that order."""
        refs = [self.refs[k] for k in which]
        sizes = [items[k].num_new_tokens for k in which]
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
