"""One request's life on the HTTP side: submit to the coordinator, detokenize, stop strings, metrics.

Tokens arrive on the coordinator's thread and are handed to the event loop through an `asyncio.Queue`.
Text is detokenized incrementally (special tokens skipped; a trailing partial character or a possible
prefix of a stop string is held back until it is resolved). When a stop string appears, the text is cut
before it and the request is cancelled in the coordinator, which frees its KV on every worker; the same
happens when the client goes away (the caller's `finally` calls `close`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from helix.engine.sampling_params import SamplingParams
from helix.runtime.requests import ErrorEvent, FinishEvent, TokenEvent
from helix.server.errors import APIError
from helix.server.metrics import ServerMetrics


@dataclass(slots=True)
class Delta:
    """New text (maybe empty) and, on the last delta, the finish reason; `num_tokens`: tokens received
    when it was made (its tokens are those after the previous delta's count)."""

    text: str
    finish_reason: str | None = None
    num_tokens: int = 0


class IncrementalDetokenizer:
    """Text of a growing list of token ids, decoding only the last few tokens per step (linear, not
    quadratic): the text of window [prefix, end) minus that of [prefix, read) is what the newest
    tokens add; a trailing U+FFFD (an incomplete UTF-8 sequence) waits for the next token."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int | None = None, *, final: bool = False) -> None:
        if token_id is not None:
            self.ids.append(token_id)
        decode = self._tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)


class Generation:
    """Drive one request; iterate `deltas()` for text, then read `usage`."""

    def __init__(
        self,
        runtime,
        metrics: ServerMetrics,
        endpoint: str,
        prompt_ids: list[int],
        params: SamplingParams,
        stop: list[str],
    ) -> None:
        self._runtime = runtime
        self._metrics = metrics
        self._endpoint = endpoint
        self._detok = IncrementalDetokenizer(runtime.tokenizer)
        self._queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.prompt_ids = prompt_ids
        self._stop = stop
        self._ids: list[int] = []
        self._sent = 0
        self._done = False
        self._arrived = time.perf_counter()
        self._first: float | None = None
        self.logprobs: list[float | None] = []
        self.top_logprobs: list[dict[int, float] | None] = []
        self.seq_id = runtime.coordinator.submit(
            prompt_ids, params, lambda event: loop.call_soon_threadsafe(self._queue.put_nowait, event)
        )
        metrics.requests_total.labels(endpoint, "accepted").inc()

    @property
    def token_ids(self) -> list[int]:
        return self._ids

    @property
    def usage(self) -> dict[str, int]:
        n = len(self._ids)
        return {
            "prompt_tokens": len(self.prompt_ids),
            "completion_tokens": n,
            "total_tokens": len(self.prompt_ids) + n,
        }

    async def deltas(self) -> AsyncIterator[Delta]:
        while not self._done:
            event = await self._queue.get()
            if isinstance(event, TokenEvent):
                self._on_token(event)
                delta, stopped = self._text_delta(final=False)
                if stopped:
                    self._finish("stop")
                    self._runtime.coordinator.cancel(self.seq_id)
                    yield Delta(delta, "stop", len(self._ids))
                    return
                if delta:
                    yield Delta(delta, None, len(self._ids))
            elif isinstance(event, FinishEvent):
                delta, _ = self._text_delta(final=True)
                reason = "stop" if event.reason == "cancelled" else event.reason
                self._finish(reason)
                yield Delta(delta, reason, len(self._ids))
            elif isinstance(event, ErrorEvent):
                self._done = True
                self._metrics.requests_total.labels(self._endpoint, "failed").inc()
                raise APIError(event.status, event.message, event.kind)

    async def collect(self) -> tuple[str, str]:
        """The whole text and the finish reason (non-streaming)."""
        parts, reason = [], "stop"
        async for delta in self.deltas():
            parts.append(delta.text)
            reason = delta.finish_reason or reason
        return "".join(parts), reason

    def close(self) -> None:
        """Cancel if still running (client gone); frees the request's KV on every worker."""
        if not self._done:
            self._done = True
            self._runtime.coordinator.cancel(self.seq_id)
            self._metrics.requests_total.labels(self._endpoint, "cancelled").inc()

    def _on_token(self, event: TokenEvent) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = now
            self._metrics.ttft_s.observe(now - self._arrived)
        self._ids.append(event.token_id)
        self._detok.push(event.token_id)
        self.logprobs.append(event.logprob)
        self.top_logprobs.append(event.top_logprobs)

    def _text_delta(self, final: bool) -> tuple[str, bool]:
        if final:
            self._detok.push(final=True)
        text = self._detok.text
        for stop in self._stop:
            at = text.find(stop, max(0, self._sent - len(stop)))
            if at >= 0:
                delta = text[self._sent : at] if at > self._sent else ""
                self._sent = max(self._sent, at)
                return delta, True
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):
                end -= 1
            hold = max((len(s) - 1 for s in self._stop), default=0)
            end = max(self._sent, end - hold)
        delta = text[self._sent : end]
        self._sent = end
        return delta, False

    def _finish(self, reason: str) -> None:
        self._done = True
        now = time.perf_counter()
        self._metrics.e2e_s.observe(now - self._arrived)
        if self._first is not None and len(self._ids) > 1:
            self._metrics.tpot_s.observe((now - self._first) / (len(self._ids) - 1))
        self._metrics.requests_total.labels(self._endpoint, f"finished_{reason}").inc()
        self._metrics.completion_tokens.inc(len(self._ids))


async def unless_disconnected(work: asyncio.Future, request) -> bool:
    """Wait for `work` or for the client of `request` to disconnect, whichever comes first; True when
    `work` finished. A client that disconnects is noticed at once (its ``http.disconnect`` message; the
    body is read, so nothing else can come) and `work` is cancelled."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work.done():
        return True
    work.cancel()
    return False
