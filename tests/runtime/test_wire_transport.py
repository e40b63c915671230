"""Sockets with CURVE: the deployment's peers get through; malformed frames and strangers are dropped and
logged with the peer, and the inbox keeps serving."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import stat
import time

import pytest
import torch
import zmq

from helix.runtime.keys import WireKeys
from helix.runtime.messages import Control, HopBatch, StageItem, encode
from helix.runtime.transport import IPC_PREFIX, Inbox, Wire, private_ipc_dir


def _collect(inbox: Inbox, count: int, timeout_s: float = 5.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        out.extend(inbox.recv(0.05))
    return out


@pytest.fixture()
def wires():
    keys = WireKeys.generate()
    server, client = Wire(keys, "worker w0"), Wire(keys, "sender")
    yield keys, server, client
    server.close()
    client.close()


def test_keyed_peers_deliver_messages(wires):
    _, server, client = wires
    inbox, outbox = server.inbox("127.0.0.1"), client.outbox()
    sent = [HopBatch([StageItem(1, 0, 2)], torch.randn(2, 4), 1.0), Control("free", [1])]
    for message in sent:
        outbox.send(inbox.address, message)
    got = _collect(inbox, 2)
    assert [type(m) for m in got] == [HopBatch, Control]
    assert torch.equal(got[0].hidden, sent[0].hidden)
    outbox.close()
    inbox.close()


def test_malformed_frames_from_a_peer_are_dropped_and_logged(wires, caplog):
    keys, server, client = wires
    inbox = server.inbox("127.0.0.1")
    raw = client.context.socket(zmq.PUSH)
    keys.make_client(raw)
    raw.connect(inbox.address)
    good = encode(Control("free", [5]))
    with caplog.at_level(logging.WARNING, logger="helix.wire"):
        raw.send(b"\x00garbage")
        raw.send_multipart([bytes(good[0])[:-2]])
        raw.send_multipart([bytes(good[0]), b"unexpected buffer"])
        raw.send_multipart(good)
        got = _collect(inbox, 1)
    assert got == [Control("free", [5])]
    assert inbox.dropped == {"127.0.0.1": 3}
    assert sum("dropped frame" in r.message and "127.0.0.1" in r.message for r in caplog.records) == 3
    raw.close(0)
    inbox.close()


def test_strangers_cannot_inject_frames(wires, caplog, tmp_path):
    keys, server, client = wires
    inbox = server.inbox("127.0.0.1")
    target = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    stranger = zmq.Context()
    with caplog.at_level(logging.WARNING, logger="helix.wire"):
        plain = stranger.socket(zmq.PUSH)  # no keys at all
        plain.connect(inbox.address)
        for _ in range(50):
            plain.send(pickle.dumps(Exploit()), flags=zmq.NOBLOCK)
        foreign = stranger.socket(zmq.PUSH)  # knows the server key, has its own client key
        public, secret = zmq.curve_keypair()
        foreign.curve_serverkey = keys.server_public.encode()
        foreign.curve_publickey, foreign.curve_secretkey = public, secret
        foreign.connect(inbox.address)
        foreign.send_multipart(encode(Control("stop")))
        host, port = inbox.address.removeprefix("tcp://").split(":")
        with socket.create_connection((host, int(port))) as sock:  # raw bytes, not even ZMTP
            sock.sendall(os.urandom(4096))
        assert _collect(inbox, 1, timeout_s=1.5) == []
        outbox = client.outbox()
        outbox.send(inbox.address, Control("free", [9]))  # the inbox still serves its peers
        assert _collect(inbox, 1) == [Control("free", [9])]
        outbox.close()
    assert not target.exists()
    assert inbox.handshake_failures >= 1
    assert server.rejected_peers.get("127.0.0.1", 0) >= 1
    assert any("rejected peer 127.0.0.1" in r.message for r in caplog.records)
    stranger.destroy(linger=0)
    inbox.close()


def test_binding_beyond_loopback_needs_keys():
    wire = Wire(None, "coordinator")
    with pytest.raises(ValueError, match="without CURVE keys"):
        wire.inbox("10.0.0.1", "0.0.0.0")
    wire.inbox("127.0.0.1").close()
    wire.close()


def test_keys_are_not_printed():
    keys = WireKeys.generate()
    assert keys.server_secret not in repr(keys) and keys.client_secret not in repr(keys)


def test_private_ipc_sockets_deliver_messages_without_keys():
    host = private_ipc_dir()
    directory = host[len(IPC_PREFIX) :]
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    server, client = Wire(None, "worker w0"), Wire(None, "sender")
    inbox, outbox = server.inbox(host), client.outbox()
    assert inbox.address.startswith(host + "/")
    sent = HopBatch([StageItem(1, 0, 2)], torch.randn(2, 4), 1.0)
    outbox.send(inbox.address, sent)
    got = _collect(inbox, 1)
    assert len(got) == 1 and torch.equal(got[0].hidden, sent.hidden)
    outbox.close()
    inbox.close()
    server.close()
    client.close()
    shutil.rmtree(directory)


def test_ipc_directory_others_may_enter_needs_keys(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    wire = Wire(None, "coordinator")
    with pytest.raises(ValueError, match="without CURVE keys"):
        wire.inbox(f"{IPC_PREFIX}{shared}")
    wire.close()
