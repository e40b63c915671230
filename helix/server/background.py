"""The HTTP API of a running `ServingRuntime` in a thread of this process — for `helix serve --once`,
tests, benchmarks and notebooks. One home for starting uvicorn beside the caller's own work:

    with BackgroundServer(runtime, api_key=key) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key)

`port=0` (the default) takes a free port; `stop()` (or leaving the ``with``) ends the server thread.
"""

from __future__ import annotations

import socket
import threading
import time

START_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """uvicorn serving `create_app(runtime, api_key=...)` on `host:port` in a daemon thread."""

    def __init__(
        self,
        runtime,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        import uvicorn

        from helix.server.app import create_app

        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(
            create_app(runtime, api_key=api_key), host=host, port=self.port, log_level=log_level
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None  # why the server thread ended early (e.g. port taken)
        self._thread = threading.Thread(target=self._run, name="helix-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # uvicorn exits its thread with SystemExit when it cannot bind
            self.error = exc

    def start(self, timeout_s: float = START_TIMEOUT_S) -> BackgroundServer:
        """Start serving; returns once the server listens (raises `RuntimeError` after `timeout_s`)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                why = f": {self.error!r}" if self.error is not None else ""
                raise RuntimeError(f"the HTTP server on {self.url} did not start in {timeout_s:.0f} s{why}")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
