"""A corpus of malformed HTTP requests: each gets its status and an OpenAI envelope whose message (and
param) say what is wrong — never a 500, never a 200 that ignores the input."""

from __future__ import annotations

import httpx
import pytest

M = "{model}"  # replaced by the served model's name
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
HI = [{"role": "user", "content": "hi"}]

# (route, body (dict, or raw bytes), status, param, words the message must contain)
CORPUS = [
    (COMP, b'{"model": "m", "prompt": "hi",}', 400, None, "not valid JSON"),
    (COMP, b"not json at all", 400, None, "not valid JSON"),
    (COMP, b"", 400, None, "body"),
    (COMP, b"[1, 2]", 400, None, "JSON object"),
    (COMP, {"prompt": "hi"}, 400, "model", "Field required"),
    (COMP, {"model": M}, 400, "prompt", "Field required"),
    (COMP, {"model": "no-such-model", "prompt": "hi"}, 404, "model", "does not exist"),
    (COMP, {"model": M, "prompt": "hi", "seed": 2**64}, 400, "seed", "seed"),
    (COMP, {"model": M, "prompt": [99999999]}, 400, "prompt", "outside the vocabulary"),
    (COMP, {"model": M, "prompt": [-1, 5]}, 400, "prompt", "outside the vocabulary"),
    (COMP, {"model": M, "prompt": ""}, 400, "prompt", "empty"),
    (COMP, {"model": M, "prompt": ["a", "b"]}, 400, "prompt", "batched prompts"),
    (COMP, {"model": M, "prompt": "hi", "suffix": "end"}, 400, "suffix", "suffix"),
    (COMP, {"model": M, "prompt": "hi", "best_of": 3}, 400, "best_of", "best_of"),
    (COMP, {"model": M, "prompt": "hi", "logit_bias": {"1": 5}}, 400, "logit_bias", "logit_bias"),
    (COMP, {"model": M, "prompt": "hi", "logprobs": 9}, 400, "logprobs", "out of range"),
    (COMP, {"model": M, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens", ">= 1"),
    (COMP, {"model": M, "prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens", "integer"),
    (COMP, {"model": M, "prompt": "hi", "temperature": 3}, 400, "temperature", "outside [0, 2]"),
    (COMP, {"model": M, "prompt": "hi", "top_p": 0}, 400, "top_p", "top_p"),
    (COMP, {"model": M, "prompt": "hi", "top_k": -2}, 400, "top_k", ">= 0"),
    (COMP, {"model": M, "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    (COMP, {"model": M, "prompt": "hi", "presence_penalty": 5}, 400, "presence_penalty", "[-2, 2]"),
    (COMP, {"model": M, "prompt": "hi", "frequency_penalty": -3}, 400, "frequency_penalty", "[-2, 2]"),
    (COMP, {"model": M, "prompt": "hi", "repetition_penalty": 0}, 400, "repetition_penalty", "(0, 10]"),
    (COMP, {"model": M, "prompt": "hi", "n": 0}, 400, "n", "out of range"),
    (COMP, {"model": M, "prompt": "hi", "max_tokens": 5000}, 400, "max_tokens", "context window"),
    (
        COMP,
        {"model": M, "prompt": "hi", "stream_options": {"include_usage": 1, "x": 2}},
        400,
        "stream_options.x",
        "Extra",
    ),
    (CHAT, {"model": M}, 400, "messages", "Field required"),
    (CHAT, {"model": M, "messages": []}, 400, "messages", "empty"),
    (CHAT, {"model": M, "messages": "hi"}, 400, "messages", "list"),
    (
        CHAT,
        {"model": M, "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "messages.0.role",
        "Input should be",
    ),
    (
        CHAT,
        {
            "model": M,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
        400,
        "messages.0.content.0",
        "image_url",
    ),
    (
        CHAT,
        {"model": M, "messages": HI, "response_format": {"type": "json_schema"}},
        400,
        "response_format",
        "json_schema",
    ),
    (CHAT, {"model": M, "messages": HI, "tools": [{"type": "function"}]}, 400, "tools", "tool calls"),
    (CHAT, {"model": M, "messages": HI, "tool_choice": "auto"}, 400, "tool_choice", "tool calls"),
    (CHAT, {"model": M, "messages": HI, "top_logprobs": 3}, 400, "top_logprobs", "needs logprobs"),
    (
        CHAT,
        {"model": M, "messages": HI, "logprobs": True, "top_logprobs": 50},
        400,
        "top_logprobs",
        "out of range",
    ),
    (CHAT, {"model": M, "messages": HI, "seed": -(2**63) - 1}, 400, "seed", "seed"),
    (CHAT, {"model": M, "messages": HI, "n": 100}, 400, "n", "out of range"),
]


def _ids():
    return [f"{i:02d}-{(case[3] or 'body')}" for i, case in enumerate(CORPUS)]


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize(("route", "body", "status", "param", "words"), CORPUS, ids=_ids())
def test_malformed_request(server, model_name, route, body, status, param, words):
    url = server[1] + route
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    else:
        body = {k: (model_name if v == M else v) for k, v in body.items()}
        response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert words in error["message"], error
    assert response.headers["X-Request-Id"]
