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


def _table(kind: str, table: torch.Tensor, rows: tuple[int, ...]) -> int:
    """Check a column table (int64 [R, D], R in `rows`); its number of columns D. ValueError otherwise."""
    if table.dtype != torch.int64 or table.dim() != 2 or table.shape[0] not in rows:
        raise ValueError(
            f"{kind}.table must be an int64 tensor of {' or '.join(map(str, rows))} rows, got {table.dtype} "
            f"{list(table.shape)}"
        )
    return table.shape[1]


@dataclass(slots=True)
class DecodeRows:
    """Decode iterations in columns: request `seq_ids[i]` computes one new token after `context[i]` cached
    tokens, for its admission `admissions[i]` (as `StageItem.admission`); `token_ids` (first stage only)
    holds each row's input token. One int64 table [3 or 4, D] with those rows (one buffer on the wire)."""

    table: torch.Tensor

    def __post_init__(self) -> None:
        if _table("DecodeRows", self.table, (3, 4)) and self.table.numpy()[1].min() < 1:
            raise ValueError("DecodeRows.context must be at least 1 (a decode row follows cached tokens)")

    @property
    def seq_ids(self) -> torch.Tensor:
        return self.table[0]

    @property
    def context(self) -> torch.Tensor:
        return self.table[1]

    @property
    def admissions(self) -> torch.Tensor:
        return self.table[2]

    @property
    def token_ids(self) -> torch.Tensor | None:
        return self.table[3] if self.table.shape[0] == 4 else None

    def __len__(self) -> int:
        return self.table.shape[1]

    def lists(self) -> list[list[int]]:
        """The rows as lists (seq_ids, context, admissions[, token_ids]), in one conversion."""
        return self.table.tolist()

    @classmethod
    def from_lists(
        cls, seq_ids: list[int], context: list[int], admissions: list[int], token_ids: list[int] | None = None
    ) -> DecodeRows:
        rows = (
            [seq_ids, context, admissions] if token_ids is None else [seq_ids, context, admissions, token_ids]
        )
        return cls(torch.from_numpy(np.array(rows, dtype=np.int64).reshape(len(rows), len(seq_ids))))

    def as_items(self) -> list[StageItem]:
        """One `StageItem` per row (for readers that want objects; workers read the columns)."""
        rows = self.lists()
        tokens = rows[3] if len(rows) == 4 else [None] * len(self)
        columns = zip(rows[0], rows[1], rows[2], tokens, strict=True)
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
    admission `admissions[i]` got `token_ids[i]`. One int64 table [3, D] with those rows."""

    table: torch.Tensor

    def __post_init__(self) -> None:
        _table("SampledTokens", self.table, (3,))

    @property
    def seq_ids(self) -> torch.Tensor:
        return self.table[0]

    @property
    def token_ids(self) -> torch.Tensor:
        return self.table[1]

    @property
    def admissions(self) -> torch.Tensor:
        return self.table[2]

    def __len__(self) -> int:
        return self.table.shape[1]

    @classmethod
    def of(cls, seq_ids: list[int], token_ids: list[int], admissions: list[int]) -> SampledTokens:
        rows = np.array([seq_ids, token_ids, admissions], dtype=np.int64).reshape(3, len(seq_ids))
        return cls(torch.from_numpy(rows))

    def as_results(self) -> list[TokenResult]:
        """One `TokenResult` per row (for readers that want objects; the coordinator reads the columns)."""
        columns = zip(*self.table.tolist(), strict=True)
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
