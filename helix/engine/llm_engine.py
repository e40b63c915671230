"""A single-process engine: a chain of stages run back to back, a scheduler and a sampler.

This is the whole pipeline in one process (one or several stages, on one device or several); the
distributed runtime drives `ModelRunner`s the same way with its own transport between stages.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch

from helix.engine.config import EngineConfig, LayerRange
from helix.engine.errors import KVCacheExhaustedError
from helix.engine.loader import ResolvedModel
from helix.engine.model_runner import ModelRunner
from helix.engine.sampler import Sampler
from helix.engine.sampling_params import SamplingParams
from helix.engine.scheduler import Scheduler
from helix.engine.sequence import FinishReason, RequestOutput, Sequence
from helix.errors import HelixInputError


def even_split(num_layers: int, num_stages: int) -> list[LayerRange]:
    """`num_stages` contiguous layer ranges covering the model, sizes differing by at most one."""
    bounds = [round(i * num_layers / num_stages) for i in range(num_stages + 1)]
    return [LayerRange(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


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
        return self.scheduler.has_unfinished()

    # ---- stepping ----
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one step through all stages; return the requests that got a token this step."""
        seqs, batch = self.scheduler.schedule()
        if not seqs:
            return []
        tokens: list[int] = []
        for seq, chunk in zip(seqs, batch.chunks, strict=True):
            tokens.extend(seq.token_slice(chunk.num_cached_tokens, chunk.num_total_tokens))
        x = torch.tensor(tokens, dtype=torch.int64, device=self.runners[0].device)
        for runner in self.runners:
            x = runner.execute(batch, x)
        for seq, chunk in zip(seqs, batch.chunks, strict=True):
            seq.num_computed_tokens += chunk.num_new_tokens
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
        return [
            self._append(s, t, lp, top)
            for s, t, lp, top in zip(ready, out.tokens, out.logprobs, out.top_logprobs, strict=True)
        ]

    def _append(
        self, seq: Sequence, token: int, logprob: float | None, top: dict[int, float] | None
    ) -> RequestOutput:
        seq.output_token_ids.append(token)
        if logprob is not None:
            seq.output_logprobs.append({**(top or {}), token: logprob})
        stops = seq.params.stop_token_ids + (() if seq.params.ignore_eos else self.eos_token_ids)
        if token in stops:
            seq.finish(FinishReason.STOP)
        elif len(seq.output_token_ids) >= seq.params.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish(FinishReason.LENGTH)
        if seq.is_finished:
            self.scheduler.remove(seq)
            self._sequences.pop(seq.seq_id, None)
        return RequestOutput(
            seq.seq_id,
            seq.prompt_token_ids,
            list(seq.output_token_ids),
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
