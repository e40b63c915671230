"""The engine side of a worker: `helix.engine`'s `ModelRunner` and `Sampler` for one layer range.

`StageBackend` reserves KV per request (the worker preempts when it is short), runs a step over
`StageItem`s through `ModelRunner.execute`, and on the last stage samples each request's next token with
its own seeded generator. `load_backend` builds one from a model name/path and a layer range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from helix.engine.batch import SeqChunk, StepBatch
from helix.engine.config import DEFAULT_BLOCK_SIZE, EngineConfig, LayerRange
from helix.engine.kv_cache import kv_block_bytes
from helix.engine.loader import resolve_model
from helix.engine.model_runner import ModelRunner
from helix.engine.sampler import Sampler, SamplerOutput, to_signed_seed
from helix.engine.sampling_params import SamplingParams
from helix.errors import HelixInputError
from helix.runtime.messages import StageItem


@dataclass(frozen=True, slots=True)
class StageConfig:
    """How to build one worker's stage.

    `kv_cache_bytes` bounds the KV cache (on CPU the engine's default is 1 GiB per stage, which adds up
    with several workers on one machine); `threads` bounds torch's intra-op threads on CPU;
    `block_size` is the engine's KV block size (`EngineConfig.block_size`); `max_graph_batch_size`
    the largest decode step replayed from a CUDA graph (`EngineConfig.max_graph_batch_size`: a worker
    that steps more requests at once than this runs those steps eagerly, launch by launch).
    """

    model: str
    start: int
    end: int
    device: str = "cpu"
    dtype: str = "float32"
    kv_cache_bytes: int | None = 256 << 20
    max_model_len: int | None = 2048
    threads: int = 1
    block_size: int = DEFAULT_BLOCK_SIZE
    tp_size: int = 1  # tensor-parallel ranks of the node (`helix.runtime.tp_node`)
    max_graph_batch_size: int = 256


def pin_device(stage: StageConfig) -> StageConfig:
    """Pin this process to the stage's GPU before CUDA starts: ``cuda:<i>`` sets
    ``CUDA_VISIBLE_DEVICES=<i>`` and becomes ``cuda:0`` (the one pinning rule of Ray actors and
    worker processes)."""
    if stage.device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = stage.device.split(":", 1)[1]
        return replace(stage, device="cuda:0")
    return stage


@dataclass(slots=True)
class PendingTokens:
    """Sampled tokens on their way to the host (`host` filled once `event` completes), or the results
    of a step the sampler resolved at once."""

    host: torch.Tensor | None
    event: torch.cuda.Event | None
    results: SamplerOutput | None


class StageBackend:
    """One layer range on one device (see the module docstring)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.is_first = runner.model.is_first
        self.is_last = runner.model.is_last
        self._sampler = Sampler()
        self._params: dict[int, SamplingParams] = {}
        self._seeds: dict[int, int] = {}
        self._prompt_ids: dict[int, tuple[int, ...]] = {}  # only for requests with a repetition penalty
        self._output_ids: dict[int, list[int]] = {}

    @property
    def num_kv_blocks(self) -> int:
        return self.runner.block_manager.num_blocks

    @property
    def kv_block_size(self) -> int:
        return self.runner.block_size

    @property
    def num_used_kv_blocks(self) -> int:
        return self.runner.block_manager.num_used_blocks

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    def kv_shortfall(self, item: StageItem) -> int:
        """KV blocks missing to run `item` now (0 when it fits): the worker preempts to cover them."""
        batch = StepBatch((SeqChunk(item.seq_id, item.num_cached_tokens, item.num_new_tokens),))
        return max(0, self.runner.num_blocks_needed(batch) - self.runner.block_manager.num_free_blocks)

    def num_blocks_held(self, seq_id: int) -> int:
        manager = self.runner.block_manager
        return len(manager.block_table(seq_id)) if manager.has(seq_id) else 0

    @property
    def failure(self) -> str | None:
        """Why the stage cannot run any more (a tensor-parallel rank died), or None."""
        return getattr(self.runner, "failure", None)

    @property
    def rank_pids(self) -> list[int]:
        """PIDs of the tensor-parallel rank processes this worker started (rank 0 is itself)."""
        return list(getattr(self.runner, "rank_pids", []))

    def close(self) -> None:
        """Stop the stage's rank processes, if any."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def try_grow(self, item: StageItem) -> bool:
        """The fast path of `reserve`: a known sequence grows within the free blocks (True when done)."""
        if not item.num_cached_tokens:
            return False
        return self.try_grow_to(item.seq_id, item.num_cached_tokens + item.num_new_tokens)

    def try_grow_to(self, seq_id: int, total: int) -> bool:
        """`try_grow` of a known sequence to `total` tokens of context."""
        return total <= self.runner.max_model_len and self.runner.block_manager.grow_to(seq_id, total)

    def prefix_hits(self, token_ids: tuple[int, ...]) -> int:
        """Leading full blocks of `token_ids` cached on this stage (at least one token left to compute)."""
        return self.runner.block_manager.match_prefix(list(token_ids))

    def allocate_prefix(self, item: StageItem, num_cached_blocks: int) -> str | None:
        """Take a prompt's blocks, its first `num_cached_blocks` the cached ones of `item.prefix_ids`; a
        reason string if it cannot run here."""
        manager, ids = self.runner.block_manager, list(item.prefix_ids or ())
        total = item.num_cached_tokens + item.num_new_tokens
        if total > self.runner.max_model_len:
            return f"{total} tokens of context, more than the context window of {self.runner.max_model_len}"
        if not manager.can_allocate(total, ids, num_cached_blocks):
            return f"KV cache full ({manager.num_free_blocks} of {manager.num_blocks} blocks free)"
        manager.allocate(item.seq_id, total, ids, num_cached_blocks)
        return None

    def commit_prefix(self, item: StageItem) -> None:
        """Make the prompt blocks `item` computed addressable by their tokens' hash."""
        if item.prefix_ids is not None:
            total = item.num_cached_tokens + item.num_new_tokens
            self.runner.block_manager.commit(item.seq_id, list(item.prefix_ids), total)

    def reserve(self, item: StageItem) -> str | None:
        """Take the KV blocks `item` needs now; a reason string if it cannot run here."""
        if self.try_grow(item):
            return None
        batch = StepBatch((SeqChunk(item.seq_id, item.num_cached_tokens, item.num_new_tokens),))
        manager = self.runner.block_manager
        if item.num_cached_tokens and not manager.has(item.seq_id):
            return f"no KV cached for request {item.seq_id}"
        if not self.runner.can_reserve(batch):
            return (
                f"KV cache full ({manager.num_free_blocks} of {manager.num_blocks} blocks free, "
                f"{self.runner.num_blocks_needed(batch)} needed)"
            )
        try:
            self.runner.reserve(batch)
        except HelixInputError as exc:
            return exc.problem
        return None

    def register_sampling(
        self,
        seq_id: int,
        params: SamplingParams | None,
        prompt_ids: tuple[int, ...] | None = None,
        output_ids: tuple[int, ...] | None = None,
    ) -> None:
        """Remember a request's sampling settings, its prompt when it has a repetition penalty, and the
        tokens it generated before (a request resumed after a preemption or re-route, with penalties)."""
        params = params or SamplingParams(temperature=0.0)
        self._params[seq_id] = params
        self._seeds[seq_id] = to_signed_seed(params.seed if params.seed is not None else seq_id)
        self._output_ids[seq_id] = list(output_ids or ())
        if prompt_ids:
            self._prompt_ids[seq_id] = prompt_ids

    def forward(
        self, chunks: tuple[SeqChunk, ...], inputs: torch.Tensor, skip_layers: int = 0
    ) -> torch.Tensor:
        """Hidden states [T, H], or last-token logits [len(chunks), V] on the last stage; `skip_layers`:
        leading layers of the range these requests skip (they already ran them elsewhere)."""
        return self.runner.execute(StepBatch(chunks), inputs, skip_layers)

    def forward_decode(self, seq_ids: list[int], context: list[int], inputs: torch.Tensor) -> torch.Tensor:
        """`forward` of a pure-decode step: one new token per sequence after `context` cached ones, whose
        KV already has room for it (`try_grow_to`)."""
        return self.runner.execute_decode(seq_ids, context, inputs)

    @property
    def layer_start(self) -> int:
        return self.runner.model.layer_range.start

    def sample(self, seq_ids: list[int], positions: list[int], logits: torch.Tensor) -> SamplerOutput:
        """Each row's next token (`positions`: the index it will have); each request's history grows."""
        params = [self._params.get(s) or SamplingParams(temperature=0.0) for s in seq_ids]
        seeds = [self._seeds.get(s, s) for s in seq_ids]
        outputs = [self._output_ids.setdefault(s, []) for s in seq_ids]
        prompts = [self._prompt_ids.get(s, ()) for s in seq_ids]
        out = self._sampler(logits, params, seeds, positions, prompts, outputs)
        for token, history in zip(out.tokens, outputs, strict=True):
            history.append(token)
        return out

    def sample_launch(self, seq_ids: list[int], positions: list[int], logits: torch.Tensor) -> PendingTokens:
        """Start sampling without waiting for the device: when every row takes the argmax (greedy, no
        log-probabilities, no penalties) the tokens travel to pinned host memory behind an event;
        otherwise the sampler runs now. `sample_resolve` gives the results."""
        params = self._params
        if logits.is_cuda and all(params.get(s) is None or params[s].is_argmax_only for s in seq_ids):
            tokens = logits.argmax(dim=-1)
            host = torch.empty(tokens.shape, dtype=torch.int64, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return PendingTokens(host, event, None)
        return PendingTokens(None, None, self.sample(seq_ids, positions, logits))

    def sample_resolve(self, seq_ids: list[int], pending: PendingTokens) -> SamplerOutput:
        """The tokens of `sample_launch` (waits for the device); each request's history grows by one."""
        if pending.results is not None:
            return pending.results
        assert pending.host is not None and pending.event is not None
        pending.event.synchronize()
        tokens = pending.host.tolist()
        histories = self._output_ids
        for seq_id, token in zip(seq_ids, tokens, strict=True):
            history = histories.get(seq_id)
            if history is not None:  # None: freed while the step ran
                history.append(token)
        return SamplerOutput(tokens, [None] * len(tokens), [None] * len(tokens))

    def free(self, seq_id: int) -> None:
        self.runner.free(seq_id)
        self._params.pop(seq_id, None)
        self._seeds.pop(seq_id, None)
        self._prompt_ids.pop(seq_id, None)
        self._output_ids.pop(seq_id, None)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def kv_blocks(
    model_config,
    num_layers: int,
    kv_cache_bytes: int,
    dtype: torch.dtype,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> int:
    """KV blocks (`block_size` tokens each) a stage of `num_layers` layers gets from `kv_cache_bytes`."""
    return max(1, kv_cache_bytes // kv_block_bytes(model_config, num_layers, block_size, dtype))


def load_backend(config: StageConfig) -> StageBackend:
    """Load layers [start, end) of `config.model` on `config.device` and size its KV cache."""
    if config.tp_size > 1:
        from helix.runtime.tp_node import load_tp_backend

        return load_tp_backend(config)
    if config.device == "cpu":
        torch.set_num_threads(max(1, config.threads))
    dtype = _DTYPES[config.dtype]
    resolved = resolve_model(config.model)
    layer_range = LayerRange(config.start, config.end).validate(resolved.config.num_layers)
    model = resolved.load_stage(
        layer_range, device=config.device, dtype=dtype, max_positions=config.max_model_len
    )
    num_blocks = None
    if config.kv_cache_bytes is not None:
        num_blocks = kv_blocks(
            resolved.config, layer_range.num_layers, config.kv_cache_bytes, dtype, config.block_size
        )
    return StageBackend(ModelRunner(model, stage_engine_config(config, num_blocks)))


def stage_engine_config(config: StageConfig, num_blocks: int | None) -> EngineConfig:
    """The engine settings of a worker's stage."""
    return EngineConfig(
        block_size=config.block_size,
        num_kv_blocks=num_blocks,
        max_model_len=config.max_model_len,
        max_graph_batch_size=config.max_graph_batch_size,
    )
