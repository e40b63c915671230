"""`helix profile` and the profiler: Helix's table format, merging, capacity tables."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from helix.cli.profile_cmd import register
from helix.engine import ModelConfig
from helix.engine.profile_io import write_profile
from helix.engine.profiler import ProfileOptions, capacity_tables, profile_model

from .conftest import TinyModel, tiny_llama_config

QUICK = ProfileOptions(
    prompt_tokens=(250, 500),
    decode_batches=(2, 4),
    decode_context_tokens=100,
    num_repeats=1,
    min_kv_tokens=1000,
)


def _rows(path):
    return [tuple(float(x) for x in line.split(",")) for line in path.read_text().splitlines()]


def test_profile_writes_helix_tables_and_merges(tmp_path):
    config = ModelConfig.from_hf_dict(tiny_llama_config().to_dict())
    result = profile_model(config, torch.device("cpu"), torch.float32, QUICK)
    tables_path = tmp_path / "profile_tables.json"
    tables_path.write_text(json.dumps({"llama2_70b": {"a100": {"max_layers": 12}}}))
    write_profile(tmp_path, "tiny", "cpu", result)
    prompt = _rows(tmp_path / "tiny" / "cpu" / "prompt_bs2time.csv")
    decode = _rows(tmp_path / "tiny" / "cpu" / "decode_bs2time.csv")
    assert prompt[0] == (0, 0) and [r[0] for r in prompt] == [0, 250, 500] and prompt[1][1] > 0
    assert decode[0] == (0, 0) and [r[0] for r in decode] == [0, 2, 4]
    tables = json.loads(tables_path.read_text())
    assert tables["llama2_70b"]["a100"]["max_layers"] == 12  # merged, not replaced
    entry = tables["tiny"]["cpu"]
    assert entry["machine_type"] == "CPU" and entry["max_layers"] == 6
    assert list(entry["kv_blocks_by_layers"]) == [str(k) for k in range(1, 7)]
    blocks = list(entry["kv_blocks_by_layers"].values())
    assert blocks == sorted(blocks, reverse=True)
    assert set(entry["decode_max_tokens_by_layers"]) == set(entry["prompt_max_requests_by_layers"])


def test_capacity_tables_follow_memory(tiny_llama: TinyModel):
    config = tiny_llama.config
    per_layer = config.layer_param_count() * 2
    block = 16 * config.kv_bytes_per_token_per_layer(2)
    total = int((10 * per_layer + 10 * 1000 * block) / 0.9)
    kv, prompt, decode = capacity_tables(config, torch.bfloat16, QUICK, total, 0)
    assert kv[1] == pytest.approx((10 * per_layer + 10000 * block - per_layer) // block, abs=1)
    assert max(kv) == 6 and all(prompt[k] >= 1 and decode[k] >= 1 for k in kv)


def test_profile_command(tmp_path, tiny_llama: TinyModel):
    tiny_llama.hf.config.save_pretrained(tmp_path / "model")
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    args = [
        "profile",
        "-m",
        str(tmp_path / "model"),
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "out"),
        "--max-prompt-tokens",
        "250",
        "--max-decode-batch",
        "2",
        "--decode-context",
        "64",
        "--repeats",
        "1",
        "--model-key",
        "tiny",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "tiny" / "cpu" / "decode_bs2time.csv").is_file()
    bad = CliRunner().invoke(app, args[:5] + ["--device", "tpu"])
    assert bad.exit_code != 0
