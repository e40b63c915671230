"""The server's two logs: one access line per request, and the cause of every 5xx.

``helix.server.access`` (INFO): ``request_id route status prompt_tokens completion_tokens latency_ms``,
written when the response (streamed bodies included) has been sent. ``helix.server.error`` (ERROR): the
request id, route and cause of each 5xx, with the traceback of unexpected exceptions.
"""

from __future__ import annotations

import logging
import sys

access_log = logging.getLogger("helix.server.access")
error_log = logging.getLogger("helix.server.error")


def access_line(
    request_id: str, method: str, route: str, status: int, usage: dict | None, latency_s: float
) -> str:
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return (
        f"request_id={request_id} method={method} route={route} status={status} "
        f"prompt_tokens={prompt} completion_tokens={completion} latency_ms={latency_s * 1e3:.1f}"
    )


def configure_server_logs(level: int = logging.INFO) -> None:
    """Send ``helix.server`` records to stderr (idempotent; `helix serve` calls it)."""
    logger = logging.getLogger("helix.server")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # one line per record, whatever the root logger has
    logger.setLevel(level)
