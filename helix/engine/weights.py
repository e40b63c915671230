"""Weight sources (safetensors directories, in-memory state dicts) and filling a stage from them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from helix.engine.model.llama import LlamaStage
from helix.errors import HelixInputError


class WeightSource(Protocol):
    """Named tensors in Hugging Face naming (`model.layers.3.self_attn.q_proj.weight`, ...)."""

    where: str

    def names(self) -> set[str]: ...

    def get(self, name: str) -> torch.Tensor: ...


class SafetensorsSource:
    """A directory of `*.safetensors` (with or without `model.safetensors.index.json`).

    Each file is opened once (memory-mapped by safetensors) and kept open until `close()`; `get`
    reads one tensor from the open file. Only the headers are read up front.
    """

    def __init__(self, model_dir: Path) -> None:
        self.where = str(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {name: model_dir / file for name, file in weight_map.items()}
        else:
            self._file_of = {}
            for file in sorted(model_dir.glob("*.safetensors")):
                with safe_open(file, framework="pt") as handle:
                    self._file_of.update(dict.fromkeys(handle.keys(), file))
        if not self._file_of:
            raise HelixInputError("no safetensors weights found", where=self.where)
        self._handles: dict[Path, object] = {}

    def names(self) -> set[str]:
        return set(self._file_of)

    def get(self, name: str) -> torch.Tensor:
        path = self._file_of[name]
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = safe_open(path, framework="pt")
        return handle.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()


class StateDictSource:
    """An in-memory mapping of Hugging Face names to tensors (e.g. a transformers model's state dict)."""

    def __init__(self, tensors: dict[str, torch.Tensor], where: str = "state dict") -> None:
        self._tensors, self.where = tensors, where

    def names(self) -> set[str]:
        return set(self._tensors)

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]


@torch.no_grad()
def load_weights(model: LlamaStage, source: WeightSource) -> None:
    """Copy the stage's tensors from `source` (fusing q/k/v and gate/up); raise on missing ones."""
    wanted = model.hf_weight_names()
    available = source.names()
    missing = sorted({n for parts in wanted.values() for n in parts} - available)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise HelixInputError(
            f"checkpoint lacks {len(missing)} tensors of layers "
            f"[{model.layer_range.start}, {model.layer_range.end}): {shown}",
            where=source.where,
            fix="use a complete checkpoint of this model, or a layer range it covers",
        )
    params = dict(model.named_parameters())
    for name, parts in wanted.items():
        tensor = torch.cat([source.get(p) for p in parts], dim=0) if len(parts) > 1 else source.get(parts[0])
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise HelixInputError(
                f"tensor {parts[0]} has shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}",
                where=source.where,
                fix="check that config.json matches the weights",
            )
        params[name].copy_(tensor)


@torch.no_grad()
def init_random_weights(model: LlamaStage, seed: int, std: float = 0.02) -> None:
    """Fill projections and embeddings with N(0, std), norms with 1 (for benchmarks and tests)."""
    first = next(model.parameters())
    generator = torch.Generator(device=first.device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("layernorm.weight") or name == "norm.weight":
            param.fill_(1.0)
        else:
            param.normal_(0.0, std, generator=generator)
