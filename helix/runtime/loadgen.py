"""An open-loop load generator for any OpenAI-compatible endpoint.

Arrivals come from the simulator's workload models (`helix.sim.workload`: Poisson or gamma renewal at a
rate) over `duration_s`; each request asks for a completion of `prompt_tokens` synthetic tokens and
exactly `output_tokens` new ones (``ignore_eos``), streamed, so TTFT, TPOT and the time of every token
are measured. Requests are sent at their arrival times whatever happens to earlier ones (open loop).

Measurement window: [`warmup_s`, `duration_s`]. Decode throughput = output tokens received inside the
window ÷ its length (a capacity measure that holds under sustained overload, when the backlog would
never drain). Latencies follow the simulator's window rule: TTFT of the requests whose first token
arrives inside the window, TPOT = the gaps between consecutive tokens of a request that end inside it,
end-to-end latency of the requests that finish inside it. After the last arrival
the generator waits for outstanding requests up to `drain_timeout_s` (None: until all finish), then
cancels the rest (counted as `unfinished`). With everything drained it also reports
`drained_decode_tokens_per_s` = all output tokens ÷ the time until the last one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

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
    warmup_s: float = 0.0
    drain_timeout_s: float | None = None

    def arrivals_s(self) -> np.ndarray:
        """The arrival times this spec sends at (also given to the simulator for comparisons)."""
        return gamma_arrivals(self.rate_per_s, self.cv, self.duration_s, np.random.default_rng(self.seed))


@dataclass(slots=True)
class Sample:
    sent_s: float
    ttft_s: float | None = None
    e2e_s: float | None = None
    tokens: int = 0
    token_times_s: list[float] = field(default_factory=list)  # since the run started
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


def prompt_text(index: int, num_words: int) -> str:
    """The synthetic prompt of request `index` (common words, about one token each)."""
    return " ".join(WORDS[(index + j) % len(WORDS)] for j in range(num_words))


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
                    continue
                now_s = time.perf_counter() - start
                sample.token_times_s.append(now_s)
                if sample.ttft_s is None:
                    sample.ttft_s = now_s - sample.sent_s
        sample.e2e_s = time.perf_counter() - start - sample.sent_s
    except httpx.HTTPError as exc:
        sample.error = f"{type(exc).__name__}: {exc}"


async def run_load(spec: LoadSpec) -> dict:
    """Send the workload and summarise it (see the module docstring)."""
    samples, wall_s = await send(spec)
    return summarise(spec, samples, wall_s)


async def send(spec: LoadSpec, arrivals: np.ndarray | None = None) -> tuple[list[Sample], float]:
    """Send the workload (at `arrivals`, default the spec's); every request's sample and the wall time."""
    arrivals = spec.arrivals_s() if arrivals is None else arrivals
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
            prompt = prompt_text(i, spec.prompt_tokens)
            tasks.append(asyncio.create_task(_one(client, spec, prompt, start, sample)))
        _, pending = await asyncio.wait(tasks, timeout=spec.drain_timeout_s) if tasks else (set(), set())
        for task in pending:
            task.cancel()  # closes the stream: the server cancels the request and frees its KV
        if pending:
            await asyncio.wait(pending)
        wall_s = time.perf_counter() - start
    return samples, wall_s


async def probe(spec: LoadSpec) -> dict:
    """One request alone (the first of the workload's prompts): its TTFT and mean TPOT in seconds."""
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    async with httpx.AsyncClient(base_url=spec.base_url, headers=headers, timeout=spec.timeout_s) as client:
        sample = Sample(sent_s=0.0)
        await _one(client, spec, prompt_text(0, spec.prompt_tokens), time.perf_counter(), sample)
    if sample.error is not None or sample.ttft_s is None or sample.e2e_s is None:
        raise RuntimeError(f"probe request failed: {sample.error}")
    gaps = np.diff(sample.token_times_s)
    return {"ttft_s": sample.ttft_s, "tpot_s": float(gaps.mean()) if len(gaps) else None}


def summarise(spec: LoadSpec, samples: list[Sample], wall_s: float) -> dict:
    """Counts, window throughput and token-level latencies (the simulator's window rule)."""
    lo, hi = spec.warmup_s, spec.duration_s
    ok = [s for s in samples if s.error is None and s.e2e_s is not None]
    unfinished = [s for s in samples if s.error is None and s.e2e_s is None]
    last_token_s = max((s.token_times_s[-1] for s in ok if s.token_times_s), default=0.0)

    def inside(t: float) -> bool:
        return lo <= t <= hi

    first = [s for s in samples if s.token_times_s and inside(s.token_times_s[0])]
    gaps = [b - a for s in samples for a, b in itertools.pairwise(s.token_times_s) if inside(b)]
    return {
        "offered_rate_per_s": spec.rate_per_s,
        "duration_s": spec.duration_s,
        "warmup_s": spec.warmup_s,
        "wall_s": wall_s,
        "prompt_tokens": spec.prompt_tokens,
        "output_tokens": spec.output_tokens,
        "sent": len(samples),
        "completed": len(ok),
        "failed": len(samples) - len(ok) - len(unfinished),
        "unfinished": len(unfinished),
        "errors": sorted({s.error for s in samples if s.error})[:5],
        "decode_tokens_per_s": sum(1 for s in samples for t in s.token_times_s if inside(t)) / (hi - lo)
        if hi > lo
        else 0.0,
        "drained_decode_tokens_per_s": (
            sum(s.tokens for s in ok) / last_token_s if not unfinished and last_token_s > 0 else None
        ),
        "ttft_s": percentiles([s.ttft_s for s in first if s.ttft_s is not None]),
        "tpot_s": percentiles(gaps),
        "e2e_s": percentiles([s.e2e_s for s in ok if inside(s.sent_s + s.e2e_s)]),
    }
