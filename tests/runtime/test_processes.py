"""`helix.runtime.processes`: how a process deployment's sockets are addressed and secured."""

from __future__ import annotations

import os
import stat

from helix.runtime.processes import ProcessDeployment
from helix.runtime.transport import IPC_PREFIX


def test_a_deployment_binds_private_ipc_sockets_without_keys_and_removes_them():
    deployment = ProcessDeployment([])
    assert deployment.host.startswith(IPC_PREFIX) and deployment.keys is None
    directory = deployment.host[len(IPC_PREFIX) :]
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    deployment.shutdown()
    assert not os.path.exists(directory)


def test_without_ipc_a_deployment_uses_curve_on_loopback():
    deployment = ProcessDeployment([], ipc=False)
    assert deployment.host == "127.0.0.1" and deployment.keys is not None
    deployment.shutdown()
