"""Prometheus metrics of one app (own registry, kept in `app.state`; no module globals).

Request counts by endpoint and outcome; TTFT, TPOT and end-to-end histograms; and, refreshed on each
scrape from the runtime, queue length, running requests, per-node KV use and tokens/s, dead workers.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests_total = Counter(
            "helix_requests_total", "Requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.completion_tokens = Counter("helix_completion_tokens_total", "Tokens generated", registry=r)
        self.ttft_s = Histogram(
            "helix_time_to_first_token_seconds", "TTFT", buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.tpot_s = Histogram(
            "helix_time_per_output_token_seconds", "TPOT", buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.e2e_s = Histogram(
            "helix_e2e_request_latency_seconds", "End-to-end latency", buckets=_LATENCY_BUCKETS_S, registry=r
        )
        self.queue_length = Gauge("helix_queue_length", "Requests waiting for admission", registry=r)
        self.running = Gauge("helix_running_requests", "Admitted requests in flight", registry=r)
        self.kv_usage = Gauge(
            "helix_node_kv_usage_ratio", "Used KV blocks / total per node", ["node"], registry=r
        )
        self.node_tokens_per_s = Gauge(
            "helix_node_tokens_per_second", "Tokens processed per second", ["node"], registry=r
        )
        self.workers_gone = Gauge("helix_workers_gone", "Workers reported dead", registry=r)
        self._last_tokens: dict[str, tuple[float, int]] = {}

    def render(self, runtime) -> bytes:
        snap = runtime.coordinator.snapshot()
        self.queue_length.set(snap["waiting"])
        self.running.set(snap["running"])
        self.workers_gone.set(len(snap["dead_workers"]))
        now = time.monotonic()
        for node, stats in runtime.health.stats.items():
            total = stats.get("kv_total_blocks") or 1
            self.kv_usage.labels(node).set(stats.get("kv_used_blocks", 0) / total)
            tokens = stats.get("tokens", 0)
            before = self._last_tokens.get(node)
            if before is not None and now > before[0]:
                self.node_tokens_per_s.labels(node).set((tokens - before[1]) / (now - before[0]))
            self._last_tokens[node] = (now, tokens)
        return generate_latest(self.registry)
