"""The loopback OpenAI server other tests script: its wire format, fault queue and records, over plain HTTP."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest

from fake_openai_server import Fault, FakeOpenAIServer, Reply, fake_tokenize


def post(server: FakeOpenAIServer, path: str, body: dict, *, key: str = "sk-test") -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_tokenizer_splits_digits_and_keeps_every_character() -> None:
    text = "Value 10\tunknown\n(x) café"
    assert "".join(fake_tokenize(text)) == text
    assert fake_tokenize("a 10\t") == ["a", " ", "1", "0", "\t"]


def test_chat_choices_logprobs_and_records(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.responder = lambda request: Reply(texts=["first answer", "second"], cached_tokens=2)
    status, _, answer = post(fake_openai, "/v1/chat/completions", {
        "model": "m", "messages": [{"role": "user", "content": "hi there"}], "n": 3, "logprobs": True,
        "top_logprobs": 2})
    assert status == 200
    assert [choice["message"]["content"] for choice in answer["choices"]] == ["first answer", "second",
                                                                              "first answer"]
    assert answer["choices"][0]["logprobs"]["content"][0]["token"] == "first"
    assert answer["usage"] == {"prompt_tokens": 2 + 4, "completion_tokens": 2 + 1 + 2, "total_tokens": 11,
                               "prompt_tokens_details": {"cached_tokens": 2}}
    [request] = fake_openai.requests
    assert request.path == "/v1/chat/completions" and request.body["n"] == 3
    assert request.headers["authorization"] == "Bearer sk-test"
    assert fake_openai.counts == {"/v1/chat/completions": 1}


def test_completion_echo_reports_prompt_token_alternatives(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.responder = lambda request: "ok"
    _, _, answer = post(fake_openai, "/v1/completions",
                        {"model": "m", "prompt": "a\t7", "echo": True, "logprobs": 3, "max_tokens": 1})
    choice = answer["choices"][0]
    assert choice["text"] == "a\t7ok"
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["a", "\t", "7", "ok"] and logprobs["text_offset"] == [0, 1, 2, 3]
    assert logprobs["top_logprobs"][0] is None and len(logprobs["top_logprobs"][2]) == 3
    assert logprobs["token_logprobs"][2] == pytest.approx(math.log(0.6))


def test_vllm_prompt_logprobs_include_the_actual_token(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.prompt_scorer = lambda tokens, position: {"x": -0.1, "y": -0.2, "z": -0.3}
    _, _, answer = post(fake_openai, "/v1/completions", {"model": "m", "prompt": "q w", "prompt_logprobs": 2})
    entries = answer["choices"][0]["prompt_logprobs"]
    assert entries[0] is None and len(entries) == len(fake_tokenize("q w"))
    decoded = {item["decoded_token"]: item for item in entries[1].values()}
    assert set(decoded) == {"x", "y", " w"} and decoded[" w"]["rank"] == 4 and decoded["x"]["rank"] == 1


def test_faults_are_served_in_order_then_the_policy_then_normal_answers(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.push_faults(Fault.rate_limit(retry_after=2), None, Fault.insufficient_quota())
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    status, headers, error = post(fake_openai, "/v1/chat/completions", body)
    assert status == 429 and headers["Retry-After"] == "2" and error["error"]["code"] == "rate_limit_exceeded"
    assert post(fake_openai, "/v1/chat/completions", body)[0] == 200
    status, _, error = post(fake_openai, "/v1/chat/completions", body)
    assert status == 429 and error["error"]["code"] == "insufficient_quota"
    fake_openai.fault_policy = lambda request: Fault.server_error(503) if request.index == 3 else None
    assert post(fake_openai, "/v1/chat/completions", body)[0] == 503
    assert post(fake_openai, "/v1/chat/completions", body)[0] == 200
    assert post(fake_openai, "/v1/embeddings", body)[0] == 404


def test_broken_answers_break_the_connection_or_the_json(fake_openai: FakeOpenAIServer) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    fake_openai.push_faults(Fault.malformed_json())
    with pytest.raises(json.JSONDecodeError):
        post(fake_openai, "/v1/chat/completions", body)
    for fault in (Fault.truncated(), Fault.reset()):
        fake_openai.push_faults(fault)
        with pytest.raises((urllib.error.URLError, ConnectionError, http_incomplete())):
            post(fake_openai, "/v1/chat/completions", body)
    fake_openai.push_faults(Fault.hang(2.0))
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        request = urllib.request.Request(f"{fake_openai.base_url}/chat/completions", data=json.dumps(body).encode())
        urllib.request.urlopen(request, timeout=0.3)


def http_incomplete() -> type[Exception]:
    import http.client

    return http.client.IncompleteRead
