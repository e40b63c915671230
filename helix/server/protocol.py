"""Request bodies of the OpenAI API we serve, their checks, and their translation to `SamplingParams`.

Every field OpenAI or vLLM define is either implemented or refused with a 400 that names it (`REFUSED`
lists the refusals and why); a field neither knows is ignored and logged once per server (`unknown`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from helix.engine.sampler import to_signed_seed
from helix.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from helix.errors import HelixInputError

DEFAULT_MAX_TOKENS = 256
MAX_CHOICES = 16
MAX_STOP_STRINGS = 4
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions

#: Fields we do not implement: refused with a 400 naming them when given a value that asks for them.
REFUSED = {
    "tools": "tool calls are not supported",
    "tool_choice": "tool calls are not supported",
    "functions": "function calls are not supported",
    "function_call": "function calls are not supported",
    "logit_bias": "logit_bias is not supported",
    "suffix": "suffix (insertion) is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "guided_json": "guided decoding is not supported",
    "guided_regex": "guided decoding is not supported",
    "guided_choice": "guided decoding is not supported",
    "guided_grammar": "guided decoding is not supported",
}
#: Fields accepted without effect on generation (bookkeeping only).
ACCEPTED_NO_EFFECT = ("user", "metadata", "store", "service_tier", "parallel_tool_calls")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None)
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    best_of: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    response_format: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    parallel_tool_calls: bool | None = None

    def unknown_fields(self) -> list[str]:
        """Fields neither OpenAI's API (as served here) nor `REFUSED` know."""
        return sorted(k for k in (self.model_extra or {}) if k not in REFUSED)

    def check_refused(self) -> None:
        """400 naming the first field that asks for something not implemented."""
        extra = self.model_extra or {}
        for name, why in REFUSED.items():
            value = extra.get(name)
            if value not in (None, "", [], {}):
                raise HelixInputError(why, field=name, fix=f"remove {name!r} from the request")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            raise HelixInputError(
                f"response_format {self.response_format.get('type')!r} is not supported",
                field="response_format",
                fix='remove response_format or use {"type": "text"}',
            )
        if self.best_of is not None and self.best_of != self.n:
            raise HelixInputError(
                f"best_of={self.best_of} (ranking several samples) is not supported",
                field="best_of",
                fix="leave best_of out or set it equal to n",
            )

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def choice_seed(self, index: int) -> int | None:
        """The seed of choice `index`: the request's seed for choice 0, a distinct derived one after."""
        if self.seed is None or index == 0:
            return self.seed
        return to_signed_seed(self.seed * 6364136223846793005 + 1442695040888963407 * index)

    def sampling_params(self, logprobs: int | None = None) -> SamplingParams:
        """Validated `SamplingParams` of choice 0; bad values raise `HelixInputError` (HTTP 400)."""
        self.check_refused()
        if not 1 <= self.n <= MAX_CHOICES:
            raise HelixInputError(
                f"n={self.n} is out of range", field="n", fix=f"use 1 <= n <= {MAX_CHOICES}"
            )
        if not 0.0 <= self.temperature <= 2.0:
            raise HelixInputError(
                f"temperature {self.temperature} is outside [0, 2]",
                field="temperature",
                fix="use 0 <= temperature <= 2",
            )
        field = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if max_tokens < 1:
            raise HelixInputError(f"{field} {max_tokens} must be >= 1", field=field)
        if self.top_k < 0:
            raise HelixInputError(f"top_k {self.top_k} must be >= 0", field="top_k")
        if len(self.stop_strings()) > MAX_STOP_STRINGS:
            raise HelixInputError(f"at most {MAX_STOP_STRINGS} stop sequences", field="stop")
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            max_tokens=max_tokens,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
        )


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False

    def completion_logprobs(self) -> int | None:
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_COMPLETION_LOGPROBS:
            raise HelixInputError(
                f"logprobs {self.logprobs} is out of range",
                field="logprobs",
                fix=f"use 0 <= logprobs <= {MAX_COMPLETION_LOGPROBS}",
            )
        if self.echo and self.logprobs is not None:
            raise HelixInputError(
                "echo with logprobs (log-probabilities of the prompt tokens) is not supported",
                field="echo",
                fix="drop echo or logprobs",
            )
        return self.logprobs

    def prompt_input(self, vocab_size: int) -> str | list[int]:
        """One prompt: text, or token ids each in [0, vocab_size)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            if len(prompt) != 1:
                raise HelixInputError(
                    "batched prompts are not supported", field="prompt", fix="send one prompt per request"
                )
            prompt = prompt[0]
        if isinstance(prompt, list):
            bad = [t for t in prompt if not 0 <= t < vocab_size]
            if bad:
                raise HelixInputError(
                    f"token id {bad[0]} is outside the vocabulary",
                    field="prompt",
                    fix=f"use token ids in [0, {vocab_size})",
                )
        return prompt  # type: ignore[return-value]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        if not isinstance(self.content, list):
            return self.content or ""
        parts = []
        for k, part in enumerate(self.content):
            kind = part.get("type")
            if kind != "text" or not isinstance(part.get("text"), str):
                raise HelixInputError(
                    f"content part of type {kind!r} is not supported (this model reads text only)",
                    field=f"messages.{index}.content.{k}",
                    fix='send {"type": "text", "text": ...} parts only',
                )
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = None

    def chat_logprobs(self) -> int | None:
        if self.top_logprobs is not None:
            if not self.logprobs:
                raise HelixInputError(
                    "top_logprobs needs logprobs", field="top_logprobs", fix="set logprobs to true"
                )
            if not 0 <= self.top_logprobs <= MAX_LOGPROBS:
                raise HelixInputError(
                    f"top_logprobs {self.top_logprobs} is out of range",
                    field="top_logprobs",
                    fix=f"use 0 <= top_logprobs <= {MAX_LOGPROBS}",
                )
        return (self.top_logprobs or 0) if self.logprobs else None
