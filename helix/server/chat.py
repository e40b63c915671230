"""`POST /v1/chat/completions`: chat with the tokenizer's chat template (n choices, logprobs)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from helix.errors import HelixInputError
from helix.server.choices import (
    TokenTexts,
    chat_logprobs,
    collect_all,
    kept_tokens,
    sse_choices,
    start_generations,
    usage,
)
from helix.server.protocol import ChatCompletionRequest
from helix.server.streaming import check_model, choice_params, note_unknown_fields

router = APIRouter()


def chat_prompt_ids(tokenizer, body: ChatCompletionRequest) -> list[int]:
    """Token ids of the conversation through the tokenizer's chat template, ready for the reply."""
    if not body.messages:
        raise HelixInputError("messages is empty", field="messages", fix="send at least one message")
    messages = [{"role": m.role, "content": m.text(i)} for i, m in enumerate(body.messages)]
    if getattr(tokenizer, "chat_template", None) is None:
        raise HelixInputError(
            "this model's tokenizer has no chat template",
            field="messages",
            fix="use /v1/completions with a plain prompt",
        )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # BatchEncoding in newer transformers
        ids = list(ids["input_ids"])
    return [int(i) for i in ids]


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    note_unknown_fields(state, "/v1/chat/completions", body)
    check_model(state.runtime, body.model)
    logprobs = body.chat_logprobs()
    params = body.sampling_params(logprobs=logprobs)
    tokenizer = state.runtime.tokenizer
    prompt_ids = chat_prompt_ids(tokenizer, body)
    gens = start_generations(state, "chat", prompt_ids, choice_params(body, params), body.stop_strings())
    rid, created = f"chatcmpl-{request.state.request_id}", int(time.time())
    started = [False] * body.n

    if body.stream:

        def chunk(index: int, delta, first: int) -> dict:
            message = {"content": delta.text}
            if not started[index]:
                message = {"role": "assistant", **message}
                started[index] = True
            lp = (
                chat_logprobs(gens[index], tokenizer, first, delta.num_tokens)
                if logprobs is not None
                else None
            )
            choice = {"index": index, "delta": message, "logprobs": lp, "finish_reason": delta.finish_reason}
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [choice],
            }

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = sse_choices(gens, chunk, include_usage, None, request.state)
        return StreamingResponse(stream, media_type="text/event-stream")
    choices = []
    for choice in await collect_all(gens):
        lp = None
        if logprobs is not None:
            kept = kept_tokens(choice.gen, choice.text, TokenTexts(tokenizer, choice.gen.token_ids))
            lp = chat_logprobs(choice.gen, tokenizer, 0, kept)
        choices.append(
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": lp,
                "finish_reason": choice.finish_reason,
            }
        )
    out = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": choices,
    }
    out["usage"] = request.state.usage = usage(gens)
    return out
