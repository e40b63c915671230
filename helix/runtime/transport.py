"""ZeroMQ sockets for the activation hot path; their addresses are exchanged through Ray.

Each worker (and the coordinator) binds one PULL socket (`Inbox`) on an ephemeral TCP port and reports
`host:port`; senders keep one PUSH socket per destination (`Outbox`). PUSH/PULL keeps per-pair order,
which the runtime relies on (a request's `free` never overtakes its last step on the same hop).
A socket is used by one thread only.
"""

from __future__ import annotations

from typing import Any

import zmq

from helix.runtime.messages import decode, encode


class Inbox:
    """A bound PULL socket; `recv` drains whatever arrived (waiting up to `timeout_s` for the first)."""

    def __init__(self, context: zmq.Context, host: str = "127.0.0.1", bind_host: str | None = None) -> None:
        self._socket = context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        port = self._socket.bind_to_random_port(f"tcp://{bind_host or host}")
        self.address = f"tcp://{host}:{port}"
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)

    def recv(self, timeout_s: float, max_messages: int = 1024) -> list[Any]:
        """Messages waiting now, blocking up to `timeout_s` for the first one."""
        if not self._poller.poll(int(timeout_s * 1000)):
            return []
        out: list[Any] = []
        while len(out) < max_messages:
            try:
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            out.append(decode(frames))
        return out

    def close(self) -> None:
        self._socket.close(0)


class Outbox:
    """PUSH sockets to known addresses, connected lazily."""

    def __init__(self, context: zmq.Context) -> None:
        self._context = context
        self._sockets: dict[str, zmq.Socket] = {}

    def send(self, address: str, message: Any) -> None:
        socket = self._sockets.get(address)
        if socket is None:
            socket = self._context.socket(zmq.PUSH)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, 0)
            socket.connect(address)
            self._sockets[address] = socket
        socket.send_multipart(encode(message), copy=False)

    def close(self) -> None:
        for socket in self._sockets.values():
            socket.close(0)
        self._sockets.clear()
