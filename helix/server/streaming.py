"""Server-sent events shared by both endpoints, and the model-name check."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from helix.server.errors import APIError, envelope
from helix.server.generation import Generation


def check_model(runtime, model: str) -> None:
    """404 unless `model` is the served model's name."""
    if model != runtime.model_name:
        raise APIError(
            404,
            f"The model `{model}` does not exist; this server serves `{runtime.model_name}`",
            "not_found_error",
            "model",
            "model_not_found",
        )


async def sse_stream(
    gen: Generation, chunk: Callable[[str, str | None], dict], include_usage: bool
) -> AsyncIterator[str]:
    """``data: {chunk}`` per delta, an optional usage chunk, then ``data: [DONE]``; errors as an envelope.
    A client that goes away cancels the request (the generator is closed, `finally` runs)."""
    try:
        last: dict | None = None
        async for delta in gen.deltas():
            last = chunk(delta.text, delta.finish_reason)
            yield f"data: {json.dumps(last)}\n\n"
        if include_usage and last is not None:
            usage = {**last, "choices": [], "usage": gen.usage}
            yield f"data: {json.dumps(usage)}\n\n"
    except APIError as exc:
        yield f"data: {json.dumps(envelope(exc.message, exc.kind, exc.param, exc.code))}\n\n"
    finally:
        gen.close()
    yield "data: [DONE]\n\n"
