"""Frozen configuration objects of the engine: the model's shape, a stage's layer range, engine limits.

`ModelConfig.from_hf_dict` reads a Hugging Face `config.json` dictionary through the one reader,
`helix.specs.hf_config.parse_hf_config`, which rejects what cannot run with a `HelixInputError`; the
layer range is `helix.specs.placement.LayerRange`; `ModelConfig.to_hf_dict`
gives the same keys back so other packages (e.g. `helix.specs`) can build their own model description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from helix.errors import HelixInputError
from helix.specs.hf_config import SUPPORTED_ARCHITECTURES, RopeScaling, parse_hf_config
from helix.specs.placement import LayerRange

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "LLAMA3_8B_HF_CONFIG",
    "SUPPORTED_ARCHITECTURES",
    "EngineConfig",
    "LayerRange",
    "ModelConfig",
    "RopeScaling",
]

DEFAULT_BLOCK_SIZE = 16  # tokens per KV-cache block unless an `EngineConfig` says otherwise


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The shape of a LLaMA-family decoder-only model."""

    architecture: str  # one of SUPPORTED_ARCHITECTURES' keys
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    attention_bias: bool = False  # q/k/v projections carry biases (Qwen2)
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise HelixInputError(
                f"num_attention_heads {self.num_heads} is not a multiple of "
                f"num_key_value_heads {self.num_kv_heads}",
                field="num_key_value_heads",
                fix="use a grouped-query attention config with heads divisible by KV heads",
            )

    @property
    def family(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_param_count(self) -> int:
        """Parameters of one decoder layer (projections, biases and the two norms)."""
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        bias = (self.q_size + 2 * self.kv_size) if self.attention_bias else 0
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attn + bias + mlp + 2 * self.hidden_size

    def kv_bytes_per_token_per_layer(self, itemsize: int) -> int:
        """Bytes of K and V one token occupies in one layer's cache."""
        return 2 * self.kv_size * itemsize

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, where: str = "config.json") -> ModelConfig:
        """Build from a Hugging Face config dictionary (`helix.specs.hf_config.parse_hf_config`, the one
        reader); raises `HelixInputError` on unsupported models."""
        fields = parse_hf_config(hf, where=where)
        fields.pop("dtype_bytes")
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config as Hugging Face `config.json` keys (enough to rebuild it or a transformers model)."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            s = self.rope_scaling
            rope = {
                "rope_type": "llama3",
                "rope_theta": self.rope_theta,
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }
        eos: Any = list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0]
        return {
            "architectures": [self.architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if self.rope_scaling is None else dict(rope),
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos if self.eos_token_ids else None,
            "hidden_act": "silu",
        }


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Limits and switches of one stage's engine."""

    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={"help": "tokens per KV-cache block"})
    max_num_seqs: int = field(default=256, metadata={"help": "most sequences in one step"})
    max_num_batched_tokens: int = field(default=8192, metadata={"help": "most tokens in one step"})
    max_model_len: int | None = field(default=None, metadata={"help": "context window; model's if None"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "share of device memory used"})
    num_kv_blocks: int | None = field(default=None, metadata={"help": "KV blocks; from memory if None"})
    use_cuda_graphs: bool = field(default=True, metadata={"help": "replay captured graphs for decode"})
    max_graph_batch_size: int = field(default=256, metadata={"help": "largest decode batch captured"})
    attention_backend: str = field(default="auto", metadata={"help": "auto | sdpa | triton"})
    skinny_gemm: bool = field(
        default=False,
        metadata={"help": "decode graphs may use split-K Triton matmuls where measured faster (CUDA)"},
    )
    async_scheduling: bool = field(
        default=True, metadata={"help": "schedule step t + 1 while the GPU runs step t (LLMEngine)"}
    )
    enable_prefix_caching: bool = field(
        default=True, metadata={"help": "reuse the KV blocks of identical prompt prefixes"}
    )

    def __post_init__(self) -> None:
        checks = (
            ("block_size", self.block_size >= 1),
            ("max_num_seqs", self.max_num_seqs >= 1),
            ("max_num_batched_tokens", self.max_num_batched_tokens >= 1),
            ("gpu_memory_utilization", 0.0 < self.gpu_memory_utilization <= 1.0),
            ("num_kv_blocks", self.num_kv_blocks is None or self.num_kv_blocks >= 1),
            ("attention_backend", self.attention_backend in ("auto", "sdpa", "triton")),
        )
        for name, ok in checks:
            if not ok:
                raise HelixInputError(f"invalid value {getattr(self, name)!r}", field=name)


#: The Hugging Face config of a LLaMA-3-8B-shaped model, for benchmarks with random weights.
LLAMA3_8B_HF_CONFIG: dict = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
}
