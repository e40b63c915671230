"""One worker stage's decode step in one process: host launch time against GPU time, eager and graphed.

Builds the two stages of the 12 + 20 layer split (LLaMA-3-8B shape, random bf16 weights) one after the
other, fills the KV of `--seqs` sequences, and times pure-decode steps of several batch sizes the way a
worker runs them (inputs arrive as pageable host tensors; the last stage takes the argmax and copies
the tokens to pinned memory): the host's time to queue the step, the GPU span between CUDA events,
and the whole step. A torch profile of one step per path names the host's costliest operations.

    python benchmarks/profile_stage_step.py --out /tmp/stage_step.json     # GPU host
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtime_2gpu import LLAMA3_8B  # noqa: E402

from helix.engine.batch import SeqChunk, StepBatch  # noqa: E402
from helix.engine.config import EngineConfig, LayerRange, ModelConfig  # noqa: E402
from helix.engine.loader import build_stage  # noqa: E402
from helix.engine.model_runner import ModelRunner  # noqa: E402


def step(runner: ModelRunner, chunks, hidden_size: int, vocab: int):
    """Queue one step as a worker does; returns (host seconds to queue, begin, end events, pinned out)."""
    first = runner.model.is_first
    n = sum(c.num_new_tokens for c in chunks)
    inputs = torch.randint(0, vocab, (n,)) if first else torch.randn(n, hidden_size).to(torch.bfloat16)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    begin.record()
    out = runner.execute(StepBatch(tuple(chunks)), inputs)
    if runner.model.is_last:
        out = out.argmax(dim=-1)
    host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
    host.copy_(out, non_blocking=True)
    end.record()
    return time.perf_counter() - t0, begin, end, host


def time_steps(runner, seqs, context, batch, hidden_size, vocab, repeats) -> dict:
    launch, gpu, whole = [], [], []
    for r in range(repeats):
        chunks = [SeqChunk(s, context[s], 1) for s in seqs[:batch]]
        t0 = time.perf_counter()
        host_s, begin, end, _ = step(runner, chunks, hidden_size, vocab)
        end.synchronize()
        whole.append(time.perf_counter() - t0)
        for s in seqs[:batch]:
            context[s] += 1
        if r:
            launch.append(host_s)
            gpu.append(begin.elapsed_time(end))
    graphed = runner.graphs is not None and runner.graphs.bucket_for(batch) is not None
    return {
        "batch": batch,
        "graphed": graphed,
        "launch_ms": 1000 * statistics.median(launch),
        "gpu_ms": statistics.median(gpu),
        "step_ms": 1000 * statistics.median(whole[1:]),
    }


def profile_step(runner, seqs, context, batch, hidden_size, vocab) -> str:
    from torch.profiler import ProfilerActivity, profile

    chunks = [SeqChunk(s, context[s], 1) for s in seqs[:batch]]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _, _, end, _ = step(runner, chunks, hidden_size, vocab)
        end.synchronize()
    for s in seqs[:batch]:
        context[s] += 1
    averages = prof.key_averages()
    return averages.table(sort_by="self_cpu_time_total", row_limit=18) + averages.table(
        sort_by="cuda_time_total", row_limit=12
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seqs", type=int, default=560)
    parser.add_argument("--context", type=int, default=192)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 191, 256, 358, 549])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--max-graph-batch", type=int, default=256)
    parser.add_argument("--profile-batches", type=int, nargs="*", default=[191, 358])
    args = parser.parse_args()
    hf = LLAMA3_8B
    config = ModelConfig.from_hf_dict(hf, where="profile config")
    result: dict = {"settings": vars(args) | {"out": str(args.out)}, "stages": {}}
    for start, stop in ((0, 12), (12, 32)):
        stage = build_stage(
            config, LayerRange(start, stop), device="cuda", dtype=torch.bfloat16, max_positions=512
        )
        engine_config = EngineConfig(
            num_kv_blocks=args.seqs * 32 + 16, max_model_len=512, max_graph_batch_size=args.max_graph_batch
        )
        started = time.perf_counter()
        runner = ModelRunner(stage, engine_config)
        capture_s = time.perf_counter() - started
        seqs = list(range(1, args.seqs + 1))
        context = {}
        for i in range(0, len(seqs), 16):
            chunks = [SeqChunk(s, 0, args.context) for s in seqs[i : i + 16]]
            step(runner, chunks, config.hidden_size, config.vocab_size)
            for s in seqs[i : i + 16]:
                context[s] = args.context
        torch.cuda.synchronize()
        rows = []
        for batch in args.batches:
            rows.append(
                time_steps(runner, seqs, context, batch, config.hidden_size, config.vocab_size, args.repeats)
            )
            print(f"layers {start}-{stop}", rows[-1], flush=True)
        profiles = {}
        for batch in args.profile_batches:
            profiles[batch] = profile_step(
                runner, seqs, context, batch, config.hidden_size, config.vocab_size
            )
            print(f"layers {start}-{stop} batch {batch}\n{profiles[batch]}", flush=True)
        result["stages"][f"{start}-{stop}"] = {"capture_s": capture_s, "steps": rows, "profiles": profiles}
        del runner, stage
        torch.cuda.empty_cache()
    args.out.write_text(json.dumps(result, indent=1))
    for name, stage in result["stages"].items():
        for row in stage["steps"]:
            print(name, row)


if __name__ == "__main__":
    main()
