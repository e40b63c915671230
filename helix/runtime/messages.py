"""What travels between the coordinator and the workers, and its wire encoding.

One `HopBatch` carries every request a sender forwards to one receiver after one step: per request a
`StageItem`, and for non-first stages the packed hidden states of all new tokens ([T, H], items in
order). The coordinator starts each iteration (prompt or one decode token) with the token ids for the
first stage of the request's route; the last stage samples and returns a `TokenResult` per request.

Encoding: `helix.engine.wire` — a versioned msgpack header and one raw buffer per tensor, driven by
these dataclasses' type hints (no pickle). A new message type is a dataclass of the field types the wire
supports, added to `WIRE_MESSAGES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from helix.engine.sampling_params import SamplingParams
from helix.engine.wire import Codec

COORDINATOR_HOP = "coordinator"


@dataclass(frozen=True, slots=True)
class StageItem:
    """One request's share of a step on one stage.

    `route` (worker names in order) and `sampling` come only with the prompt iteration; later stages
    remember them. `token_ids` is set only for the first stage. `admission` numbers the request's current
    admission (it grows with every admission, re-admissions after a preemption or re-route included):
    workers order preemption victims by it and ignore iterations of an older admission. With a
    `decode_budget` > 0 the route decodes on its own: its last stage sends each sampled token straight
    back to the first stage as the next iteration (besides the `TokenResult` to the coordinator) until
    that many tokens came out or the coordinator frees the request.

    Prefix caching: a prompt iteration with `prefix_ids` (its whole context) lets each stage address the
    prompt's KV blocks by hash. The route's first stage (the one given `token_ids`) starts the prompt past
    the leading blocks it has cached (`num_cached_tokens` grows, `num_new_tokens` shrinks, and only the
    new tokens' hidden states travel on); each later stage must hold those blocks too, or it reports a
    `prefix_miss` and the coordinator re-admits the request without prefix matching.
    """

    seq_id: int
    num_cached_tokens: int
    num_new_tokens: int
    token_ids: tuple[int, ...] | None = None
    route: tuple[str, ...] | None = None
    sampling: SamplingParams | None = None
    stage_done_s: tuple[float, ...] = ()  # prompt only: wall time each earlier stage finished it
    penalty_prompt_ids: tuple[int, ...] | None = None  # prompt only, with a repetition penalty
    admission: int = 0
    penalty_output_ids: tuple[int, ...] | None = None  # a resumed request's tokens so far, with penalties
    route_starts: tuple[int, ...] | None = None  # prompt only: first layer each hop runs (layer skip)
    decode_budget: int = 0  # prompt only: tokens the pipeline generates on its own (0: one per iteration)
    prefix_ids: tuple[int, ...] | None = None  # prompt only, with prefix caching: the whole context


@dataclass(slots=True)
class HopBatch:
    """Requests a sender forwards to one receiver after one step (or the coordinator's new iterations)."""

    items: list[StageItem]
    hidden: torch.Tensor | None = None  # [sum of num_new_tokens, H] for non-first stages
    sent_at_s: float = 0.0
    sender: str = ""  # worker name or COORDINATOR_HOP: batches from a fenced worker are dropped


@dataclass(frozen=True, slots=True)
class TokenResult:
    """A sampled token of one request (from the last stage), an error for it, or (`preempted`) the news
    that a worker dropped its iteration because it preempted the request's KV (see
    `helix.scheduling.preemption`): the coordinator re-queues it. `admission` as in `StageItem`."""

    seq_id: int
    token_id: int = -1
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    error: str | None = None
    stage_done_s: tuple[float, ...] = ()  # prompt only: wall time each stage finished it
    admission: int = 0
    penalty_output_ids: tuple[int, ...] | None = None  # a resumed request's tokens so far, with penalties
    preempted: bool = False
    prefix_miss: bool = False  # preempted because this stage lacks the prefix the first stage matched


@dataclass(slots=True)
class Control:
    """Non-data messages: ``free`` sequences (KV release; with `admissions`, one per sequence, only state of
    that admission or an older one is freed), ``fence`` workers declared dead (`names`: their late batches
    are dropped), ``stop`` the loop."""

    kind: str
    seq_ids: list[int] = field(default_factory=list)
    admissions: list[int] = field(default_factory=list)
    names: tuple[str, ...] = ()


@dataclass(slots=True)
class ResultBatch:
    """Tokens the last stage returns to the coordinator after one step."""

    worker: str
    results: list[TokenResult]


# Every type that may travel on a socket; a receiver drops frames of any other type.
WIRE_MESSAGES: tuple[type, ...] = (HopBatch, ResultBatch, Control)

CODEC = Codec(WIRE_MESSAGES)


def encode(message: Any) -> list[Any]:
    """Frames for `send_multipart`: the header, then each tensor's raw buffer (see `helix.engine.wire`)."""
    return CODEC.encode(message)


def decode(frames: Sequence[Any]) -> Any:
    """Inverse of `encode`; tensors come back on the CPU. Raises `WireError` for a malformed message."""
    return CODEC.decode(frames)
