"""Peer authentication on the runtime's sockets: ZeroMQ CURVE keys per deployment and a ZAP handler.

Each deployment generates one `WireKeys` (two CURVE key pairs, libsodium through pyzmq) when it starts
and hands it to its workers through Ray's actor arguments (or the process deployment's pipe); it is
never written to disk or sent on a data socket. Every inbox is a CURVE server with the server pair;
every sender is a CURVE client with the client pair. A `ZapAuthenticator` in each receiving process
admits only the deployment's client key, so a process that lacks the keys can neither complete the
handshake (without the server key) nor get past ZAP (with any other client key), and every such
attempt is logged with the peer's address. The members of one deployment trust each other, so one
client pair for all of them is as strong as one per worker and needs no key exchange between workers.
Once a peer is admitted, CURVE also encrypts and authenticates every frame.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import zmq
from zmq.utils import z85

LOG = logging.getLogger("helix.wire")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)
ZAP_DOMAIN = b"helix"


@dataclass(frozen=True, slots=True)
class WireKeys:
    """The CURVE keys of one deployment (Z85 text, 40 characters each)."""

    server_public: str
    server_secret: str
    client_public: str
    client_secret: str

    @classmethod
    def generate(cls) -> WireKeys:
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(
            server_public.decode(), server_secret.decode(), client_public.decode(), client_secret.decode()
        )

    def __repr__(self) -> str:  # never print the secrets
        return f"WireKeys(server_public={self.server_public!r}, client_public={self.client_public!r})"

    def make_server(self, socket: zmq.Socket) -> None:
        """Make `socket` (before bind) a CURVE server that asks ZAP about every client."""
        socket.curve_server = True
        socket.curve_publickey = self.server_public.encode()
        socket.curve_secretkey = self.server_secret.encode()
        socket.zap_domain = ZAP_DOMAIN

    def make_client(self, socket: zmq.Socket) -> None:
        """Make `socket` (before connect) a CURVE client of the deployment's servers."""
        socket.curve_serverkey = self.server_public.encode()
        socket.curve_publickey = self.client_public.encode()
        socket.curve_secretkey = self.client_secret.encode()


class ZapAuthenticator:
    """Answers ZAP requests of one `zmq.Context`: only the deployment's client key is admitted.

    One per context (ZAP's endpoint is per context); start it before any server socket binds.
    `rejected` counts refusals per peer address.
    """

    def __init__(self, context: zmq.Context, keys: WireKeys, name: str = "") -> None:
        self._allowed = z85.decode(keys.client_public.encode())
        self._name = name
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(ZAP_ENDPOINT)
        self.rejected: dict[str, int] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="helix-zap", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stopped.is_set():
                if poller.poll(100):
                    self._answer(self._socket.recv_multipart())
        finally:
            self._socket.close(0)

    def _answer(self, request: list[bytes]) -> None:
        if len(request) < 6:
            LOG.warning("%s: malformed ZAP request dropped", self._name or "helix")
            self._socket.send_multipart(
                [b"1.0", request[1] if len(request) > 1 else b"", b"400", b"", b"", b""]
            )
            return
        version, request_id, domain, address, _identity, mechanism, *credentials = request
        ok = (
            version == b"1.0"
            and domain == ZAP_DOMAIN
            and mechanism == b"CURVE"
            and len(credentials) == 1
            and credentials[0] == self._allowed
        )
        if not ok:
            peer = address.decode(errors="replace")
            self.rejected[peer] = self.rejected.get(peer, 0) + 1
            LOG.warning(
                "%s: rejected peer %s: %s mechanism with a key that is not this deployment's",
                self._name or "helix",
                peer,
                mechanism.decode(errors="replace"),
            )
        status = (b"200", b"OK") if ok else (b"400", b"unknown key")
        self._socket.send_multipart([b"1.0", request_id, *status, b"", b""])
