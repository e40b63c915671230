"""Per-request sampling settings."""

from __future__ import annotations

from dataclasses import dataclass

from helix.errors import HelixInputError


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick the next token and when to stop.

    `temperature == 0` is greedy. `top_k <= 0` and `top_p == 1` disable those filters. `seed` makes a
    request's sampling reproducible through its own `torch.Generator` (never the global RNG).
    `logprobs`: None for none, N >= 0 for the chosen token's log-probability plus the N most likely.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("temperature", self.temperature >= 0.0, "use a temperature >= 0 (0 is greedy)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "use 0 < top_p <= 1"),
            ("max_tokens", self.max_tokens >= 1, "ask for at least one token"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "use 0..20 or None"),
            ("top_k", isinstance(self.top_k, int), "use an integer top_k (0 disables it)"),
        )
        for name, ok, fix in checks:
            if not ok:
                raise HelixInputError(f"invalid {name} {getattr(self, name)!r}", field=name, fix=fix)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0
