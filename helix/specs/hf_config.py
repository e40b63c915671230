"""The one reader of Hugging Face ``config.json`` dictionaries (LLaMA, Mistral and Qwen2 families).

`parse_hf_config` checks what every consumer needs (a supported architecture, the shape fields, no
sliding window, a supported RoPE scaling) and returns the normalised fields; `helix.specs.model` builds
its planning `ModelSpec` from them and `helix.engine.config` its `ModelConfig`, so the two can never
disagree on which models are supported or on their shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from helix.errors import HelixInputError

#: HF architecture name → model family.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "llama3")
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp16": 2, "bf16": 2, "fp32": 4}


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """LLaMA-3 style RoPE frequency scaling (`rope_type: llama3`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


def parse_hf_config(hf: dict[str, Any], *, where: str = "config.json") -> dict[str, Any]:
    """The model's fields from a HF config dict (keys of `helix.engine.config.ModelConfig`, plus
    ``dtype_bytes``); raises `HelixInputError` naming the field on anything unsupported or missing."""
    if not isinstance(hf, dict):
        raise HelixInputError("is not a JSON object", where=where, fix="use the model's config.json")
    architecture = _architecture(hf, where)
    _check_sliding_window(hf, where)
    theta, scaling = _rope(hf, where)
    num_heads = _int(hf, "num_attention_heads", where)
    hidden = _int(hf, "hidden_size", where)
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (int(eos),))
    default_bias = SUPPORTED_ARCHITECTURES[architecture] == "qwen2"
    dtype = str(hf.get("torch_dtype") or hf.get("dtype") or "bfloat16")
    return {
        "architecture": architecture,
        "vocab_size": _int(hf, "vocab_size", where),
        "hidden_size": hidden,
        "intermediate_size": _int(hf, "intermediate_size", where),
        "num_layers": _int(hf, "num_hidden_layers", where),
        "num_heads": num_heads,
        "num_kv_heads": int(hf.get("num_key_value_heads") or num_heads),
        "head_dim": int(hf.get("head_dim") or hidden // num_heads),
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-5)),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "max_position_embeddings": int(hf.get("max_position_embeddings", 4096)),
        "attention_bias": bool(hf.get("attention_bias", default_bias)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_ids": eos_ids,
        "dtype_bytes": DTYPE_BYTES.get(dtype, 2),
    }


def _int(hf: dict[str, Any], key: str, where: str) -> int:
    value = hf.get(key)
    if value is None:
        raise HelixInputError(
            f"missing field {key!r}", where=where, field=key, fix="use the model's original config.json"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise HelixInputError(f"must be a positive integer, got {value!r}", where=where, field=key)
    return value


def _architecture(hf: dict[str, Any], where: str) -> str:
    names = list(hf.get("architectures") or [])
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    by_type = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
    if not names and hf.get("model_type") in by_type:
        return by_type[hf["model_type"]]
    shown = names or [hf.get("model_type")]
    raise HelixInputError(
        f"unsupported architecture {shown}",
        where=where,
        field="architectures",
        fix=f"use one of {sorted(SUPPORTED_ARCHITECTURES)}",
    )


def _check_sliding_window(hf: dict[str, Any], where: str) -> None:
    window = hf.get("sliding_window")
    uses = hf.get("use_sliding_window", True)
    if window is not None and uses and int(window) < int(hf.get("max_position_embeddings", 0)):
        raise HelixInputError(
            f"sliding-window attention ({window} tokens) is not supported",
            where=where,
            field="sliding_window",
            fix="use a model version without a sliding window (e.g. Mistral v0.2+)",
        )


def _rope(hf: dict[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise HelixInputError(
            f"unsupported RoPE scaling {rope_type!r}",
            where=where,
            field="rope_scaling",
            fix=f"use one of {list(SUPPORTED_ROPE_TYPES)}",
        )
    if rope_type == "default":
        return theta, None
    try:
        scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HelixInputError(
            f"incomplete llama3 RoPE scaling ({exc})", where=where, field="rope_scaling"
        ) from None
    return theta, scaling
