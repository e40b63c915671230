"""An open-loop load generator for any OpenAI-compatible endpoint.

Arrivals come from the simulator's workload models (`helix.sim.workload`: Poisson or gamma renewal at a
rate), each request asks for a completion of `prompt_tokens` synthetic tokens and exactly
`output_tokens` new ones (``ignore_eos``), streamed, so TTFT and TPOT are measured per request.
Requests are sent at their arrival times whatever happens to earlier ones (open loop).

Result (JSON-able): offered rate, completed/failed counts, decode throughput (output tokens finished in
the window ÷ window), TTFT / TPOT / end-to-end percentiles.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx
import numpy as np

from helix.sim.workload import gamma_arrivals

WORDS = ("the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are")


@dataclass(frozen=True, slots=True)
class LoadSpec:
    base_url: str
    model: str
    rate_per_s: float
    duration_s: float
    prompt_tokens: int = 64
    output_tokens: int = 32
    cv: float = 1.0
    seed: int = 0
    api_key: str | None = None
    timeout_s: float = 300.0


@dataclass(slots=True)
class Sample:
    sent_s: float
    ttft_s: float | None = None
    e2e_s: float | None = None
    tokens: int = 0
    error: str | None = None


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    arr = np.asarray(values)
    return {
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
    }


async def _one(client: httpx.AsyncClient, spec: LoadSpec, prompt: str, start: float, sample: Sample) -> None:
    body = {
        "model": spec.model,
        "prompt": prompt,
        "max_tokens": spec.output_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    try:
        async with client.stream("POST", "/completions", json=body) as response:
            if response.status_code != 200:
                sample.error = f"HTTP {response.status_code}"
                await response.aread()
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    sample.error = data["error"]["message"]
                    return
                if data.get("usage"):
                    sample.tokens = data["usage"]["completion_tokens"]
                elif sample.ttft_s is None:
                    sample.ttft_s = time.perf_counter() - start - sample.sent_s
        sample.e2e_s = time.perf_counter() - start - sample.sent_s
    except httpx.HTTPError as exc:
        sample.error = f"{type(exc).__name__}: {exc}"


async def run_load(spec: LoadSpec) -> dict:
    """Send the workload and summarise it (see the module docstring)."""
    rng = np.random.default_rng(spec.seed)
    arrivals = gamma_arrivals(spec.rate_per_s, spec.cv, spec.duration_s, rng)
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    samples: list[Sample] = []
    async with httpx.AsyncClient(
        base_url=spec.base_url, headers=headers, timeout=spec.timeout_s, limits=limits
    ) as client:
        start = time.perf_counter()
        tasks = []
        for i, at in enumerate(arrivals):
            delay = at - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            sample = Sample(sent_s=time.perf_counter() - start)
            samples.append(sample)
            words = [WORDS[(i + j) % len(WORDS)] for j in range(spec.prompt_tokens)]
            tasks.append(asyncio.create_task(_one(client, spec, " ".join(words), start, sample)))
        await asyncio.gather(*tasks)
        wall_s = time.perf_counter() - start
    return summarise(spec, samples, wall_s)


def summarise(spec: LoadSpec, samples: list[Sample], wall_s: float) -> dict:
    ok = [s for s in samples if s.error is None and s.e2e_s is not None]
    tpot = [(s.e2e_s - s.ttft_s) / (s.tokens - 1) for s in ok if s.ttft_s is not None and s.tokens > 1]
    tokens = sum(s.tokens for s in ok)
    return {
        "offered_rate_per_s": spec.rate_per_s,
        "duration_s": spec.duration_s,
        "wall_s": wall_s,
        "prompt_tokens": spec.prompt_tokens,
        "output_tokens": spec.output_tokens,
        "sent": len(samples),
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "errors": sorted({s.error for s in samples if s.error})[:5],
        "decode_tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "ttft_s": percentiles([s.ttft_s for s in ok if s.ttft_s is not None]),
        "tpot_s": percentiles(tpot),
        "e2e_s": percentiles([s.e2e_s for s in ok]),
    }
