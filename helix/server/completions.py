"""`POST /v1/completions`: text completion (n choices, echo, logprobs), streamed as SSE or whole."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from helix.server.choices import (
    TokenTexts,
    collect_all,
    completion_logprobs,
    kept_tokens,
    sse_choices,
    start_generations,
    usage,
)
from helix.server.errors import APIError
from helix.server.protocol import CompletionRequest
from helix.server.streaming import check_model, choice_params, note_unknown_fields

router = APIRouter()


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = request.app.state
    note_unknown_fields(state, "/v1/completions", body)
    check_model(state.runtime, body.model)
    logprobs = body.completion_logprobs()
    params = body.sampling_params(logprobs=logprobs)
    tokenizer = state.runtime.tokenizer
    prompt = body.prompt_input(len(tokenizer))
    prompt_ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if not prompt_ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    echo = "" if not body.echo else prompt if isinstance(prompt, str) else tokenizer.decode(prompt_ids)
    gens = start_generations(
        state, "completions", prompt_ids, choice_params(body, params), body.stop_strings()
    )
    rid, created = f"cmpl-{request.state.request_id}", int(time.time())

    def envelope(choices: list[dict]) -> dict:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
        }

    if body.stream:

        def chunk(index: int, delta, first: int) -> dict:
            lp = None
            if logprobs is not None:
                lp = completion_logprobs(gens[index], tokenizer, first, delta.num_tokens, len(echo))
            return envelope(
                [{"index": index, "text": delta.text, "logprobs": lp, "finish_reason": delta.finish_reason}]
            )

        prefix = [
            envelope([{"index": i, "text": echo, "logprobs": None, "finish_reason": None}])
            for i in range(body.n)
        ]
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = sse_choices(gens, chunk, include_usage, prefix if echo else None, request.state)
        return StreamingResponse(stream, media_type="text/event-stream")
    choices = []
    for choice in await collect_all(gens):
        lp = None
        if logprobs is not None:
            kept = kept_tokens(choice.gen, choice.text, TokenTexts(tokenizer, choice.gen.token_ids))
            lp = completion_logprobs(choice.gen, tokenizer, 0, kept, len(echo))
        choices.append(
            {
                "index": choice.index,
                "text": echo + choice.text,
                "logprobs": lp,
                "finish_reason": choice.finish_reason,
            }
        )
    out = envelope(choices)
    out["usage"] = request.state.usage = usage(gens)
    return out
