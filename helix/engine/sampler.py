"""Turning last-token logits into next tokens, for a whole batch at once (no per-row loop of tensor ops).

Order of operations per row (OpenAI / vLLM semantics): repetition penalty over prompt + output tokens,
presence and frequency penalties over output tokens, temperature, top-k, top-p, then a draw. Greedy rows
(temperature 0) take the argmax of the penalised logits.

Draws are Gumbel-max (argmax of logits/T + G, G = -log(-log U)), which samples exactly from the
softmax. U is counter-based: a splitmix64 hash of (row seed, position of the token, vocabulary index),
computed on the device in int64 arithmetic. A request's tokens therefore depend only on its seed, its
positions and its logits: the same in any batch, on any stage that samples it, after any recomputation.

Log-probabilities are those of the model (log-softmax of the raw logits, before penalties and
temperature), as vLLM returns them: the chosen token's and the top N's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from helix.engine.sampling_params import SamplingParams

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB


@dataclass(frozen=True, slots=True)
class SamplerOutput:
    """Per row: the token, its log-probability (None unless asked) and the top-N {token: logprob}."""

    tokens: list[int]
    logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser (wrapping int64 arithmetic)."""
    x = x ^ _shift_right(x, 30)
    x = x * _MIX1
    x = x ^ _shift_right(x, 27)
    x = x * _MIX2
    return x ^ _shift_right(x, 31)


def counter_uniform(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """U(0, 1) noise [N, V] (float32, never 0 or 1): a hash of (seed, position, token id)."""
    key = _mix(seeds * _GOLDEN + positions)
    ids = torch.arange(vocab, device=seeds.device, dtype=torch.int64) * _GOLDEN
    bits = _shift_right(_mix(key[:, None] + ids[None, :]), 40)  # 24 random bits
    return (bits.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) tokens outside each row's top-k and nucleus. logits [N, V]; top_k [N] (0 = off);
    top_p [N]. Returns a new tensor [N, V]."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).expand_as(sorted_logits)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    drop = ranks >= k[:, None]
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop |= mass_before > top_p[:, None]
    drop[:, 0] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def token_counts(token_ids: Sequence[Sequence[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """[N, V] float32: how often each token occurs in each row's list (one scatter for the batch)."""
    lengths = torch.tensor([len(ids) for ids in token_ids], device=device)
    counts = torch.zeros(len(token_ids), vocab, device=device)
    flat = [t for ids in token_ids for t in ids]
    if flat:
        rows = torch.repeat_interleave(torch.arange(len(token_ids), device=device), lengths)
        cols = torch.tensor(flat, device=device, dtype=torch.int64)
        counts.index_put_((rows, cols), torch.ones_like(cols, dtype=counts.dtype), accumulate=True)
    return counts


def apply_penalties(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    prompt_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Repetition (prompt + output), then presence and frequency (output) penalties; a new [N, V]."""
    device, vocab = logits.device, logits.shape[-1]
    output_counts = token_counts(output_ids, vocab, device)
    repetition = torch.tensor([p.repetition_penalty for p in params], device=device)[:, None]
    if bool((repetition != 1.0).any()):
        seen = (output_counts > 0) | (token_counts(prompt_ids, vocab, device) > 0)
        penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(seen, penalised, logits)
    presence = torch.tensor([p.presence_penalty for p in params], device=device)[:, None]
    frequency = torch.tensor([p.frequency_penalty for p in params], device=device)[:, None]
    return logits - frequency * output_counts - presence * (output_counts > 0).to(logits.dtype)


class Sampler:
    """Picks one token per row of logits according to each row's `SamplingParams` (module docstring)."""

    def __call__(
        self,
        logits: torch.Tensor,  # [N, V]
        params: Sequence[SamplingParams],
        seeds: Sequence[int],
        positions: Sequence[int],
        prompt_ids: Sequence[Sequence[int]] | None = None,
        output_ids: Sequence[Sequence[int]] | None = None,
    ) -> SamplerOutput:
        """`seeds`: each row's signed 64-bit seed; `positions`: the index the new token will have in its
        sequence; `prompt_ids` / `output_ids`: each row's tokens, needed only for penalties."""
        num_rows = logits.shape[0]
        assert num_rows == len(params) == len(seeds) == len(positions)
        raw = logits.float()
        scores = raw
        if any(p.has_penalties for p in params):
            empty: list[list[int]] = [[] for _ in params]
            scores = apply_penalties(raw, params, prompt_ids or empty, output_ids or empty)
        tokens = scores.argmax(dim=-1)
        if not all(p.is_greedy for p in params):
            tokens = torch.where(
                self._greedy_mask(params, logits.device), tokens, self._draw(scores, params, seeds, positions)
            )
        token_list = tokens.tolist()
        chosen, top = self._logprobs(raw, params, tokens)
        return SamplerOutput(token_list, chosen, top)

    @staticmethod
    def _greedy_mask(params: Sequence[SamplingParams], device: torch.device) -> torch.Tensor:
        return torch.tensor([p.is_greedy for p in params], device=device)

    @staticmethod
    def _draw(scores: torch.Tensor, params, seeds, positions) -> torch.Tensor:  # -> [N]
        device = scores.device
        temperature = torch.tensor(
            [p.temperature if p.temperature > 0 else 1.0 for p in params], device=device
        )
        scores = scores / temperature[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            top_k = torch.tensor([p.top_k for p in params], device=device)
            top_p = torch.tensor([p.top_p for p in params], device=device)
            scores = apply_top_k_top_p(scores, top_k, top_p)
        seed_t = torch.tensor(list(seeds), dtype=torch.int64, device=device)
        pos_t = torch.tensor(list(positions), dtype=torch.int64, device=device)
        gumbel = -torch.log(-torch.log(counter_uniform(seed_t, pos_t, scores.shape[-1])))
        return (scores + gumbel).argmax(dim=-1)

    @staticmethod
    def _logprobs(raw: torch.Tensor, params: Sequence[SamplingParams], tokens: torch.Tensor):
        chosen: list[float | None] = [None] * len(params)
        top: list[dict[int, float] | None] = [None] * len(params)
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        if not wanted:
            return chosen, top
        rows = torch.tensor(wanted, device=raw.device)
        logprobs = raw[rows].log_softmax(dim=-1)
        chosen_values = logprobs.gather(1, tokens[rows][:, None])[:, 0].tolist()
        top_n = max(params[i].logprobs or 0 for i in wanted)
        top_values, top_ids = logprobs.topk(max(top_n, 1), dim=-1)
        top_values, top_ids = top_values.tolist(), top_ids.tolist()
        for row, i in enumerate(wanted):  # formatting only: plain Python lists
            n = params[i].logprobs or 0
            chosen[i] = chosen_values[row]
            top[i] = dict(zip(top_ids[row][:n], top_values[row][:n], strict=True))
        return chosen, top


def to_signed_seed(seed: int) -> int:
    """Any integer as a signed 64-bit seed (two's complement of its low 64 bits)."""
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed
