"""`create_app(runtime)`: the FastAPI app (state in `app.state`, no module globals).

Routes: /v1/completions, /v1/chat/completions, /v1/models, /v1/models/{id}, /health (503 when a
worker is gone), /metrics (Prometheus). Every response carries `X-Request-Id` (the client's, or a new
one). With an API key, /v1 routes need ``Authorization: Bearer <key>``. Every request leaves one access
log line, every 5xx an error log line with its cause (`helix.server.logs`); an unexpected exception is
answered with a 500 envelope.
"""

from __future__ import annotations

import secrets
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from helix.server import chat, completions
from helix.server.errors import APIError, error_response, install_error_handlers
from helix.server.logs import access_line, access_log, error_log
from helix.server.metrics import ServerMetrics


def create_app(runtime, *, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="helix-serve", docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    app.state.metrics = ServerMetrics()
    app.state.api_key = api_key
    app.state.unknown_fields_logged = set()
    install_error_handlers(app)

    @app.middleware("http")
    async def request_id_and_auth(request: Request, call_next):
        request_id = request.state.request_id
        key = request.app.state.api_key
        if key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
                response = error_response(
                    APIError(
                        401, "invalid or missing API key", "authentication_error", code="invalid_api_key"
                    )
                )
                response.headers["X-Request-Id"] = request_id
                return response
        response = await call_next(request)
        response.headers["X-Request-Id"] = request_id
        return response

    @app.middleware("http")
    async def access_and_errors(request: Request, call_next):
        """Outermost (added last): an access line per request (when a streamed body ends); 500 on a crash."""
        started = time.perf_counter()
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            response = await call_next(request)
        except Exception as exc:  # the cause goes to the error log, the client gets an envelope
            error_log.exception("request %s %s: 500 %r", request.state.request_id, request.url.path, exc)
            response = error_response(APIError(500, f"internal error: {type(exc).__name__}", "server_error"))
            response.headers["X-Request-Id"] = request.state.request_id

        def log() -> None:
            status = response.status_code
            failed = getattr(request.state, "stream_error", None)
            if failed is not None:
                status = failed.status
            access_log.info(
                access_line(
                    request.state.request_id,
                    request.method,
                    request.url.path,
                    status,
                    getattr(request.state, "usage", None),
                    time.perf_counter() - started,
                )
            )

        body = getattr(response, "body_iterator", None)
        if body is None:
            log()
            return response

        async def logged_body():
            try:
                async for part in body:
                    yield part
            finally:
                log()

        response.body_iterator = logged_body()
        return response

    @app.get("/v1/models")
    async def models(request: Request):
        rt = request.app.state.runtime
        return {
            "object": "list",
            "data": [
                {"id": rt.model_name, "object": "model", "created": int(rt.started_at_s), "owned_by": "helix"}
            ],
        }

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        rt = request.app.state.runtime
        if model_id != rt.model_name:
            raise APIError(
                404,
                f"The model `{model_id}` does not exist; this server serves `{rt.model_name}`",
                "not_found_error",
                "model",
                "model_not_found",
            )
        return {"id": rt.model_name, "object": "model", "created": int(rt.started_at_s), "owned_by": "helix"}

    @app.get("/health")
    async def health(request: Request):
        rt = request.app.state.runtime
        snap = rt.coordinator.snapshot()
        gone = {**snap["dead_workers"], **rt.health.gone}
        body = {
            "status": "unhealthy" if gone else "ok",
            "workers": sorted(rt.deployment.actors),
            "workers_gone": gone,
            "waiting": snap["waiting"],
            "running": snap["running"],
            "uptime_s": round(time.time() - rt.started_at_s, 1),
        }
        return JSONResponse(body, status_code=503 if gone else 200)

    @app.get("/metrics")
    async def metrics(request: Request):
        data = request.app.state.metrics.render(request.app.state.runtime)
        return Response(data, media_type="text/plain; version=0.0.4")

    app.include_router(completions.router)
    app.include_router(chat.router)
    return app
