"""Host work of a decode round through two chained workers, per request: decode rows in columns against
one `StageItem` per request, in the same run.

Two `Worker`s (layers 0–1 and 1–2 of a tiny random LLaMA) run a self-decoding route; every message of a
round goes through the wire codec (encode, then decode of the frames), as between processes. The
model's forward is replaced by a constant output of the right shape, so what is timed is the runtime's
own host work: admission, KV growth, packing, splitting, sampling bookkeeping, building and coding the
messages — the part that grows with the number of requests in a step. Two paths:

- `columns`: what the runtime does — the last stage feeds tokens back as `DecodeRows` and reports them
  as `SampledTokens`;
- `items`: the same iterations as one `StageItem` each from the first stage on and one `TokenResult`
  each back (the coordinator-driven iteration of old), same workers, same round.

    python benchmarks/bench_hop_host.py --out benchmarks/results/hop_host_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime_2gpu import TINY, median_ms  # noqa: E402

from helix.engine.config import EngineConfig, LayerRange, ModelConfig  # noqa: E402
from helix.engine.loader import build_stage  # noqa: E402
from helix.engine.model_runner import ModelRunner  # noqa: E402
from helix.engine.sampling_params import SamplingParams  # noqa: E402
from helix.runtime.messages import HopBatch, ResultBatch, StageItem, decode, encode  # noqa: E402
from helix.runtime.stage_backend import StageBackend  # noqa: E402
from helix.runtime.worker import Worker  # noqa: E402

ROUTE = ("a", "b")


def wire(message):
    """A message as the receiving process sees it."""
    return decode([bytes(frame) for frame in encode(message)])


def constant_forward(runner: ModelRunner, width: int) -> None:
    """Replace the stage's forward by a constant output of the right shape (host work only): the
    runner's KV bookkeeping of a step stays (`reserve`), the model does not run."""

    out = torch.zeros(4096, width)

    def execute(batch, inputs, skip_layers=0):
        runner.reserve(batch)
        return out[: len(batch.chunks)]

    def execute_decode(seq_ids, context, inputs):
        return out[: len(seq_ids)]

    runner.execute = execute
    runner.execute_decode = execute_decode


def workers(config: ModelConfig) -> dict[str, Worker]:
    out = {}
    for name, (start, end) in zip(ROUTE, ((0, 1), (1, 2)), strict=True):
        stage = build_stage(config, LayerRange(start, end), max_positions=4096)
        runner = ModelRunner(stage, EngineConfig(num_kv_blocks=16384, max_model_len=4096))
        out[name] = Worker(name, StageBackend(runner))
    return out


def measure(config: ModelConfig, requests: int, rounds: int, path: str) -> dict:
    chain = workers(config)
    budget = 10 * rounds + 100
    prompts = [
        StageItem(i, 0, 8, tuple(range(1, 9)), ROUTE, SamplingParams(temperature=0.0), decode_budget=budget)
        for i in range(requests)
    ]
    first = chain["a"].step([HopBatch(prompts, None, 0.0, "coordinator")])
    last = chain["b"].step([wire(first.forward["b"])])
    for name, worker in chain.items():
        width = config.vocab_size if name == "b" else config.hidden_size
        constant_forward(worker.backend.runner, width)
    feedback = last.forward["a"]
    if path == "items":
        feedback = HopBatch(feedback.decodes.as_items(), None, 0.0, "b")

    def one_round() -> None:
        nonlocal feedback
        out_a = chain["a"].step([wire(feedback)])
        out_b = chain["b"].step([wire(out_a.forward["b"])])
        results = out_b.results if path == "columns" else out_b.all_results()
        wire(ResultBatch("b", results, out_b.tokens if path == "columns" else None))
        feedback = out_b.forward["a"]
        if path == "items":
            feedback = HopBatch(feedback.decodes.as_items(), None, 0.0, "b")

    for _ in range(4):  # warm-up (median_ms runs one more before it times)
        one_round()
    round_s = median_ms(one_round, rounds) / 1000
    return {
        "path": path,
        "requests": requests,
        "rounds": rounds,
        "round_ms_median": 1000 * round_s,
        "us_per_request_per_round": 1e6 * round_s / requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hop_host_cpu.json"))
    parser.add_argument("--requests", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ModelConfig.from_hf_dict(TINY | {"num_hidden_layers": 2}, where="tiny model")
    rows = [measure(config, n, args.rounds, path) for n in args.requests for path in ("columns", "items")]
    for row in rows:
        print(json.dumps(row), flush=True)
    by = {(r["path"], r["requests"]): r for r in rows}
    largest = max(args.requests)
    result = {
        "host": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
        },
        "settings": {"requests": args.requests, "rounds": args.rounds},
        "rows": rows,
        "summary": {
            "requests": largest,
            "columns_us_per_request_per_round": by[("columns", largest)]["us_per_request_per_round"],
            "items_us_per_request_per_round": by[("items", largest)]["us_per_request_per_round"],
            "items_over_columns": by[("items", largest)]["round_ms_median"]
            / by[("columns", largest)]["round_ms_median"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
