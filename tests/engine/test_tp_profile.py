"""`helix profile` of a node of two ranks: measured as one node, tensor parallel (gloo, CPU ranks)."""

from __future__ import annotations

import torch
import typer
from typer.testing import CliRunner

from helix.cli.profile_cmd import register
from helix.engine import ModelConfig
from helix.engine.profiler import ProfileOptions, _device_memory, capacity_tables
from helix.engine.tp.profile import profile_tp_node

from .conftest import tiny_llama_config

QUICK = ProfileOptions(
    prompt_tokens=(100,),
    decode_batches=(2,),
    decode_context_tokens=50,
    prompt_seq_tokens=100,
    num_layers_timed=1,
    num_repeats=1,
    min_kv_tokens=1000,
)


def test_a_two_rank_node_profiles_as_one_node_with_twice_the_kv():
    config = ModelConfig.from_hf_dict(tiny_llama_config().to_dict())
    result = profile_tp_node(config, ["cpu", "cpu"], torch.float32, QUICK)
    assert result.machine_type == "CPUx2"
    assert [t for t, _ in result.prompt_ms] == [0, 100] and result.prompt_ms[1][1] > 0
    assert [b for b, _ in result.decode_ms] == [0, 2] and result.decode_ms[1][1] > 0
    # each rank stores 1 of the 2 KV heads and half the weights: about twice one device's blocks
    total, used = _device_memory(torch.device("cpu"))
    one, _, _ = capacity_tables(config, torch.float32, QUICK, total, used)
    assert 1.5 < result.kv_blocks_by_layers[1] / one[1] < 2.5
    assert set(result.kv_blocks_by_layers) == set(range(1, config.num_layers + 1))


def test_profile_command_rejects_bad_node_devices(tmp_path):
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    for flags in (["--device", "cuda:0,0"], ["--device", "cpu", "--ranks", "0"]):
        result = CliRunner().invoke(app, ["profile", "-m", str(tmp_path), *flags])
        assert result.exit_code != 0
        assert "--device" in str(result.exception) or "--ranks" in str(result.exception)
