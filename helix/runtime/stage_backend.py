"""The engine side of a worker: `helix.engine`'s `ModelRunner` and `Sampler` for one layer range.

`StageBackend` reserves KV per request (so one request that does not fit fails alone), runs a step over
`StageItem`s through `ModelRunner.execute`, and on the last stage samples each request's next token with
its own seeded generator. `load_backend` builds one from a model name/path and a layer range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from helix.engine.batch import SeqChunk, StepBatch
from helix.engine.config import EngineConfig, LayerRange
from helix.engine.kv_cache import kv_block_bytes
from helix.engine.loader import resolve_model
from helix.engine.model_runner import ModelRunner
from helix.engine.sampler import Sampler
from helix.engine.sampling_params import SamplingParams
from helix.errors import HelixInputError
from helix.runtime.messages import StageItem, TokenResult


@dataclass(frozen=True, slots=True)
class StageConfig:
    """How to build one worker's stage.

    `kv_cache_bytes` bounds the KV cache (on CPU the engine's default is 1 GiB per stage, which adds up
    with several workers on one machine); `threads` bounds torch's intra-op threads on CPU.
    """

    model: str
    start: int
    end: int
    device: str = "cpu"
    dtype: str = "float32"
    kv_cache_bytes: int | None = 256 << 20
    max_model_len: int | None = 2048
    threads: int = 1


class StageBackend:
    """One layer range on one device (see the module docstring)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.is_first = runner.model.is_first
        self.is_last = runner.model.is_last
        self._sampler = Sampler()
        self._params: dict[int, SamplingParams] = {}
        self._generators: dict[int, torch.Generator | None] = {}

    @property
    def num_kv_blocks(self) -> int:
        return self.runner.block_manager.num_blocks

    @property
    def num_used_kv_blocks(self) -> int:
        return self.runner.block_manager.num_used_blocks

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    def reserve(self, item: StageItem) -> str | None:
        """Take the KV blocks `item` needs now; a reason string if it cannot run here."""
        manager = self.runner.block_manager
        seq_id, total = item.seq_id, item.num_cached_tokens + item.num_new_tokens
        if item.num_cached_tokens and manager.has(seq_id) and total <= self.runner.max_model_len:
            extra = total - manager.num_tokens(seq_id)  # fast path: a known sequence grows
            if extra <= 0:
                return None
            if manager.num_new_blocks_for_append(seq_id, extra) <= manager.num_free_blocks:
                manager.append(seq_id, extra)
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

    def register_sampling(self, seq_id: int, params: SamplingParams | None) -> None:
        params = params or SamplingParams(temperature=0.0)
        self._params[seq_id] = params
        generator = None
        if not params.is_greedy:
            generator = torch.Generator(device=self.runner.device)
            generator.manual_seed(params.seed if params.seed is not None else seq_id)
        self._generators[seq_id] = generator

    def forward(self, items: list[StageItem], inputs: torch.Tensor) -> torch.Tensor:
        """Hidden states [T, H], or last-token logits [len(items), V] on the last stage."""
        chunks = tuple(SeqChunk(i.seq_id, i.num_cached_tokens, i.num_new_tokens) for i in items)
        return self.runner.execute(StepBatch(chunks), inputs)

    def sample(self, items: list[StageItem], logits: torch.Tensor) -> list[TokenResult]:
        params = [self._params.get(i.seq_id) or SamplingParams(temperature=0.0) for i in items]
        generators = [self._generators.get(i.seq_id) for i in items]
        tokens, logprobs = self._sampler(logits, params, generators)
        results = []
        for item, token, lp in zip(items, tokens, logprobs, strict=True):
            chosen = None if lp is None else lp.get(token)
            results.append(TokenResult(item.seq_id, token, chosen, lp))
        return results

    def free(self, seq_id: int) -> None:
        self.runner.free(seq_id)
        self._params.pop(seq_id, None)
        self._generators.pop(seq_id, None)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def kv_blocks(model_config, num_layers: int, kv_cache_bytes: int, dtype: torch.dtype) -> int:
    """KV blocks (16 tokens) a stage of `num_layers` layers gets from a `kv_cache_bytes` budget."""
    return max(1, kv_cache_bytes // kv_block_bytes(model_config, num_layers, 16, dtype))


def load_backend(config: StageConfig) -> StageBackend:
    """Load layers [start, end) of `config.model` on `config.device` and size its KV cache."""
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
        num_blocks = kv_blocks(resolved.config, layer_range.num_layers, config.kv_cache_bytes, dtype)
    engine_config = EngineConfig(num_kv_blocks=num_blocks, max_model_len=config.max_model_len)
    return StageBackend(ModelRunner(model, engine_config))
