"""What travels between the coordinator and the workers, and its wire encoding.

One `HopBatch` carries every request a sender forwards to one receiver after one step: per request a
`StageItem`, and for non-first stages the packed hidden states of all new tokens ([T, H], items in
order). The coordinator starts each iteration (prompt or one decode token) with the token ids for the
first stage of the request's route; the last stage samples and returns a `TokenResult` per request.

Encoding: pickle protocol 5 with tensors as numpy arrays (zero-copy out-of-band buffers), so a hop
costs one `send_multipart` of a small header and one raw buffer.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from helix.engine.sampling_params import SamplingParams

COORDINATOR_HOP = "coordinator"


@dataclass(frozen=True, slots=True)
class StageItem:
    """One request's share of a step on one stage.

    `route` (worker names in order) and `sampling` come only with the prompt iteration; later stages
    remember them. `token_ids` is set only for the first stage.
    """

    seq_id: int
    num_cached_tokens: int
    num_new_tokens: int
    token_ids: tuple[int, ...] | None = None
    route: tuple[str, ...] | None = None
    sampling: SamplingParams | None = None
    stage_done_s: tuple[float, ...] = ()  # prompt only: wall time each earlier stage finished it
    penalty_prompt_ids: tuple[int, ...] | None = None  # prompt only, with a repetition penalty
    route_starts: tuple[int, ...] | None = None  # prompt only: first layer each hop runs (layer skip)


@dataclass(slots=True)
class HopBatch:
    """Requests a sender forwards to one receiver after one step (or the coordinator's new iterations)."""

    items: list[StageItem]
    hidden: torch.Tensor | None = None  # [sum of num_new_tokens, H] for non-first stages
    sent_at_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenResult:
    """A sampled token of one request (from the last stage), or an error for it."""

    seq_id: int
    token_id: int = -1
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    error: str | None = None
    stage_done_s: tuple[float, ...] = ()  # prompt only: wall time each stage finished it


@dataclass(slots=True)
class Control:
    """Non-data messages: ``free`` sequences (KV release), ``stop`` the loop."""

    kind: str
    seq_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ResultBatch:
    """Tokens the last stage returns to the coordinator after one step."""

    worker: str
    results: list[TokenResult]


def encode(message: Any) -> list[Any]:
    """Frames for `send_multipart`: pickled header plus out-of-band buffers (no copy of tensors)."""
    buffers: list[pickle.PickleBuffer] = []
    if isinstance(message, HopBatch) and message.hidden is not None:
        hidden = message.hidden.detach()
        if hidden.device.type != "cpu":
            hidden = hidden.cpu()
        message = HopBatch(message.items, _to_numpy(hidden), message.sent_at_s)
    header = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    return [header, *(b.raw() for b in buffers)]


def decode(frames: list[Any]) -> Any:
    """Inverse of `encode`; hidden states come back as a CPU tensor."""
    message = pickle.loads(frames[0], buffers=frames[1:])
    if isinstance(message, HopBatch) and isinstance(message.hidden, np.ndarray):
        message.hidden = _from_numpy(message.hidden)
    return message


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: ship the bits
        return tensor.contiguous().view(torch.int16).numpy()
    return tensor.contiguous().numpy()


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(array.copy())  # received buffers are read-only
    return tensor.view(torch.bfloat16) if array.dtype == np.int16 else tensor
