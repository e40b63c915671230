"""Several choices per request (``n``) and log-probabilities in OpenAI's two shapes.

Each choice is its own `Generation` (its own coordinator request, seed `choice_seed(i)`); they run
concurrently. Log-probabilities: per generated token its text (the tokenizer's decoding of that one
token), its log-probability and the top-N alternatives; for /v1/completions also each token's offset
in the returned text. Tokens past a stop string that cut the text are left out, like their text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from helix.engine.sampling_params import SamplingParams
from helix.server.errors import APIError, envelope
from helix.server.generation import Delta, Generation
from helix.server.logs import error_log


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str
    finish_reason: str
    gen: Generation


def start_generations(state, endpoint: str, prompt_ids: list[int], params: list[SamplingParams], stop):
    """One `Generation` per choice; if one cannot start, the started ones are cancelled first."""
    gens: list[Generation] = []
    try:
        for p in params:
            gens.append(Generation(state.runtime, state.metrics, endpoint, prompt_ids, p, stop))
    except BaseException:
        close_all(gens)
        raise
    return gens


def close_all(gens: list[Generation]) -> None:
    for gen in gens:
        gen.close()


async def collect_all(gens: list[Generation]) -> list[Choice]:
    try:
        results = await asyncio.gather(*(g.collect() for g in gens))
    finally:
        close_all(gens)
    return [
        Choice(i, text, reason, g) for i, ((text, reason), g) in enumerate(zip(results, gens, strict=True))
    ]


def usage(gens: list[Generation]) -> dict[str, int]:
    """Prompt tokens once, completion tokens of every choice."""
    prompt = len(gens[0].prompt_ids)
    completion = sum(len(g.token_ids) for g in gens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def merged(gens: list[Generation]) -> AsyncIterator[tuple[int, Delta]]:
    """Deltas of all choices as they come, tagged with the choice index."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, gen: Generation) -> None:
        try:
            async for delta in gen.deltas():
                await queue.put((index, delta))
        except BaseException as exc:  # hand errors to the consumer
            await queue.put((index, exc))
        finally:
            await queue.put((index, done))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        close_all(gens)


async def sse_choices(
    gens: list[Generation],
    chunk: Callable[[int, Delta, int], dict],
    include_usage: bool,
    prefix: list[dict] | None = None,
    request_state=None,
) -> AsyncIterator[str]:
    """SSE: optional `prefix` chunks, one ``data:`` chunk per delta (`chunk(index, delta, first_token)`),
    an optional usage chunk, then ``data: [DONE]``; an error mid-stream becomes an error envelope.
    `request_state` (the request's ``state``) gets ``usage`` and ``stream_error`` for the access log."""
    seen = [0] * len(gens)
    last: dict | None = None
    try:
        for item in prefix or []:
            yield f"data: {json.dumps(item)}\n\n"
        async for index, delta in merged(gens):
            last = chunk(index, delta, seen[index])
            seen[index] = delta.num_tokens
            yield f"data: {json.dumps(last)}\n\n"
        if include_usage and last is not None:
            yield f"data: {json.dumps({**last, 'choices': [], 'usage': usage(gens)})}\n\n"
    except APIError as exc:
        if request_state is not None:
            request_state.stream_error = exc
        if exc.status >= 500:
            error_log.error(
                "request %s (stream): %d %s", getattr(request_state, "request_id", "-"), exc.status, exc
            )
        yield f"data: {json.dumps(envelope(exc.message, exc.kind, exc.param, exc.code))}\n\n"
    finally:
        close_all(gens)
        if request_state is not None:
            request_state.usage = usage(gens)
    yield "data: [DONE]\n\n"


class TokenTexts:
    """Per-token text and offsets of one generation, decoded once."""

    def __init__(self, tokenizer, ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = ids
        self._piece: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        if token_id not in self._piece:
            self._piece[token_id] = self.tokenizer.decode([token_id])
        return self._piece[token_id]

    def offsets(self, start: int = 0, end: int | None = None) -> list[int]:
        """Offset of the text of tokens [start, end) in the decoded output (special tokens skipped)."""
        end = len(self.ids) if end is None else end
        decode = self.tokenizer.decode
        return [len(decode(self.ids[:k], skip_special_tokens=True)) for k in range(start, end)]


def kept_tokens(gen: Generation, text: str, texts: TokenTexts) -> int:
    """How many tokens the returned `text` covers (all but a final EOS, unless a stop string cut it)."""
    ids = gen.token_ids
    full = texts.tokenizer.decode(ids, skip_special_tokens=True)
    if len(text) >= len(full):
        special = set(getattr(texts.tokenizer, "all_special_ids", ()))
        end = len(ids)
        while end and ids[end - 1] in special:  # a final EOS has no text: OpenAI leaves it out
            end -= 1
        return end
    return sum(1 for offset in texts.offsets() if offset < len(text)) or 0


def chat_logprobs(gen: Generation, tokenizer, start: int, end: int) -> dict:
    """``{"content": [...], "refusal": None}`` for tokens [start, end) of `gen`."""
    texts = TokenTexts(tokenizer, gen.token_ids)
    content = []
    for k in range(start, end):
        token = texts.piece(gen.token_ids[k])
        top = gen.top_logprobs[k] or {}
        content.append(
            {
                "token": token,
                "logprob": gen.logprobs[k],
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": (t := texts.piece(i)), "logprob": lp, "bytes": list(t.encode("utf-8"))}
                    for i, lp in top.items()
                ],
            }
        )
    return {"content": content, "refusal": None}


def completion_logprobs(gen: Generation, tokenizer, start: int, end: int, base_offset: int) -> dict:
    """``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` for tokens [start, end)."""
    texts = TokenTexts(tokenizer, gen.token_ids)
    offsets = texts.offsets(start, end)
    tokens, values, tops, where = [], [], [], []
    for k in range(start, end):
        chosen = gen.token_ids[k]
        tokens.append(texts.piece(chosen))
        values.append(gen.logprobs[k])
        top = {texts.piece(i): lp for i, lp in (gen.top_logprobs[k] or {}).items()}
        top.setdefault(texts.piece(chosen), gen.logprobs[k])
        tops.append(top)
        where.append(base_offset + offsets[k - start])
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": where}
