"""The OpenAI backend against a real HTTP server on 127.0.0.1 (tests/fake_openai_server.py)."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from fake_openai_server import Fault, FakeOpenAIServer, Reply, ScriptedToken, fake_tokenize
from neuron_explainer.core.errors import UserError
from neuron_explainer.llm import (
    CacheMode,
    LLMFatalError,
    LLMTransientError,
    Message,
    ResponseCache,
    RetryPolicy,
    SlotMode,
    SlotPrompt,
    UsageLedger,
    make_backend,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
FAST_RETRY = RetryPolicy(max_attempts=4, initial_wait_s=0.05, max_wait_s=1.0, jitter_s=0.0)
QUESTION = [Message("system", "You explain neurons."), Message("user", "What does it fire on?")]


@pytest.fixture(autouse=True)
def _no_real_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_chat_answers_logprobs_and_usage_come_from_the_server(fake_openai: FakeOpenAIServer) -> None:
    tokens = [ScriptedToken("dog", -0.1, {"cat": -2.5}), ScriptedToken("s", -0.2)]
    fake_openai.responder = lambda request: Reply(tokens=tokens, cached_tokens=3)
    ledger = UsageLedger()
    backend = make_backend(fake_openai.backend_spec(), ledger=ledger)
    result = asyncio.run(backend.generate(QUESTION, n=2, top_logprobs=2, max_tokens=10))
    assert [generation.text for generation in result.generations] == ["dogs", "dogs"]
    first = result.generations[0].logprobs[0]
    assert (first.token, first.logprob, first.top) == ("dog", -0.1, (("dog", -0.1), ("cat", -2.5)))
    body = fake_openai.requests[0].body
    assert body["messages"][1] == {"role": "user", "content": "What does it fire on?"}
    assert (body["n"], body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (2, True, 2, 10)
    expected_prompt = sum(len(fake_tokenize(message.content)) + 4 for message in QUESTION)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.cached_tokens) == \
        (expected_prompt, 4, 3)
    [entry] = ledger.entries
    assert (entry.prompt_tokens, entry.completion_tokens, entry.cached_tokens, entry.operation) == \
        (expected_prompt, 4, 3, "chat")
    assert entry.attempts == 1 and not entry.from_cache


def test_raw_prompts_use_completions_with_stop_and_length(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.responder = lambda request: "alpha beta. gamma delta epsilon"
    backend = make_backend(fake_openai.backend_spec())
    stopped = asyncio.run(backend.generate("Say it:", stop=["."], top_logprobs=1))
    cut = asyncio.run(backend.generate("Say it:", max_tokens=2))
    assert stopped.generations[0].text == "alpha beta" and stopped.generations[0].finish_reason == "stop"
    assert [item.token for item in stopped.generations[0].logprobs] == ["alpha", " beta"]
    assert cut.generations[0].text == "alpha beta" and cut.generations[0].finish_reason == "length"
    assert fake_openai.counts[COMPLETIONS] == 2 and fake_openai.requests[0].body["prompt"] == "Say it:"


def test_retry_after_is_honoured_and_backoff_doubles(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.push_faults(Fault.rate_limit(retry_after=0.4), Fault.server_error(500), Fault.server_error(503))
    backend = make_backend(fake_openai.backend_spec(), retry=FAST_RETRY)
    result = asyncio.run(backend.generate(QUESTION))
    assert result.generations[0].text == "ok"
    assert fake_openai.count(CHAT) == 4
    after_429, after_500, after_503 = fake_openai.arrival_gaps()
    assert 0.4 <= after_429 < 0.4 + 0.3
    assert 0.05 <= after_500 < 0.05 + 0.3
    assert 0.10 <= after_503 < 0.10 + 0.3


def test_retry_after_ms_header_is_read(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.push_faults(Fault.rate_limit(retry_after_ms=300))
    backend = make_backend(fake_openai.backend_spec(), retry=FAST_RETRY)
    asyncio.run(backend.generate(QUESTION))
    [gap] = fake_openai.arrival_gaps()
    assert 0.3 <= gap < 0.6


@pytest.mark.parametrize("fault", [Fault.server_error(500), Fault.server_error(502), Fault.server_error(503),
                                   Fault.rate_limit(), Fault.malformed_json(), Fault.truncated(), Fault.reset(),
                                   Fault.hang(5.0)], ids=lambda fault: f"{fault.kind.value}-{fault.status}")
def test_transient_faults_are_retried_once_each(fake_openai: FakeOpenAIServer, fault: Fault) -> None:
    fake_openai.push_faults(fault)
    backend = make_backend(fake_openai.backend_spec(), retry=FAST_RETRY, timeout=0.5)
    result = asyncio.run(backend.generate(QUESTION))
    assert result.generations[0].text == "ok"
    assert fake_openai.count(CHAT) == 2


def test_retries_give_up_after_max_attempts(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.fault_policy = lambda request: Fault.server_error(502)
    backend = make_backend(fake_openai.backend_spec(), retry=RetryPolicy(max_attempts=3, initial_wait_s=0.01,
                                                                          jitter_s=0.0))
    with pytest.raises(LLMTransientError) as raised:
        asyncio.run(backend.generate(QUESTION))
    assert fake_openai.count(CHAT) == 3
    assert "gave up after 3 attempts" in str(raised.value) and "502" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("fault", "status", "stops_run"), [
    (Fault.unauthorized(), 401, True),
    (Fault.http_status(400, code="invalid_request_error", message="bad parameter"), 400, False),
    (Fault.http_status(403, message="no access"), 403, True),
    (Fault.http_status(404, code="model_not_found", message="no such model"), 404, True),
    (Fault.insufficient_quota(), 429, True),
])
def test_fatal_errors_fail_at_once(fake_openai: FakeOpenAIServer, fault: Fault, status: int, stops_run: bool) -> None:
    fake_openai.fault_policy = lambda request: fault
    backend = make_backend(fake_openai.backend_spec(), retry=FAST_RETRY)
    with pytest.raises(LLMFatalError) as raised:
        asyncio.run(backend.generate(QUESTION))
    assert fake_openai.count(CHAT) == 1
    assert raised.value.status_code == status and raised.value.stops_run is stops_run
    message = str(raised.value)
    assert "\n" not in message and message.startswith(backend.name)
    assert fault.message.split(",")[0] in message


def test_key_is_sent_but_never_stored_logged_or_shown(fake_openai: FakeOpenAIServer, tmp_path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-proj-SECRETxyz0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    for name in (None, "openai", "httpx2", "httpcore2", "neuron_explainer"):
        caplog.set_level(logging.DEBUG, logger=name)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    ledger = UsageLedger()
    backend = make_backend(fake_openai.backend_spec(), cache=cache, ledger=ledger, retry=FAST_RETRY)
    asyncio.run(backend.generate(QUESTION))
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {key}"
    # Read at call time: a new key is used without rebuilding the backend.
    monkeypatch.setenv("OPENAI_API_KEY", key + "NEW")
    fake_openai.push_faults(Fault.rate_limit(retry_after=0.01),
                            Fault.http_status(401, message=f"Incorrect API key provided: {key}NEW. Bearer {key}NEW"))
    with pytest.raises(LLMFatalError) as raised:
        asyncio.run(backend.generate([Message("user", "again")]))
    assert fake_openai.requests[-1].headers["authorization"] == f"Bearer {key}NEW"
    cache.close()
    stored = (tmp_path / "cache.sqlite").read_bytes() + b"".join(
        path.read_bytes() for path in tmp_path.glob("cache.sqlite-*"))
    for secret in (key, "SECRETxyz"):
        assert secret.encode() not in stored
        assert secret not in repr(ledger.entries)
        assert secret not in caplog.text
        assert secret not in str(raised.value)
    assert "OPENAI_API_KEY" in str(raised.value)
    # The debug logs of our retries and of the SDK's requests were captured, and are clean.
    assert "retrying" in caplog.text and "Sending HTTP Request" in caplog.text


def test_loopback_server_needs_no_key_but_openai_does(fake_openai: FakeOpenAIServer) -> None:
    asyncio.run(make_backend(fake_openai.backend_spec()).generate(QUESTION))
    assert fake_openai.requests[0].headers["authorization"] == "Bearer EMPTY"
    official = make_backend("openai:gpt-4o-mini")
    assert not official.capabilities.completion and not official.capabilities.slot_distributions
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        asyncio.run(official.generate(QUESTION))
    with pytest.raises(UserError, match="raw text"):
        asyncio.run(official.generate("a raw prompt"))


def test_openai_base_url_environment_variable_is_honoured(fake_openai: FakeOpenAIServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    backend = make_backend("openai:served-model")
    assert asyncio.run(backend.generate(QUESTION)).generations[0].text == "ok"
    assert fake_openai.requests[0].body["model"] == "served-model" and backend.capabilities.completion


def test_deterministic_requests_are_cached_and_hits_make_no_request(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    ledger = UsageLedger()
    cache = ResponseCache(tmp_path / "cache.sqlite")
    backend = make_backend(fake_openai.backend_spec(), cache=cache, ledger=ledger)
    first = asyncio.run(backend.generate(QUESTION))
    again = asyncio.run(backend.generate(QUESTION))
    assert fake_openai.count() == 1
    assert again.from_cache and again.generations == first.generations and again.usage.prompt_tokens == 0
    assert [entry.from_cache for entry in ledger.entries] == [False, True]
    assert ledger.entries[1].cost_usd == 0.0 and ledger.entries[1].attempts == 0
    # A fresh backend over the same file (tomorrow's run) is served from it too.
    reopened = make_backend(fake_openai.backend_spec(), cache=ResponseCache(tmp_path / "cache.sqlite"))
    assert asyncio.run(reopened.generate(QUESTION)).from_cache and fake_openai.count() == 1
    # Other parameters, another model or endpoint: other keys.
    asyncio.run(backend.generate(QUESTION, max_tokens=7))
    asyncio.run(make_backend(fake_openai.backend_spec("other-model"), cache=cache).generate(QUESTION))
    assert fake_openai.count() == 3
    # Sampling without a seed is never cached; with a seed it is.
    asyncio.run(backend.generate(QUESTION, temperature=0.7))
    asyncio.run(backend.generate(QUESTION, temperature=0.7))
    asyncio.run(backend.generate(QUESTION, temperature=0.7, seed=5))
    asyncio.run(backend.generate(QUESTION, temperature=0.7, seed=5))
    assert fake_openai.count() == 6


def test_cache_refresh_off_and_clear(fake_openai: FakeOpenAIServer, tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    asyncio.run(make_backend(fake_openai.backend_spec(), cache=ResponseCache(path)).generate(QUESTION))
    refreshing = make_backend(fake_openai.backend_spec(), cache=ResponseCache(path, mode=CacheMode.REFRESH))
    assert not asyncio.run(refreshing.generate(QUESTION)).from_cache
    off = make_backend(fake_openai.backend_spec(), cache=ResponseCache(path, mode=CacheMode.OFF))
    assert not asyncio.run(off.generate(QUESTION)).from_cache
    assert fake_openai.count() == 3
    cache = ResponseCache(path)
    assert len(cache) == 1 and cache.clear(model="fake-model") == 1 and len(cache) == 0
    assert not asyncio.run(make_backend(fake_openai.backend_spec(), cache=cache).generate(QUESTION)).from_cache


def test_concurrency_limit_is_respected(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.latency = 0.1
    backend = make_backend(fake_openai.backend_spec(), concurrency=3)
    results = asyncio.run(backend.generate_many([[Message("user", f"q{index}")] for index in range(12)]))
    assert len(results) == 12 and fake_openai.count() == 12
    assert fake_openai.max_in_flight == 3


def test_tokens_per_minute_limit_counts_reported_usage(fake_openai: FakeOpenAIServer) -> None:
    # 6000 tokens a minute = 100 a second. The first answer reports 5990 prompt tokens, draining the bucket, so
    # the second request (estimated at 101 tokens) waits about (101 - ~10) / 100 s.
    answers = iter([Reply(usage={"prompt_tokens": 5990}), Reply()])
    fake_openai.responder = lambda request: next(answers)
    backend = make_backend(fake_openai.backend_spec(), tpm=6000, concurrency=1)
    asyncio.run(backend.generate_many([[Message("user", "x")], [Message("user", "y")]], max_tokens=100))
    [gap] = fake_openai.arrival_gaps()
    assert 0.7 <= gap < 2.0


def test_cancellation_leaves_no_orphaned_tasks(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.fault_policy = lambda request: Fault.hang(10.0)
    backend = make_backend(fake_openai.backend_spec(), concurrency=2, timeout=30.0)

    async def run() -> set[asyncio.Task]:
        work = asyncio.create_task(backend.generate_many([[Message("user", f"q{index}")] for index in range(6)]))
        while fake_openai.count() < 2:
            await asyncio.sleep(0.01)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        await backend.aclose()
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(run()) == set()
    assert fake_openai.count() == 2


def test_backend_survives_several_event_loops(fake_openai: FakeOpenAIServer) -> None:
    backend = make_backend(fake_openai.backend_spec(), concurrency=1)
    for _ in range(3):
        assert len(asyncio.run(backend.generate_many([QUESTION, QUESTION]))) == 2


def _digit_scorer(tokens, position):
    """After a tab: '7' after 'dog', '3' otherwise; elsewhere the actual token is likely."""
    if tokens[position - 1] == "\t":
        best = "7" if tokens[position - 2] == "dog" else "3"
        return {best: math.log(0.5), "1": math.log(0.2), tokens[position]: math.log(0.25)}
    return {tokens[position]: math.log(0.9), "0": math.log(0.05)}


@pytest.mark.parametrize("mode", ["prompt_logprobs=1", "echo=1"])
def test_slot_distributions_from_prompt_logprobs(fake_openai: FakeOpenAIServer, mode: str) -> None:
    fake_openai.prompt_scorer = _digit_scorer
    backend = make_backend(fake_openai.backend_spec(options=mode))
    assert backend.capabilities.slot_distributions and not backend.capabilities.slot_multitoken_exact
    prompts = [SlotPrompt(prefix="Rate each word.\n", pieces=("dog\t", "unknown\ncat\t", "unknown\n")),
               SlotPrompt(prefix="Rate each word.\n", pieces=("cat\t", "unknown\n"))]
    candidates = ["1", "3", "7", "10"]
    distributions = asyncio.run(backend.slot_distributions(prompts, candidates))
    assert distributions[0][0] == pytest.approx({"1": 0.2, "3": 0.0, "7": 0.5, "10": 0.0})
    assert distributions[0][1] == pytest.approx({"1": 0.2, "3": 0.5, "7": 0.0, "10": 0.0})
    assert distributions[1] == [pytest.approx({"1": 0.2, "3": 0.5, "7": 0.0, "10": 0.0})]
    assert sorted(request.body["prompt"] for request in fake_openai.requests) == \
        ["Rate each word.\ncat\tunknown\n", "Rate each word.\ndog\tunknown\ncat\tunknown\n"]
    body = fake_openai.requests[0].body
    assert ("prompt_logprobs" in body) == (mode == "prompt_logprobs=1") and body.get("echo") == (mode == "echo=1"
                                                                                                or None)


def test_slot_inside_a_server_token_is_an_error(fake_openai: FakeOpenAIServer) -> None:
    backend = make_backend(fake_openai.backend_spec(options="slots=echo"))
    with pytest.raises(LLMFatalError, match="no server token starts at slot 0"):
        asyncio.run(backend.slot_distributions([SlotPrompt(prefix="x ", pieces=("ab", "cd"))], ["1"]))


def test_backend_without_slot_mode_has_no_slot_distributions(fake_openai: FakeOpenAIServer) -> None:
    backend = make_backend(fake_openai.backend_spec())
    assert not backend.capabilities.slot_distributions
    with pytest.raises(NotImplementedError):
        asyncio.run(backend.slot_distributions([SlotPrompt(prefix="a", pieces=("b", "c"))], ["1"]))


def test_probe_finds_echo_when_prompt_logprobs_are_refused(fake_openai: FakeOpenAIServer) -> None:
    def refuse_prompt_logprobs(request):
        if "prompt_logprobs" in request.body:
            return Fault.http_status(400, message="unknown parameter prompt_logprobs")
        return None

    fake_openai.fault_policy = refuse_prompt_logprobs
    backend = make_backend(fake_openai.backend_spec())
    assert asyncio.run(backend.probe_slots()) is SlotMode.ECHO
    assert backend.capabilities.slot_distributions and fake_openai.count() == 2
    fake_openai.fault_policy = lambda request: Fault.http_status(400, message="no logprobs here")
    assert asyncio.run(make_backend(fake_openai.backend_spec("m2")).probe_slots()) is SlotMode.NONE
