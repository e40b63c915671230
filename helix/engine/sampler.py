"""Turning last-token logits into next tokens: greedy, temperature, top-k, top-p, log-probabilities.

Random rows draw through their own `torch.Generator` (one per request, seeded), never the global RNG,
so a request's tokens depend only on its seed and its logits. Sampling uses the exponential race
(argmax of p / E with E ~ Exp(1)), which draws exactly from p.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from helix.engine.sampling_params import SamplingParams


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


class Sampler:
    """Picks one token per row of logits according to each row's `SamplingParams`."""

    def __call__(
        self,
        logits: torch.Tensor,  # [N, V] float32
        params: Sequence[SamplingParams],
        generators: Sequence[torch.Generator | None],
    ) -> tuple[list[int], list[dict[int, float] | None]]:
        """Returns the tokens and, per row, {token: logprob} (chosen token plus top-N) or None."""
        assert logits.shape[0] == len(params) == len(generators)
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, p in enumerate(params) if not p.is_greedy]
        if random_rows:
            tokens = tokens.clone()
            tokens[random_rows] = self._sample(
                logits[random_rows], [params[i] for i in random_rows], [generators[i] for i in random_rows]
            )
        token_list = tokens.tolist()
        return token_list, self._logprobs(logits, params, token_list)

    @staticmethod
    def _sample(logits, params: Sequence[SamplingParams], generators) -> torch.Tensor:  # -> [n]
        device = logits.device
        temperature = torch.tensor([p.temperature for p in params], device=device)
        logits = logits / temperature[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            top_k = torch.tensor([p.top_k for p in params], device=device)
            top_p = torch.tensor([p.top_p for p in params], device=device)
            logits = apply_top_k_top_p(logits, top_k, top_p)
        probs = logits.softmax(dim=-1)
        race = torch.empty_like(probs)
        for row, generator in enumerate(generators):
            race[row].exponential_(generator=generator)
        return (probs / race).argmax(dim=-1)

    @staticmethod
    def _logprobs(logits, params: Sequence[SamplingParams], tokens: list[int]):
        wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
        result: list[dict[int, float] | None] = [None] * len(params)
        if not wanted:
            return result
        logprobs = logits[wanted].log_softmax(dim=-1)
        top_n = max(params[i].logprobs or 0 for i in wanted)
        top_values, top_ids = logprobs.topk(max(top_n, 1), dim=-1)
        chosen = logprobs.gather(1, torch.tensor([[tokens[i]] for i in wanted], device=logits.device))
        for row, i in enumerate(wanted):
            n = params[i].logprobs or 0
            entry = dict(zip(top_ids[row, :n].tolist(), top_values[row, :n].tolist(), strict=True))
            entry[tokens[i]] = float(chosen[row, 0])
            result[i] = entry
        return result
