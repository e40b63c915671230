"""`POST /v1/chat/completions`: chat with the tokenizer's chat template, streamed or whole."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from helix.errors import HelixInputError
from helix.server.generation import Generation
from helix.server.protocol import ChatCompletionRequest
from helix.server.streaming import check_model, sse_stream

router = APIRouter()


def chat_prompt_ids(tokenizer, body: ChatCompletionRequest) -> list[int]:
    """Token ids of the conversation through the tokenizer's chat template, ready for the reply."""
    if not body.messages:
        raise HelixInputError("messages is empty", field="messages", fix="send at least one message")
    if getattr(tokenizer, "chat_template", None) is None:
        raise HelixInputError(
            "this model's tokenizer has no chat template",
            field="messages",
            fix="use /v1/completions with a plain prompt",
        )
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # BatchEncoding in newer transformers
        ids = list(ids["input_ids"])
    return [int(i) for i in ids]


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    check_model(state.runtime, body.model)
    params = body.sampling_params(logprobs=body.chat_logprobs())
    prompt_ids = chat_prompt_ids(state.runtime.tokenizer, body)
    gen = Generation(state.runtime, state.metrics, "chat", prompt_ids, params, body.stop_strings())
    rid, created = f"chatcmpl-{request.state.request_id}", int(time.time())
    first = True

    def chunk(text: str, reason: str | None) -> dict:
        nonlocal first
        delta = {"role": "assistant", "content": text} if first else {"content": text}
        first = False
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(sse_stream(gen, chunk, include_usage), media_type="text/event-stream")
    try:
        text, reason = await gen.collect(request)
    finally:
        gen.close()
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
        ],
        "usage": gen.usage,
    }
