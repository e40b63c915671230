"""Request bodies of the OpenAI API subset we serve, and their translation to `SamplingParams`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from helix.engine.sampling_params import SamplingParams
from helix.errors import HelixInputError

DEFAULT_MAX_TOKENS = 256


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None)
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None
    ignore_eos: bool = False
    user: str | None = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def sampling_params(self, logprobs: int | None = None) -> SamplingParams:
        """Validated `SamplingParams`; bad values raise `HelixInputError` (HTTP 400)."""
        if self.n != 1:
            raise HelixInputError(f"n={self.n} is not supported", field="n", fix="use n=1")
        if not 0.0 <= self.temperature <= 2.0:
            raise HelixInputError(
                f"temperature {self.temperature} is outside [0, 2]",
                field="temperature",
                fix="use 0 <= temperature <= 2",
            )
        max_tokens = self.max_completion_tokens or self.max_tokens
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if max_tokens < 1:
            raise HelixInputError(f"max_tokens {max_tokens} must be >= 1", field="max_tokens")
        if self.top_k < 0:
            raise HelixInputError(f"top_k {self.top_k} must be >= 0", field="top_k")
        if len(self.stop_strings()) > 4:
            raise HelixInputError("at most 4 stop sequences", field="stop")
        params = SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            max_tokens=max_tokens,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )
        return params


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]
    logprobs: int | None = None
    echo: bool = False

    def prompt_input(self) -> str | list[int]:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise HelixInputError(
                    "batched prompts are not supported", field="prompt", fix="send one prompt per request"
                )
            return self.prompt[0]
        return self.prompt  # type: ignore[return-value]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = None

    def chat_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
