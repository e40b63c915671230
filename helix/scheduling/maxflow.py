"""Helix's max-flow scheduler (serving.md §1.3): IWRR per sender over the max-flow values of its out-edges.

At each sender u (the coordinator first) the next hop v is chosen among candidates that pass three masks:
the edge carries at least 5 % of u's outgoing flow, the prompt fits v's prompt batch limit, and (with KV
admission, on by default) v's expected KV admits the request. Among them IWRR picks the least virtual
finish time with the prompt length as weight. If no candidate survives, the loads charged so far are
restored and the request is not admitted. Decode tokens follow the pinned route and charge 1 per hop;
they are accumulated per distinct route and applied lazily before the next choice, which is exactly
equivalent because loads are only compared inside ``choose``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from helix.scheduling.base import Choice, Route, Scheduler, register_scheduler
from helix.scheduling.iwrr import IWRR
from helix.scheduling.topology import NextHop

MIN_FLOW_SHARE = 0.05


@register_scheduler
class MaxFlowScheduler(Scheduler):
    """Per-request pipelines by interleaved weighted round-robin over max-flow edge values."""

    name = "maxflow"
    kv_admission_default = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._iwrr: dict[str, IWRR] = {}
        self._flow_ok: dict[str, list[bool]] = {}
        for sender, hops in self.topology.next_hops.items():
            flows = [hop.flow_tokens_per_s for hop in hops]
            total = sum(flows)
            self._flow_ok[sender] = [f > 0 and f >= MIN_FLOW_SHARE * total for f in flows]
            self._iwrr[sender] = IWRR(flows)
        self._pending_tokens: Counter[tuple[Choice, ...]] = Counter()

    def _allowed(
        self, sender: str, k: int, hop: NextHop, prompt_tokens: int, expected: int, full_tokens: int
    ) -> bool:
        return self._flow_ok[sender][k] and super()._allowed(
            sender, k, hop, prompt_tokens, expected, full_tokens
        )

    def _choose(
        self,
        sender: str,
        candidates: Sequence[NextHop],
        mask: Sequence[bool],
        prompt_tokens: int,
        now_s: float,
    ) -> int:
        return self._iwrr[sender].choose(prompt_tokens, mask)

    def _before_admit(self, now_s: float) -> None:
        for choices, tokens in self._pending_tokens.items():
            for sender, k in choices:
                self._iwrr[sender].update(tokens, k)
        self._pending_tokens.clear()

    def _undo(self, choices: Sequence[Choice], prompt_tokens: int) -> None:
        for sender, k in choices:
            self._iwrr[sender].restore(prompt_tokens, k)

    def on_tokens(self, request_id: Hashable, num_tokens: int = 1, now_s: float = 0.0) -> None:
        route: Route | None = self.active.get(request_id)
        if route is not None:
            self._pending_tokens[route.choices] += num_tokens

    def iwrr_loads(self, sender: str) -> list[float]:
        """Current virtual loads of `sender`'s candidates (pending decode charges applied)."""
        self._before_admit(0.0)
        return list(self._iwrr[sender].loads)
