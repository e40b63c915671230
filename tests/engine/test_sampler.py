from __future__ import annotations

import pytest
import torch

from helix.engine import SamplingParams
from helix.engine.sampler import Sampler, apply_top_k_top_p
from helix.errors import HelixInputError


def _logits(rows=3, vocab=50, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_greedy_and_top_k_1_pick_the_argmax():
    logits = _logits()
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.5, top_k=1)]
    tokens, logprobs = Sampler()(logits[:2], params, [None, _gen(1)])
    assert tokens == logits[:2].argmax(-1).tolist()
    assert logprobs == [None, None]


def test_seeded_sampling_is_reproducible_and_per_request():
    logits = _logits(rows=1).repeat(2, 1)
    params = [SamplingParams(temperature=1.0, seed=7)] * 2
    first = [Sampler()(logits, params, [_gen(7), _gen(8)])[0] for _ in range(1)][0]
    again = Sampler()(logits, params, [_gen(7), _gen(8)])[0]
    assert first == again
    draws = {Sampler()(logits[:1], params[:1], [_gen(s)])[0][0] for s in range(40)}
    assert len(draws) > 3  # it does sample


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
        assert Sampler()(logits, params, [_gen(seed)])[0][0] in allowed


def test_logprobs_of_chosen_and_top_tokens():
    logits = _logits(rows=1, seed=4)
    tokens, logprobs = Sampler()(logits, [SamplingParams(temperature=0, logprobs=2)], [None])
    expected = logits[0].log_softmax(-1)
    assert len(logprobs[0]) == 2 and tokens[0] in logprobs[0]
    assert logprobs[0][tokens[0]] == pytest.approx(float(expected.max()), abs=1e-6)


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"logprobs": 50}])
def test_invalid_params(kwargs):
    with pytest.raises(HelixInputError):
        SamplingParams(**kwargs)
