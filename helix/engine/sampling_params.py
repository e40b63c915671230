"""Per-request sampling settings."""

from __future__ import annotations

from dataclasses import dataclass

from helix.errors import HelixInputError

SEED_MIN = -(2**63)
SEED_MAX = 2**63 - 1
MAX_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick the next token and when to stop.

    `temperature == 0` is greedy. `top_k <= 0` and `top_p == 1` disable those filters. `seed` (a signed
    64-bit integer) makes a request's sampling reproducible: the noise of the token at position t is a
    function of (seed, t) only, never of the batch it runs in or of a global RNG.
    `logprobs`: None for none, N >= 0 for the chosen token's log-probability plus the N most likely.
    Penalties (OpenAI / vLLM semantics, applied to the logits before temperature):
    `presence_penalty` p and `frequency_penalty` f subtract p·[c > 0] + f·c from a token generated c
    times so far (each in [-2, 2]); `repetition_penalty` r > 0 divides positive logits and multiplies
    negative ones by r for every token of the prompt or the output (1 disables it).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        checks = (
            ("temperature", self.temperature >= 0.0, "use a temperature >= 0 (0 is greedy)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "use 0 < top_p <= 1"),
            ("max_tokens", self.max_tokens >= 1, "ask for at least one token"),
            (
                "logprobs",
                self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS,
                f"use 0..{MAX_LOGPROBS} or None",
            ),
            ("top_k", isinstance(self.top_k, int), "use an integer top_k (0 disables it)"),
            (
                "seed",
                self.seed is None or (isinstance(self.seed, int) and SEED_MIN <= self.seed <= SEED_MAX),
                f"use an integer seed in [{SEED_MIN}, {SEED_MAX}]",
            ),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "use a value in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "use a value in [-2, 2]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0, "use a value in (0, 10] (1: off)"),
        )
        for name, ok, fix in checks:
            if not ok:
                raise HelixInputError(f"invalid {name} {getattr(self, name)!r}", field=name, fix=fix)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def is_argmax_only(self) -> bool:
        """Greedy without log-probabilities or penalties: the token is the argmax of the logits."""
        return self.is_greedy and self.logprobs is None and not self.has_penalties

    @property
    def has_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0
