"""What travels between the coordinator and the workers, and its wire encoding.

One `HopBatch` carries every request a sender forwards to one receiver after one step: per prompt
iteration a `StageItem`, the decode iterations (one new token each, most of a busy route's traffic) in
the columns of one `DecodeRows`, and for non-first stages the packed hidden states of all new tokens
([T, H]: the items' rows in order, then one row per decode row). The coordinator starts each iteration
with the token ids for the first stage of the request's route; the last stage samples and returns a
`TokenResult` per prompt (and per error or preemption) and the sampled decode tokens in the columns of
one `SampledTokens`. Columns cost no Python object per request on either side of a socket: a decode
hop's host work does not grow by microseconds per request.

Encoding: `helix.engine.wire` — a versioned msgpack header and one raw buffer per tensor, driven by
these dataclasses' type hints (no pickle). A new message type is a dataclass of the field types the wire
supports, added to `WIRE_MESSAGES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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


def _column(values: list[int]) -> torch.Tensor:
    return torch.from_numpy(np.array(values, dtype=np.int64))


def _check_columns(kind: str, columns: dict[str, torch.Tensor | None]) -> int:
    """The common length of 1-D int64 columns (None: absent); ValueError naming the column otherwise."""
    length = None
    for name, column in columns.items():
        if column is None:
            continue
        if column.dtype != torch.int64 or column.dim() != 1:
            raise ValueError(
                f"{kind}.{name} must be a 1-D int64 tensor, got {column.dtype} {list(column.shape)}"
            )
        if length is None:
            length = column.shape[0]
        elif column.shape[0] != length:
            raise ValueError(f"{kind}.{name} has {column.shape[0]} rows, the other columns {length}")
    return length or 0


@dataclass(slots=True)
class DecodeRows:
    """Decode iterations in columns: request `seq_ids[i]` computes one new token after `context[i]` cached
    tokens, for its admission `admissions[i]` (as `StageItem.admission`); `token_ids` (first stage only)
    holds each row's input token. Each column is int64 [D]."""

    seq_ids: torch.Tensor
    context: torch.Tensor
    admissions: torch.Tensor
    token_ids: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_columns(
            "DecodeRows",
            {
                "seq_ids": self.seq_ids,
                "context": self.context,
                "admissions": self.admissions,
                "token_ids": self.token_ids,
            },
        )
        if self.seq_ids.shape[0] and self.context.numpy().min() < 1:
            raise ValueError("DecodeRows.context must be at least 1 (a decode row follows cached tokens)")

    def __len__(self) -> int:
        return self.seq_ids.shape[0]

    @classmethod
    def from_lists(
        cls, seq_ids: list[int], context: list[int], admissions: list[int], token_ids: list[int] | None = None
    ) -> DecodeRows:
        tokens = None if token_ids is None else _column(token_ids)
        return cls(_column(seq_ids), _column(context), _column(admissions), tokens)

    def as_items(self) -> list[StageItem]:
        """One `StageItem` per row (for readers that want objects; workers read the columns)."""
        tokens = self.token_ids.tolist() if self.token_ids is not None else [None] * len(self)
        columns = zip(
            self.seq_ids.tolist(), self.context.tolist(), self.admissions.tolist(), tokens, strict=True
        )
        return [
            StageItem(seq_id, context, 1, None if token is None else (token,), admission=admission)
            for seq_id, context, admission, token in columns
        ]


@dataclass(slots=True)
class HopBatch:
    """Requests a sender forwards to one receiver after one step (or the coordinator's new iterations)."""

    items: list[StageItem]
    hidden: torch.Tensor | None = None  # [sum of num_new_tokens, H] for non-first stages
    sent_at_s: float = 0.0
    sender: str = ""  # worker name or COORDINATOR_HOP: batches from a fenced worker are dropped
    decodes: DecodeRows | None = None  # decode iterations; their hidden rows follow the items'

    @property
    def num_new_tokens(self) -> int:
        rows = len(self.decodes) if self.decodes is not None else 0
        return sum(item.num_new_tokens for item in self.items) + rows


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
class SampledTokens:
    """Sampled decode tokens in columns (no log-probabilities asked for): request `seq_ids[i]` of
    admission `admissions[i]` got `token_ids[i]`. int64 [D] each."""

    seq_ids: torch.Tensor
    token_ids: torch.Tensor
    admissions: torch.Tensor

    def __post_init__(self) -> None:
        _check_columns(
            "SampledTokens",
            {"seq_ids": self.seq_ids, "token_ids": self.token_ids, "admissions": self.admissions},
        )

    def __len__(self) -> int:
        return self.seq_ids.shape[0]

    @classmethod
    def of(cls, seq_ids: list[int], token_ids: list[int], admissions: list[int]) -> SampledTokens:
        return cls(_column(seq_ids), _column(token_ids), _column(admissions))

    def as_results(self) -> list[TokenResult]:
        """One `TokenResult` per row (for readers that want objects; the coordinator reads the columns)."""
        columns = zip(self.seq_ids.tolist(), self.token_ids.tolist(), self.admissions.tolist(), strict=True)
        return [TokenResult(seq_id, token, admission=admission) for seq_id, token, admission in columns]


@dataclass(slots=True)
class ResultBatch:
    """Tokens the last stage returns to the coordinator after one step: `results` (prompts' first tokens,
    tokens with log-probabilities, errors, preemptions) and the plain decode tokens in columns."""

    worker: str
    results: list[TokenResult]
    tokens: SampledTokens | None = None


# Every type that may travel on a socket; a receiver drops frames of any other type.
WIRE_MESSAGES: tuple[type, ...] = (HopBatch, ResultBatch, Control)

CODEC = Codec(WIRE_MESSAGES)


def encode(message: Any) -> list[Any]:
    """Frames for `send_multipart`: the header, then each tensor's raw buffer (see `helix.engine.wire`)."""
    return CODEC.encode(message)


def decode(frames: Sequence[Any], *, pin_memory: bool = False) -> Any:
    """Inverse of `encode`; tensors come back on the CPU (large ones page-locked with `pin_memory`).
    Raises `WireError` for a malformed message."""
    return CODEC.decode(frames, pin_memory=pin_memory)
