"""The in-process HTTP server helper: a free port, and a clear error when the port is taken."""

from __future__ import annotations

import socket

import pytest

from helix.server.background import BackgroundServer, free_port


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_taken_port_fails_start_with_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = BackgroundServer(None, port=taken.getsockname()[1], log_level="critical")
        with pytest.raises(RuntimeError, match="did not start"):
            server.start(timeout_s=10)
        assert not server._thread.is_alive()
