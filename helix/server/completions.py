"""`POST /v1/completions`: text completion, streamed as SSE or returned whole."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from helix.server.errors import APIError
from helix.server.generation import Generation
from helix.server.protocol import CompletionRequest
from helix.server.streaming import check_model, sse_stream

router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = request.app.state
    check_model(state.runtime, body.model)
    params = body.sampling_params(logprobs=body.logprobs)
    prompt = body.prompt_input()
    if isinstance(prompt, str):
        prompt_ids = state.runtime.tokenizer.encode(prompt)
    else:
        prompt_ids = list(prompt)
    if not prompt_ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    gen = Generation(state.runtime, state.metrics, "completions", prompt_ids, params, body.stop_strings())
    rid, created = f"cmpl-{request.state.request_id}", int(time.time())

    def chunk(text: str, reason: str | None) -> dict:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
        }

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse_stream(gen, chunk, include_usage), media_type="text/event-stream")
    try:
        text, reason = await gen.collect(request)
    finally:
        gen.close()
    out = chunk(text, reason)
    out["usage"] = gen.usage
    return out
