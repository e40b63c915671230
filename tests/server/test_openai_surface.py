"""Each OpenAI feature through the official `openai` client against the real server (SmolLM2)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_logprobs_and_top_logprobs_in_openai_shape(client, model_name):
    reply = client.chat.completions.create(
        model=model_name, messages=QUESTION, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert len(content) in (reply.usage.completion_tokens, reply.usage.completion_tokens - 1)  # EOS left out
    assert "".join(t.token for t in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0 and bytes(entry.bytes).decode() == entry.token
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(values[0], abs=1e-5)
    assert sum(math.exp(v) for v in values) <= 1.0 + 1e-6
    plain = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=8)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == choice.message.content


def test_completion_logprobs_with_offsets(client, model_name):
    reply = client.completions.create(
        model=model_name, prompt="The sky is", temperature=0, max_tokens=6, logprobs=2
    )
    choice = reply.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert token in top and top[token] == pytest.approx(value) and len(top) <= 3


def test_echo_prepends_the_prompt(client, model_name):
    plain = client.completions.create(model=model_name, prompt="Roses are red,", temperature=0, max_tokens=5)
    echoed = client.completions.create(
        model=model_name, prompt="Roses are red,", temperature=0, max_tokens=5, echo=True
    )
    assert echoed.choices[0].text == "Roses are red," + plain.choices[0].text
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=model_name, prompt="hi", max_tokens=2, echo=True, logprobs=1)


def test_n_choices_and_seed(client, model_name):
    kwargs = dict(
        model=model_name,
        prompt="My favourite animal is",
        temperature=1.0,
        max_tokens=8,
        seed=1234,
        extra_body={"ignore_eos": True},
    )
    first = client.completions.create(n=3, **kwargs)
    again = client.completions.create(n=3, **kwargs)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in again.choices]  # a seed reproduces every choice
    assert len(set(texts)) > 1  # choices are distinct samples
    single = client.completions.create(n=1, **kwargs)
    assert single.choices[0].text == texts[0]  # choice 0 uses the request's seed
    other = client.completions.create(n=1, **{**kwargs, "seed": 99})
    assert other.choices[0].text != texts[0] or other.choices[0].text != texts[1]
    assert first.usage.completion_tokens == 3 * 8
    assert first.usage.prompt_tokens == single.usage.prompt_tokens


def test_chat_n_streams_every_choice(client, model_name):
    stream = client.chat.completions.create(
        model=model_name,
        messages=QUESTION,
        temperature=0.8,
        seed=5,
        n=2,
        max_tokens=6,
        stream=True,
        logprobs=True,
    )
    texts, tokens, finished = {0: "", 1: ""}, {0: [], 1: []}, set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            tokens[choice.index] += [t.token for t in (choice.logprobs.content if choice.logprobs else [])]
            if choice.finish_reason:
                finished.add(choice.index)
    whole = client.chat.completions.create(
        model=model_name, messages=QUESTION, temperature=0.8, seed=5, n=2, max_tokens=6
    )
    assert finished == {0, 1}
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert "".join(tokens[0]) == texts[0]


def test_several_stop_strings(client, model_name):
    free = client.completions.create(model=model_name, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12)
    assert " 6" in free.choices[0].text and " 7" in free.choices[0].text
    cut = client.completions.create(
        model=model_name, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 7", " 6", "zzz"]
    )
    assert (
        cut.choices[0].text == free.choices[0].text.split(" 6")[0] and cut.choices[0].finish_reason == "stop"
    )


def test_penalties_change_a_repetitive_greedy_answer(client, model_name):
    prompt = "one one one one one one one one"

    def ask(**kwargs) -> str:
        extra = {"ignore_eos": True, **kwargs.pop("extra_body", {})}
        reply = client.completions.create(
            model=model_name, prompt=prompt, temperature=0, max_tokens=12, extra_body=extra, **kwargs
        )
        return reply.choices[0].text

    base = ask()
    assert base.count("many") >= 3  # greedy loops on "-to-many"
    for kwargs in (
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 3.0}},
    ):
        assert ask(**kwargs).count("many") < base.count("many"), kwargs


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"seed": 2**64}, "seed"),
        ({"n": 17}, "n"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_unsupported_or_invalid_chat_fields_are_refused_by_name(client, model_name, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model_name, messages=QUESTION, max_tokens=2, **kwargs)
    assert info.value.body["param"] == param


def test_response_format_text_is_accepted(client, model_name):
    reply = client.chat.completions.create(
        model=model_name, messages=QUESTION, max_tokens=2, temperature=0, response_format={"type": "text"}
    )
    assert reply.choices[0].message.content


def test_models_retrieve_and_access_log(client, model_name, server, server_logs):
    assert client.models.retrieve(model_name).id == model_name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")
    client.completions.create(model=model_name, prompt="Hi", max_tokens=3, temperature=0)
    httpx.post(
        server[1] + "/v1/completions", json={"model": model_name, "prompt": "Hi", "frob": 1}, timeout=30
    )
    httpx.post(
        server[1] + "/v1/completions", json={"model": model_name, "prompt": "Hi", "frob": 2}, timeout=30
    )
    lines = [r.getMessage() for r in server_logs if r.name == "helix.server.access"]
    assert any(f"route=/v1/models/{model_name} status=200" in line for line in lines)
    assert any("route=/v1/models/gpt-17 status=404" in line for line in lines)
    done = [line for line in lines if "route=/v1/completions status=200" in line]
    assert done and "completion_tokens=3" in done[0] and "latency_ms=" in done[0] and "request_id=" in done[0]
    unknown = [r.getMessage() for r in server_logs if "unknown field 'frob'" in r.getMessage()]
    assert len(unknown) == 1  # logged once


def test_a_5xx_leaves_its_cause_in_the_error_log(server, model_name, server_logs):
    from fastapi.testclient import TestClient

    from helix.server.app import create_app

    class Broken:  # the real runtime's name, but no tokenizer: encoding the prompt raises unexpectedly
        model_name = server[0].model_name
        tokenizer = None

    with TestClient(create_app(Broken())) as tc:
        response = tc.post("/v1/completions", json={"model": model_name, "prompt": "hi"})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    errors = [r for r in server_logs if r.name == "helix.server.error"]
    assert errors and "TypeError" in errors[0].getMessage() and errors[0].exc_info is not None
    assert any("status=500" in r.getMessage() for r in server_logs if r.name == "helix.server.access")
