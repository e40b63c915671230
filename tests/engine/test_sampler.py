from __future__ import annotations

import math

import pytest
import torch

from helix.engine import SamplingParams
from helix.engine.sampler import Sampler, apply_penalties, apply_top_k_top_p, counter_uniform, to_signed_seed
from helix.errors import HelixInputError


def _logits(rows=3, vocab=50, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def _sample(logits, params, seeds=None, positions=None, **kwargs):
    n = logits.shape[0]
    return Sampler()(logits, params, seeds or [0] * n, positions or [0] * n, **kwargs)


def test_greedy_and_top_k_1_pick_the_argmax():
    logits = _logits()
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.5, top_k=1)]
    out = _sample(logits[:2], params, seeds=[0, 1])
    assert out.tokens == logits[:2].argmax(-1).tolist()
    assert out.logprobs == [None, None] and out.top_logprobs == [None, None]


def test_seeded_sampling_is_reproducible_per_request_and_independent_of_the_batch():
    logits = _logits(rows=1, vocab=200).repeat(4, 1)
    params = [SamplingParams(temperature=1.0)] * 4
    seeds, positions = [7, 7, 8, 7], [10, 10, 10, 11]
    out = _sample(logits, params, seeds, positions).tokens
    assert out[0] == out[1]  # same seed, same position: same token
    alone = _sample(logits[:1], params[:1], [7], [10]).tokens[0]
    assert alone == out[0]  # the batch around a row changes nothing
    draws = {_sample(logits[:1], params[:1], [s], [0]).tokens[0] for s in range(40)}
    assert len(draws) > 5  # it does sample


def test_draws_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    expected = logits[0].softmax(-1)
    rows = 4000
    out = _sample(
        logits.repeat(rows, 1), [SamplingParams(temperature=1.0)] * rows, list(range(rows)), [3] * rows
    )
    freq = torch.bincount(torch.tensor(out.tokens), minlength=4).float() / rows
    assert torch.allclose(freq, expected, atol=0.03)


def test_counter_noise_is_uniform_and_depends_on_seed_and_position():
    u = counter_uniform(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), 20000)
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert not torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])
    assert to_signed_seed(2**64 - 1) == -1 and to_signed_seed(5) == 5


def test_top_k_top_p_masks():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]] * 3)
    masked = apply_top_k_top_p(logits, torch.tensor([2, 0, 0]), torch.tensor([1.0, 0.5, 1e-6]))
    assert torch.isinf(masked[0, 2:]).all() and torch.isfinite(masked[0, :2]).all()
    probs = logits[1].softmax(-1)  # 0.64, 0.24, ...: top-p 0.5 keeps the first only
    assert probs[0] > 0.5 and torch.isinf(masked[1, 1:]).all()
    assert torch.isfinite(masked[2, 0]) and torch.isinf(masked[2, 1:]).all()  # always one left


def test_sampling_respects_top_k():
    logits = _logits(rows=1, seed=3)
    allowed = set(logits[0].topk(3).indices.tolist())
    params = [SamplingParams(temperature=5.0, top_k=3)]
    for seed in range(30):
        assert _sample(logits, params, [seed]).tokens[0] in allowed


def test_logprobs_of_chosen_and_top_tokens():
    logits = _logits(rows=2, seed=4)
    params = [SamplingParams(temperature=0, logprobs=2), SamplingParams(temperature=1.0, logprobs=0)]
    out = _sample(logits, params, seeds=[0, 3])
    expected = logits.log_softmax(-1)
    assert list(out.top_logprobs[0]) == expected[0].topk(2).indices.tolist()  # most likely first
    assert out.logprobs[0] == pytest.approx(float(expected[0].max()), abs=1e-6)
    assert out.top_logprobs[1] == {}
    assert out.logprobs[1] == pytest.approx(float(expected[1, out.tokens[1]]), abs=1e-6)


def test_penalties_follow_openai_and_vllm():
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5]] * 3)
    params = [
        SamplingParams(presence_penalty=0.5),
        SamplingParams(frequency_penalty=0.25),
        SamplingParams(repetition_penalty=2.0),
    ]
    outputs = [[1, 1, 2], [1, 1, 2], [2]]
    prompts = [[3], [3], [1]]
    got = apply_penalties(logits, params, prompts, outputs)
    assert got[0].tolist() == [1.0, 1.5, -1.5, 0.5]  # presence: once per seen output token
    assert got[1].tolist() == [1.0, 1.5, -1.25, 0.5]  # frequency: per occurrence
    assert got[2].tolist() == [1.0, 1.0, -2.0, 0.5]  # repetition: prompt and output, sign-aware
    # through the sampler: a strong frequency penalty moves greedy off the repeated token
    out = _sample(
        logits[:1], [SamplingParams(temperature=0, frequency_penalty=2.0)], output_ids=[[1]], prompt_ids=[[]]
    )
    assert out.tokens == [0]


def test_greedy_and_sampled_rows_mix_in_one_batch():
    logits = _logits(rows=6, vocab=300, seed=9)
    params = [SamplingParams(temperature=0.0 if i % 2 else 1.0, seed=i) for i in range(6)]
    out = _sample(logits, params, seeds=list(range(6)), positions=[5] * 6)
    for i in range(1, 6, 2):
        assert out.tokens[i] == int(logits[i].argmax())
    for i in range(0, 6, 2):
        assert out.tokens[i] == _sample(logits[i : i + 1], params[i : i + 1], [i], [5]).tokens[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"max_tokens": 0},
        {"logprobs": 50},
        {"seed": 2**64},
        {"presence_penalty": 3},
        {"frequency_penalty": -2.5},
        {"repetition_penalty": 0},
        {"temperature": math.nan},
    ],
)
def test_invalid_params(kwargs):
    with pytest.raises(HelixInputError):
        SamplingParams(**kwargs)
