"""What a simulation measures, and its summary.

Every request iteration that returns to the coordinator is recorded with its return time and latency:
- prompt latency: first token back − admission (Helix's "prompt latency");
- TTFT: first token back − arrival (adds the time spent waiting for admission; equal offline);
- decode latency (TPOT): one decode iteration's round trip through the pipeline.
Only iterations returning inside the window count (Helix's rule, serving.md §4.8). Throughput: decode
tokens/s = decode returns in the window / window length; total tokens/s adds the prompt tokens of prompts
returning in the window. The plan's max flow counts tokens of the capacity model's typical request mix (I
prompt + O output tokens, `helix.perf.base`), prompt and decode tokens alike, so it is not a bound on total
tokens/s of another mix (a prompt-heavy window exceeds it: prompt tokens run in large, fast batches). What
it bounds is requests: F / (I + O) per second, hence decode tokens/s ≤ F · O / (I + O) =
``decode_bound_tokens_per_s``; ``decode_efficiency`` = decode tokens/s ÷ that bound.
The timeline holds, per sample interval, each node's busy fraction and real KV occupancy, the number of
requests in flight and the admission-queue length.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from helix.perf.base import AVG_OUTPUT_TOKENS, AVG_PROMPT_TOKENS

PERCENTILES = (50, 95, 99)


@dataclass
class Recorder:
    """Raw per-iteration records and the timeline."""

    prompt_return_s: array = field(default_factory=lambda: array("d"))
    prompt_latency_s: array = field(default_factory=lambda: array("d"))
    ttft_s: array = field(default_factory=lambda: array("d"))
    prompt_tokens: array = field(default_factory=lambda: array("d"))
    decode_return_s: array = field(default_factory=lambda: array("d"))
    decode_latency_s: array = field(default_factory=lambda: array("d"))
    timeline_s: list[float] = field(default_factory=list)
    node_busy: list[list[float]] = field(default_factory=list)
    node_kv: list[list[float]] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)
    queue_length: list[int] = field(default_factory=list)
    kv_bottleneck: list[float] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by


def latency_stats(values: np.ndarray) -> dict[str, float | None]:
    if len(values) == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}, "count": 0}
    return {
        "mean": float(values.mean()),
        **{f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES},
        "count": int(len(values)),
    }


def summarize(
    rec: Recorder, window: tuple[float, float], max_flow_tokens_per_s: float, node_names: list[str]
) -> dict[str, Any]:
    """The JSON-ready summary of a run over `window` = (start_s, end_s)."""
    lo, hi = window
    length = hi - lo
    p_ret = np.frombuffer(rec.prompt_return_s, dtype=float)
    d_ret = np.frombuffer(rec.decode_return_s, dtype=float)
    p_in = (p_ret >= lo) & (p_ret <= hi)
    d_in = (d_ret >= lo) & (d_ret <= hi)
    decode_tps = float(d_in.sum()) / length
    prompt_tps = float(np.frombuffer(rec.prompt_tokens, dtype=float)[p_in].sum()) / length
    total = decode_tps + prompt_tps
    decode_bound = max_flow_tokens_per_s * AVG_OUTPUT_TOKENS / (AVG_PROMPT_TOKENS + AVG_OUTPUT_TOKENS)
    times = np.asarray(rec.timeline_s)
    t_in = (times > lo) & (times <= hi)
    busy = np.asarray(rec.node_busy).reshape(len(times), -1) if len(times) else np.zeros((0, len(node_names)))
    kv = np.asarray(rec.node_kv).reshape(len(times), -1) if len(times) else np.zeros((0, len(node_names)))
    nodes = {
        name: {
            "utilization": float(busy[t_in, i].mean()) if t_in.any() else 0.0,
            "kv_occupancy_mean": float(kv[t_in, i].mean()) if t_in.any() else 0.0,
            "kv_occupancy_max": float(kv[:, i].max()) if len(kv) else 0.0,
        }
        for i, name in enumerate(node_names)
    }
    queue = np.asarray(rec.queue_length)
    return {
        "window_s": [lo, hi],
        "decode_tokens_per_s": decode_tps,
        "prompt_tokens_per_s": prompt_tps,
        "total_tokens_per_s": total,
        "max_flow_tokens_per_s": max_flow_tokens_per_s,
        "decode_bound_tokens_per_s": decode_bound,
        "decode_efficiency": decode_tps / decode_bound if decode_bound > 0 else None,
        "prompts_in_window": int(p_in.sum()),
        "decodes_in_window": int(d_in.sum()),
        "prompt_latency_s": latency_stats(np.frombuffer(rec.prompt_latency_s, dtype=float)[p_in]),
        "ttft_s": latency_stats(np.frombuffer(rec.ttft_s, dtype=float)[p_in]),
        "decode_latency_s": latency_stats(np.frombuffer(rec.decode_latency_s, dtype=float)[d_in]),
        "in_flight_mean": float(np.mean(np.asarray(rec.in_flight)[t_in])) if t_in.any() else 0.0,
        "admission_queue": {
            "max": int(queue.max()) if len(queue) else 0,
            "final": int(queue[-1]) if len(queue) else 0,
            "mean_in_window": float(queue[t_in].mean()) if t_in.any() else 0.0,
        },
        "kv_bottleneck_mean": float(np.mean(np.asarray(rec.kv_bottleneck)[t_in])) if t_in.any() else 0.0,
        "counters": dict(sorted(rec.counters.items())),
        "nodes": nodes,
    }
