"""A request's state inside the coordinator, and the events streamed back for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from helix.engine.sampling_params import SamplingParams
from helix.scheduling.pipeline import Pipeline


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A new token of a request, with its log-probability when asked for."""

    token_id: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """The request ended: ``stop`` (stop token), ``length`` (max_tokens or context) or ``cancelled``."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The request failed (a worker died, its KV could not be allocated, ...). `status` is HTTP-like."""

    message: str
    status: int = 500
    kind: str = "server_error"


Event = TokenEvent | FinishEvent | ErrorEvent
EventSink = Callable[[Event], None]


@dataclass(slots=True)
class RequestState:
    """Everything the coordinator tracks for one request."""

    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    emit: EventSink
    arrived_s: float = field(default_factory=time.time)
    pipeline: Pipeline | None = None
    output_ids: list[int] = field(default_factory=list)
    cancelled: bool = False
    in_flight: bool = False
    first_token_s: float | None = None
    admission: int = 0  # number of the current admission (grows with each re-admission)
    preemptions: int = 0
    reroutes: int = 0
    stalls: int = 0
    sent_seq: int = 0  # the coordinator's send counter when its current iteration left
    lost_at_s: float | None = None  # when its pipeline was lost; cleared at its first resumed token
    decode_budget: int = 0  # tokens its current route generates on its own (`StageItem.decode_budget`)
    no_prefix: bool = False  # a later stage missed the prefix its first stage matched: prefill in full

    @property
    def route(self) -> tuple[str, ...]:
        assert self.pipeline is not None
        return self.pipeline.nodes

    @property
    def context_ids(self) -> list[int]:
        """Prompt + generated tokens: what a re-admission re-prefills."""
        return [*self.prompt_ids, *self.output_ids]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)
