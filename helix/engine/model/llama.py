"""A LLaMA-family decoder (LLaMA, Mistral, Qwen2) built for one layer range [start, end).

Only the first stage owns the token embedding and only the last owns the final norm and LM head. The
stage maps token ids [T] (first stage) or hidden states [T, H] (others) to hidden states [T, H];
`compute_logits` maps the last stage's hidden states [N, H] to float32 logits [N, V].
Weight names are Hugging Face's with q/k/v and gate/up fused (see `helix.engine.loader`).
"""

from __future__ import annotations

import torch
from torch import nn

from helix.engine.batch import AttentionMetadata
from helix.engine.config import LayerRange, ModelConfig
from helix.engine.model.attention import Attention
from helix.engine.model.layers import Linear, RMSNorm, RotaryEmbedding, SwiGLUMLP


class DecoderLayer(nn.Module):
    """x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
            config.attention_bias,
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size)

    def forward(self, x, positions, kv_cache, meta: AttentionMetadata, rotary: RotaryEmbedding):
        h = x + self.self_attn(self.input_layernorm(x), positions, kv_cache, meta, rotary)
        return h + self.mlp(self.post_attention_layernorm(h))

    def forward_residual(
        self, x, residual, positions, kv_cache, meta: AttentionMetadata, rotary: RotaryEmbedding
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same layer with the residual stream carried apart: (x, residual) -> (mlp out, residual).

        The residual adds ride in the norms' kernels (`RMSNorm.add_forward`); `x + residual` of the
        output equals `forward` of the input.
        """
        if residual is None:
            normed, residual = self.input_layernorm(x), x
        else:
            normed, residual = self.input_layernorm.add_forward(x, residual)
        attn = self.self_attn(normed, positions, kv_cache, meta, rotary)
        normed, residual = self.post_attention_layernorm.add_forward(attn, residual)
        return self.mlp(normed), residual


class LlamaStage(nn.Module):
    """Layers [layer_range.start, layer_range.end) of a LLaMA-family model.

    Parameter names: `embed_tokens.weight` (first stage), `layers.<local index>.*` with local
    indices renumbered from 0, `norm.weight` and `lm_head.weight` (last stage).
    """

    def __init__(self, config: ModelConfig, layer_range: LayerRange, max_positions: int) -> None:
        super().__init__()
        layer_range.validate(config.num_layers)
        self.config, self.layer_range = config, layer_range
        self.is_first = layer_range.is_first()
        self.is_last = layer_range.is_last(config.num_layers)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if self.is_first else None
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(layer_range.num_layers))
        self.rotary = RotaryEmbedding(config.head_dim, max_positions, config.rope_theta, config.rope_scaling)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if self.is_last else None
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False) if self.is_last else None

    def forward(
        self,
        inputs: torch.Tensor,  # [T] int64 token ids (first stage) or [T, H] hidden states
        positions: torch.Tensor,  # [T] int64
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],  # one (k, v) per local layer
        meta: AttentionMetadata,
        skip_layers: int = 0,  # run only local layers [skip_layers, end) (partial overlap: layer skip)
    ) -> torch.Tensor:  # [T, H]
        if self.embed_tokens is not None and skip_layers == 0:
            assert inputs.dim() == 1, "the first stage takes token ids [T]"
            x = self.embed_tokens(inputs)
        else:
            assert inputs.dim() == 2, "a later stage (or a skipping one) takes hidden states [T, H]"
            x = inputs
        layers, caches = self.layers[skip_layers:], kv_caches[skip_layers:]
        if not self.layers[0].input_layernorm.fused:
            for layer, kv_cache in zip(layers, caches, strict=True):
                x = layer(x, positions, kv_cache, meta, self.rotary)
            return x
        residual = None
        for layer, kv_cache in zip(layers, caches, strict=True):
            x, residual = layer.forward_residual(x, residual, positions, kv_cache, meta, self.rotary)
        return x + residual

    def use_fused_kernels(self, enabled: bool, skinny_gemm: bool | None = None) -> None:
        """Switch RMSNorm (+ residual add), SwiGLU and RoPE + cache write to the Triton kernels, and
        the projections of few-row steps to the measured split-K kernels (CUDA, 16-bit)."""
        skinny = enabled if skinny_gemm is None else skinny_gemm
        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = enabled
            if isinstance(module, Linear):
                module.skinny = skinny

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] float32
        assert self.norm is not None and self.lm_head is not None, "only the last stage has a head"
        return self.lm_head(self.norm(hidden), out_dtype=torch.float32)

    def hf_weight_names(self) -> dict[str, list[str]]:
        """For each parameter name, the Hugging Face tensors it is made of (concatenated on dim 0)."""
        names: dict[str, list[str]] = {}
        if self.is_first:
            names["embed_tokens.weight"] = ["model.embed_tokens.weight"]
        for local in range(self.layer_range.num_layers):
            prefix, hf = f"layers.{local}.", f"model.layers.{self.layer_range.start + local}."
            attn = hf + "self_attn."
            names[prefix + "self_attn.qkv_proj.weight"] = [attn + f"{p}_proj.weight" for p in "qkv"]
            if self.config.attention_bias:
                names[prefix + "self_attn.qkv_proj.bias"] = [attn + f"{p}_proj.bias" for p in "qkv"]
            names[prefix + "self_attn.o_proj.weight"] = [attn + "o_proj.weight"]
            names[prefix + "mlp.gate_up_proj.weight"] = [
                hf + "mlp.gate_proj.weight",
                hf + "mlp.up_proj.weight",
            ]
            names[prefix + "mlp.down_proj.weight"] = [hf + "mlp.down_proj.weight"]
            for norm in ("input_layernorm", "post_attention_layernorm"):
                names[prefix + f"{norm}.weight"] = [hf + f"{norm}.weight"]
        if self.is_last:
            names["norm.weight"] = ["model.norm.weight"]
            head = "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"
            names["lm_head.weight"] = [head]
        return names
