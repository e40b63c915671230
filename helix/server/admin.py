"""Admin routes: membership of the running deployment (`helix.runtime.elastic`).

``GET /admin/membership`` (members, placement, re-plan history), ``POST /admin/drain`` and
``POST /admin/join`` with ``{"node": NAME}``. They always need ``Authorization: Bearer <key>``: without
an API key configured (``helix serve --api-key``) they answer 403.
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from helix.errors import HelixInputError
from helix.server.errors import APIError

router = APIRouter(prefix="/admin")


class NodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str


def _authorize(request: Request) -> None:
    key = request.app.state.api_key
    if not key:
        raise APIError(
            403,
            "admin routes are disabled without an API key: start the server with --api-key",
            "permission_error",
            code="admin_disabled",
        )
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise APIError(401, "invalid or missing API key", "authentication_error", code="invalid_api_key")


def _elastic(request: Request):
    elastic = getattr(request.app.state.runtime, "elastic", None)
    if elastic is None:
        raise APIError(503, "this deployment has no elastic membership", "service_unavailable")
    return elastic


@router.get("/membership")
async def membership(request: Request):
    _authorize(request)
    return _elastic(request).status()


async def _change(request: Request, body: NodeRequest, kind: str):
    _authorize(request)
    elastic = _elastic(request)
    try:
        getattr(elastic, kind)(body.node)
    except HelixInputError as exc:
        raise APIError(400, str(exc), "invalid_request_error", param="node") from None
    return {"accepted": True, "kind": kind, "node": body.node}


@router.post("/drain")
async def drain(request: Request, body: NodeRequest):
    return await _change(request, body, "drain")


@router.post("/join")
async def join(request: Request, body: NodeRequest):
    return await _change(request, body, "join")
