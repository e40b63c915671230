"""The OpenAI error envelope ``{"error": {message, type, param, code}}`` and the handlers that emit it."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from helix.errors import HelixInputError
from helix.runtime.coordinator import QueueFullError
from helix.server.logs import error_log


class APIError(Exception):
    """An error answered with the OpenAI envelope and `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code
        self.headers = headers or {}


def envelope(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(
        envelope(exc.message, exc.kind, exc.param, exc.code), status_code=exc.status, headers=exc.headers
    )


def from_input_error(exc: HelixInputError) -> APIError:
    text = exc.problem + (f" (fix: {exc.fix})" if exc.fix else "")
    return APIError(400, text, "invalid_request_error", exc.field or None)


def from_queue_full(exc: QueueFullError) -> APIError:
    return APIError(
        429,
        str(exc),
        "rate_limit_exceeded",
        code="queue_full",
        headers={"Retry-After": str(max(1, round(exc.retry_after_s)))},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        if exc.status >= 500:
            error_log.error(
                "request %s %s: %d %s",
                getattr(request.state, "request_id", "-"),
                request.url.path,
                exc.status,
                exc,
            )
        return error_response(exc)

    @app.exception_handler(HelixInputError)
    async def _input(_: Request, exc: HelixInputError) -> JSONResponse:
        return error_response(from_input_error(exc))

    @app.exception_handler(QueueFullError)
    async def _full(_: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(from_queue_full(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), kind))


def validation_error(exc: RequestValidationError) -> APIError:
    """A 400 naming the first bad field; a body that is not JSON gets where it breaks, no param."""
    first = exc.errors()[0] if exc.errors() else {}
    kind, loc = first.get("type", ""), tuple(first.get("loc", ()))
    if kind == "json_invalid":
        at = loc[1] if len(loc) > 1 else "?"
        problem = (first.get("ctx") or {}).get("error", "invalid JSON")
        return APIError(400, f"the request body is not valid JSON ({problem} at character {at})")
    param = ".".join(str(p) for p in loc[1:] if not _is_union_tag(p)) or None
    message = first.get("msg", "invalid request")
    if param is None:
        if kind == "missing":
            return APIError(400, "the request body is missing: send a JSON object")
        return APIError(400, f"the request body: {message}; send a JSON object")
    return APIError(400, f"{param}: {message}", "invalid_request_error", param)


def _is_union_tag(part) -> bool:
    """Pydantic's union-branch names in error locations (``str``, ``list[int]``, ...)."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)
