"""A single-process engine: a chain of stages run back to back, a scheduler and a sampler.

This is the whole pipeline in one process (one or several stages, on one device or several); the
distributed runtime drives `ModelRunner`s the same way with its own transport between stages.

Asynchronous scheduling (`EngineConfig.async_scheduling`, on by default): `step()` schedules and
launches step t + 1 before it reads back the tokens of step t, so the host's scheduling, input
preparation and output processing overlap the GPU's work instead of following it. A token not yet read
back stands in the sequence as `PENDING_TOKEN`; the next step takes its input straight from the device
tensor of sampled tokens. Outputs come one `step()` later than they are computed; a sequence that
stops on a stop token has had one more (discarded) step launched. Greedy results are identical to
synchronous scheduling, and so are seeded samples (each request keeps its own generator).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from helix.engine.config import EngineConfig, LayerRange
from helix.engine.errors import KVCacheExhaustedError
from helix.engine.loader import ResolvedModel
from helix.engine.model_runner import ModelRunner
from helix.engine.sampler import Sampler
from helix.engine.sampling_params import SamplingParams
from helix.engine.scheduler import Scheduler
from helix.engine.sequence import PENDING_TOKEN, FinishReason, RequestOutput, Sequence
from helix.errors import HelixInputError


def even_split(num_layers: int, num_stages: int) -> list[LayerRange]:
    """`num_stages` contiguous layer ranges covering the model, sizes differing by at most one."""
    bounds = [round(i * num_layers / num_stages) for i in range(num_stages + 1)]
    return [LayerRange(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


@dataclass(slots=True)
class _InFlight:
    """A launched step whose sampled tokens are still on their way to the host."""

    seqs: list[Sequence]
    out_index: list[int]  # index of each sequence's pending token in its output list
    tokens: torch.Tensor  # [N] int64 on the device
    host: torch.Tensor  # [N] int64 on the host (filled when `event` completes)
    event: torch.cuda.Event | None
    logprobs: list[dict[int, float] | None]


class LLMEngine:
    """Runs requests through `runners` (stages in layer order) with continuous batching."""

    def __init__(
        self,
        runners: list[ModelRunner],
        *,
        eos_token_ids: Iterable[int] = (),
        seed: int = 0,
    ) -> None:
        ranges = [r.model.layer_range for r in runners]
        if not ranges or ranges[0].start != 0 or not runners[-1].model.is_last:
            raise HelixInputError(
                "the stages must cover the model from its first to its last layer", field="layer_range"
            )
        if any(a.end != b.start for a, b in zip(ranges, ranges[1:], strict=False)):
            raise HelixInputError(f"stages {ranges} are not contiguous", field="layer_range")
        self.runners = runners
        self.config = runners[0].engine_config
        self.max_model_len = min(r.max_model_len for r in runners)
        self.scheduler = Scheduler(self.config, [r.block_manager for r in runners])
        self.sampler = Sampler()
        self.eos_token_ids = tuple(eos_token_ids)
        self._seed_source = random.Random(seed)
        self._next_seq_id = 0
        self._sequences: dict[int, Sequence] = {}
        self._inflight: _InFlight | None = None
        self.host_s = 0.0  # host time inside step(), waits for the device excluded
        self.wait_s = 0.0  # time step() spent waiting for sampled tokens

    @classmethod
    def from_model(
        cls,
        model: ResolvedModel,
        stages: list[LayerRange] | int = 1,
        *,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        engine_config: EngineConfig | None = None,
        seed: int = 0,
    ) -> LLMEngine:
        """Load `model` as the given stages (or that many even stages) on one device."""
        config = engine_config or EngineConfig()
        ranges = even_split(model.config.num_layers, stages) if isinstance(stages, int) else stages
        max_len = config.max_model_len or model.config.max_position_embeddings
        runners = [
            ModelRunner(model.load_stage(r, device=device, dtype=dtype, max_positions=max_len), config)
            for r in ranges
        ]
        return cls(runners, eos_token_ids=model.config.eos_token_ids, seed=seed)

    # ---- requests ----
    def add_request(self, prompt_token_ids: list[int], params: SamplingParams | None = None) -> int:
        """Queue a request; returns its sequence id. Raises `HelixInputError` if it cannot fit."""
        params = params or SamplingParams()
        if not prompt_token_ids:
            raise HelixInputError("empty prompt", field="prompt", fix="send at least one token")
        if len(prompt_token_ids) >= self.max_model_len:
            raise HelixInputError(
                f"prompt of {len(prompt_token_ids)} tokens does not fit the context window of "
                f"{self.max_model_len} tokens (one more is needed to generate)",
                field="prompt",
                fix="shorten the prompt",
            )
        manager = min((r.block_manager for r in self.runners), key=lambda m: m.num_blocks)
        needed = manager.num_blocks_for(len(prompt_token_ids) + 1)
        if needed > manager.num_blocks:
            raise KVCacheExhaustedError(needed, manager.num_blocks)
        seq_id = self._next_seq_id
        self._next_seq_id += 1
        seed = params.seed if params.seed is not None else self._seed_source.getrandbits(63)
        seq = Sequence(seq_id, list(prompt_token_ids), params, seed)
        self._sequences[seq_id] = seq
        self.scheduler.add(seq)
        return seq_id

    def cancel(self, seq_id: int) -> None:
        """Stop a request and free its KV blocks on every stage (no-op if already finished)."""
        seq = self._sequences.pop(seq_id, None)
        if seq is not None:
            seq.finish(FinishReason.CANCELLED)
            self.scheduler.remove(seq)

    def has_unfinished(self) -> bool:
        inflight = self._inflight
        return self.scheduler.has_unfinished() or (
            inflight is not None and any(not s.is_finished for s in inflight.seqs)
        )

    # ---- stepping ----
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one step through all stages; return the requests that got a token (see module doc)."""
        started = time.perf_counter()
        waited = self.wait_s
        try:
            if not self.config.async_scheduling:
                previous, self._inflight = self._inflight, None
                resolved = self._resolve(previous) if previous is not None else []
                return resolved + self._step_sync()
            early: list[RequestOutput] = []
            launched = self._launch(early)
            previous, self._inflight = self._inflight, launched
            return early + (self._resolve(previous) if previous is not None else [])
        finally:
            self.host_s += time.perf_counter() - started - (self.wait_s - waited)

    # ---- asynchronous path ----
    def _launch(self, early: list[RequestOutput]) -> _InFlight | None:
        """Schedule and launch a step. Rows that need the sampler (random, log-probabilities,
        penalties) see every earlier token: the step in flight is resolved first, into `early`."""
        seqs, batch = self.scheduler.schedule()
        if not seqs:
            return None
        x = self._step_inputs(seqs, batch)
        for runner in self.runners:
            x = runner.execute(batch, x, clone_output=False)
        self._computed(seqs, batch)
        done = [i for i, s in enumerate(seqs) if s.num_pending_tokens == 0]
        if not done:
            return None
        ready = [seqs[i] for i in done]
        logits = x if len(done) == len(seqs) else x[done]
        params = [s.params for s in ready]
        logprobs: list[dict[int, float] | None]
        if all(p.is_argmax_only for p in params):
            tokens, logprobs = logits.argmax(dim=-1), [None] * len(ready)
        else:
            if self._inflight is not None:
                early.extend(self._resolve(self._inflight))
                self._inflight = None
            out = self.sampler(
                logits,
                params,
                [s.seed for s in ready],
                [s.num_tokens for s in ready],
                [s.prompt_token_ids for s in ready],
                [s.output_token_ids for s in ready],
            )
            logprobs = [
                None if lp is None else {**(top or {}), t: lp}
                for t, lp, top in zip(out.tokens, out.logprobs, out.top_logprobs, strict=True)
            ]
            tokens = torch.tensor(out.tokens, dtype=torch.int64, device=logits.device)
        out_index = []
        for seq in ready:
            if seq.is_finished:  # stopped on the token resolved just above
                out_index.append(-1)
                continue
            seq.output_token_ids.append(PENDING_TOKEN)
            out_index.append(len(seq.output_token_ids) - 1)
            full = len(seq.output_token_ids) >= seq.params.max_tokens
            seq.last_step_pending = full or seq.num_tokens >= self.max_model_len
        event = None
        if tokens.is_cuda:
            host = torch.empty(tokens.shape, dtype=torch.int64, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host = tokens
        return _InFlight(ready, out_index, tokens, host, event, logprobs)

    def _computed(self, seqs: list[Sequence], batch) -> None:
        """Count the step's tokens as computed; hash the prompt blocks that just became full."""
        managers = [r.block_manager for r in self.runners]
        caching = self.config.enable_prefix_caching
        size = managers[0].block_size
        for seq, chunk in zip(seqs, batch.chunks, strict=True):
            before = seq.num_computed_tokens
            seq.num_computed_tokens += chunk.num_new_tokens
            prompt_len = len(seq.prompt_token_ids)
            if caching and before < prompt_len and seq.num_computed_tokens // size > before // size:
                for manager in managers:
                    manager.commit(seq.seq_id, seq.prompt_token_ids, seq.num_computed_tokens)

    def _step_inputs(self, seqs: list[Sequence], batch) -> torch.Tensor:
        """Token ids of the step; pending tokens come from the previous step's device tensor."""
        previous = self._inflight
        pending_row = {}
        if previous is not None:
            pending_row = {id(s): row for row, s in enumerate(previous.seqs)}
        tokens: list[int] = []
        dst, src = [], []
        for seq, chunk in zip(seqs, batch.chunks, strict=True):
            part = seq.token_slice(chunk.num_cached_tokens, chunk.num_total_tokens)
            if part[-1] == PENDING_TOKEN:
                row = pending_row[id(seq)]
                dst.append(len(tokens) + len(part) - 1)
                src.append(row)
                part = part[:-1] + [0]
            tokens.extend(part)
        device = self.runners[0].device
        if not dst:
            return torch.tensor(tokens, dtype=torch.int64).to(device, non_blocking=True)
        assert previous is not None
        rows = previous.tokens.index_select(0, torch.tensor(src).to(device, non_blocking=True))
        if len(dst) == len(tokens):  # every input is a pending token (decode after decode)
            return rows
        x = torch.tensor(tokens, dtype=torch.int64).to(device, non_blocking=True)
        x[torch.tensor(dst).to(device, non_blocking=True)] = rows
        return x

    def _resolve(self, step: _InFlight) -> list[RequestOutput]:
        if step.event is not None:
            started = time.perf_counter()
            step.event.synchronize()
            self.wait_s += time.perf_counter() - started
        outputs = []
        rows = zip(step.seqs, step.out_index, step.host.tolist(), step.logprobs, strict=True)
        for seq, index, token, lp in rows:
            if seq.is_finished:
                continue  # cancelled, or stopped on the token before
            seq.output_token_ids[index] = token
            outputs.append(self._append(seq, token, lp, index))
        return outputs

    # ---- synchronous path ----
    def _step_sync(self) -> list[RequestOutput]:
        seqs, batch = self.scheduler.schedule()
        if not seqs:
            return []
        tokens: list[int] = []
        for seq, chunk in zip(seqs, batch.chunks, strict=True):
            tokens.extend(seq.token_slice(chunk.num_cached_tokens, chunk.num_total_tokens))
        x = torch.tensor(tokens, dtype=torch.int64, device=self.runners[0].device)
        for runner in self.runners:
            x = runner.execute(batch, x)
        self._computed(seqs, batch)
        done = [i for i, s in enumerate(seqs) if s.num_pending_tokens == 0]
        if not done:
            return []
        ready = [seqs[i] for i in done]
        out = self.sampler(
            x[done],
            [s.params for s in ready],
            [s.seed for s in ready],
            [s.num_tokens for s in ready],
            [s.prompt_token_ids for s in ready],
            [s.output_token_ids for s in ready],
        )
        outputs = []
        rows = zip(ready, out.tokens, out.logprobs, out.top_logprobs, strict=True)
        for seq, token, logprob, top in rows:
            seq.output_token_ids.append(token)
            lp = None if logprob is None else {**(top or {}), token: logprob}
            outputs.append(self._append(seq, token, lp, len(seq.output_token_ids) - 1))
        return outputs

    def _append(
        self, seq: Sequence, token: int, logprobs: dict[int, float] | None, index: int
    ) -> RequestOutput:
        """Account output token `index` (already in place); later entries may still be pending."""
        if logprobs is not None:
            seq.output_logprobs.append(logprobs)
        num_out = index + 1
        stops = seq.params.stop_token_ids + (() if seq.params.ignore_eos else self.eos_token_ids)
        if token in stops:
            seq.finish(FinishReason.STOP)
        elif num_out >= seq.params.max_tokens or len(seq.prompt_token_ids) + num_out >= self.max_model_len:
            seq.finish(FinishReason.LENGTH)
        if seq.is_finished:
            del seq.output_token_ids[num_out:]  # a pending token launched after this one
            self.scheduler.remove(seq)
            self._sequences.pop(seq.seq_id, None)
        return RequestOutput(
            seq.seq_id,
            seq.prompt_token_ids,
            seq.output_token_ids[:num_out],
            list(seq.output_logprobs) if seq.params.logprobs is not None else None,
            seq.finish_reason,
        )

    def generate(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run `prompts` to completion; outputs in prompt order."""
        per_prompt = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, per_prompt, strict=True)]
        final: dict[int, RequestOutput] = {}
        while self.has_unfinished():
            for out in self.step():
                if out.finished:
                    final[out.seq_id] = out
        return [final[i] for i in ids]
