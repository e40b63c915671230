"""Per-request state of the single-process engine (`LLMEngine`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from helix.engine.sampling_params import SamplingParams

#: Stands in an output list for a token still being computed (asynchronous scheduling).
PENDING_TOKEN = -1


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(Enum):
    STOP = "stop"  # a stop token (or EOS) was produced
    LENGTH = "length"  # max_tokens reached, or the context window is full
    CANCELLED = "cancelled"


@dataclass(slots=True, eq=False)  # identity semantics: list membership stays cheap
class Sequence:
    """One request: its prompt, generated tokens and how much of it has KV in the cache.

    `num_computed_tokens` counts tokens whose K/V are in every stage's cache; the tokens still to
    compute are `token_ids[num_computed_tokens:]`.
    """

    seq_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int = 0  # signed 64-bit sampling seed (see `helix.engine.sampler`)
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[dict[int, float]] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    finish_reason: FinishReason | None = None
    last_step_pending: bool = False  # its pending token ends it (length): schedule it no more

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without building the whole list."""
        num_prompt = len(self.prompt_token_ids)
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : end - num_prompt]
        return self.token_ids[start:end]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens whose K/V are not yet computed (the whole prompt first, then one per decode)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """What a request produced so far (returned by `LLMEngine.step` and `generate`)."""

    seq_id: int
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    output_logprobs: list[dict[int, float]] | None
    finish_reason: FinishReason | None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
