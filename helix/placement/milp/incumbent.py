"""The best placement found so far, always scored by the independent evaluator, plus the proven bound."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helix.flow.graph import FlowOptions
from helix.flow.maxflow import FlowResult, evaluate_placement
from helix.perf.base import CapacityModel
from helix.specs.cluster import ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import Placement


@dataclass
class Clock:
    """Wall-clock budget of one planning run."""

    limit_s: float
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.limit_s - self.elapsed()


@dataclass
class Incumbent:
    """Best evaluated placement, best proven upper bound, and the history of improvements."""

    cluster: ClusterSpec
    model: ModelSpec
    capacity: CapacityModel
    flow_options: FlowOptions
    clock: Clock
    progress: Callable[[dict[str, Any]], None] | None = None
    placement: Placement | None = None
    flow: FlowResult | None = None
    source: str = ""
    found_at_s: float = 0.0
    bound: float = float("inf")
    bound_source: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    seen: list[tuple[Placement, str]] = field(default_factory=list)  # offered placements with flow > 0
    max_seen: int = 500

    @property
    def value(self) -> float:
        return self.flow.value_tokens_per_s if self.flow is not None else 0.0

    def gap(self) -> float:
        if self.bound == float("inf") or self.bound <= 0:
            return 1.0
        return max(0.0, (self.bound - self.value) / self.bound)

    def evaluate(self, placement: Placement) -> FlowResult:
        return evaluate_placement(self.cluster, self.model, placement, self.capacity, self.flow_options)

    def offer(self, placement: Placement, source: str, flow: FlowResult | None = None) -> float:
        """Evaluate `placement`; keep it if strictly better. Returns its evaluated value."""
        flow = flow or self.evaluate(placement)
        if flow.value_tokens_per_s > 0 and len(self.seen) < self.max_seen:
            self.seen.append((placement, source))
        if flow.value_tokens_per_s > self.value + 1e-9:
            self.placement, self.flow, self.source = placement, flow, source
            self.found_at_s = self.clock.elapsed()
            self._report(source)
        return flow.value_tokens_per_s

    def tighten(self, bound: float, source: str) -> None:
        if bound < self.bound - 1e-9:
            self.bound, self.bound_source = bound, source
            self._report(source)

    def _report(self, event: str) -> None:
        row = {
            "incumbent": self.value,
            "bound": self.bound,
            "gap": self.gap(),
            "elapsed_s": self.clock.elapsed(),
            "event": event,
        }
        self.history.append(row)
        if self.progress is not None:
            try:
                self.progress(dict(row))
            except Exception as exc:  # a broken progress printer must not lose the plan
                warnings.warn(f"progress callback failed: {exc}", stacklevel=2)
