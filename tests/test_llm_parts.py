"""Backend specs, the response cache, the usage ledger with its price table, rate buckets, retry policy."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.llm import (
    BackendKind,
    LedgerEntry,
    PriceTable,
    ResponseCache,
    RetryPolicy,
    SlotMode,
    UsageLedger,
    default_cache_path,
    make_backend,
    parse_backend_spec,
)
from neuron_explainer.llm.cache import cache_key
from neuron_explainer.llm.errors import redact
from neuron_explainer.llm.limits import TokenBucket


def test_backend_specs_parse() -> None:
    spec = parse_backend_spec("openai:gpt-4o-mini")
    assert (spec.kind, spec.model, spec.url, spec.options) == (BackendKind.OPENAI, "gpt-4o-mini", None, {})
    spec = parse_backend_spec("openai:meta-llama/Llama-3.1-8B@http://10.0.0.2:8000/v1?prompt_logprobs=1&rpm=60")
    assert (spec.model, spec.url, spec.options) == ("meta-llama/Llama-3.1-8B", "http://10.0.0.2:8000/v1",
                                                    {"prompt_logprobs": "1", "rpm": "60"})
    spec = parse_backend_spec("local:default?dtype=bf16&batch=4")
    assert (spec.kind, spec.model, spec.options) == (BackendKind.LOCAL, "default", {"dtype": "bf16", "batch": "4"})
    assert parse_backend_spec("local:/models/x.gguf").model == "/models/x.gguf"


@pytest.mark.parametrize("bad", ["gpt-4o", "anthropic:claude", "openai:", "openai:m@ftp://host", "local:x?rpm=3",
                                 "openai:m?colour=red", "openai:m?rpm=-1", "openai:m?slots=magic",
                                 "openai:m?completion=maybe"])
def test_bad_backend_specs_are_user_errors(bad: str) -> None:
    with pytest.raises(UserError):
        make_backend(bad)


def test_spec_options_configure_the_backend() -> None:
    backend = make_backend("openai:m@http://127.0.0.1:9/v1?echo=1&logprobs=5&context=4096&concurrency=3&timeout=7",
                           concurrency=20)
    assert backend.settings.slot_mode is SlotMode.ECHO and backend.settings.slot_top_logprobs == 5
    assert backend.capabilities.context_window == 4096 and backend.settings.limits.concurrency == 3
    assert backend.settings.timeout_s == 7.0
    assert make_backend("openai:m@http://user:pw@127.0.0.1:9/v1").name == "openai:m@http://127.0.0.1:9/v1"


def test_cache_round_trip_across_threads(tmp_path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")

    def writer(worker: int) -> None:
        for index in range(40):
            cache.put(cache_key({"worker": worker, "index": index}), {"text": f"{worker}-{index}"},
                      backend="openai:m", model=f"m{worker % 2}")

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 240
    assert cache.get(cache_key({"worker": 3, "index": 7})) == {"text": "3-7"}
    assert cache.get(cache_key({"worker": 3, "index": 99})) is None
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.clear(model="m0") == 120 and len(cache) == 120
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})


def test_default_cache_path_sits_next_to_a_sqlite_database(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(default_cache_path("sqlite:///runs/neurons.db")) == "runs/neurons.db.llm-cache.sqlite"
    monkeypatch.setenv("NEURON_EXPLAINER_CACHE", str(tmp_path))
    assert default_cache_path("postgresql://db/neurons") == tmp_path / "llm-cache.sqlite"
    assert default_cache_path(None) == tmp_path / "llm-cache.sqlite"


def test_price_table_override_prefixes_and_unpriced_models(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "prices.toml"
    table.write_text('[models."my-model"]\ninput = 2.0\ncached_input = 0.5\noutput = 8.0\n')
    monkeypatch.setenv("NEURON_EXPLAINER_PRICES", str(table))
    ledger = UsageLedger()
    priced = ledger.record(backend="openai:my-model-2025-01-01", model="my-model-2025-01-01", operation="chat",
                           prompt_tokens=1000, completion_tokens=100, cached_tokens=400, latency_s=0.5, attempts=1)
    assert priced.cost_usd == pytest.approx((600 * 2.0 + 400 * 0.5 + 100 * 8.0) / 1e6)
    unpriced = ledger.record(backend="openai:gpt-4o-mini", model="gpt-4o-mini", operation="chat", prompt_tokens=10)
    local = ledger.record(backend="local:default", model="default", operation="slots", prompt_tokens=10, free=True)
    hit = ledger.record(backend="openai:x", model="x", operation="chat", from_cache=True)
    assert unpriced.cost_usd is None and local.cost_usd == 0.0 and hit.cost_usd == 0.0
    totals = ledger.totals()
    assert (totals.calls, totals.cache_hits, totals.unpriced_calls, totals.prompt_tokens) == (4, 1, 1, 1020)
    assert totals.cost_usd == pytest.approx(priced.cost_usd)
    assert ledger.totals_by_model()[("local:default", "default")].calls == 1
    # The bundled table prices OpenAI's models, snapshots included.
    monkeypatch.delenv("NEURON_EXPLAINER_PRICES")
    bundled = PriceTable.load()
    assert bundled.price("gpt-4o-mini-2024-07-18") == bundled.price("gpt-4o-mini") is not None


def test_bad_price_table_is_a_user_error(tmp_path) -> None:
    (tmp_path / "p.toml").write_text('[models."m"]\ninput = "cheap"\noutput = 1\n')
    with pytest.raises(UserError, match="numeric"):
        PriceTable.load(tmp_path / "p.toml")
    with pytest.raises(UserError, match="cannot read"):
        PriceTable.load(tmp_path / "missing.toml")


def test_ledger_drain_and_callback() -> None:
    seen: list[LedgerEntry] = []
    ledger = UsageLedger(prices=PriceTable({}), on_entry=seen.append)
    for index in range(3):
        ledger.record(backend="local:x", model="x", operation="generate", prompt_tokens=index, free=True)
    first = ledger.drain()
    ledger.record(backend="local:x", model="x", operation="generate", prompt_tokens=9, free=True)
    assert [entry.prompt_tokens for entry in first] == [0, 1, 2]
    assert [entry.prompt_tokens for entry in ledger.drain()] == [9] and ledger.drain() == []
    assert len(seen) == 4 and ledger.totals().calls == 4


def test_token_bucket_waits_when_empty() -> None:
    async def run() -> tuple[float, float]:
        bucket = TokenBucket(600)  # 10 units a second, 600 at most
        started = time.monotonic()
        await bucket.take(600)
        full = time.monotonic() - started
        await bucket.take(3)
        return full, time.monotonic() - started

    full, waited = asyncio.run(run())
    assert full < 0.05 and 0.28 <= waited < 0.8


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = RetryPolicy(initial_wait_s=0.5, max_wait_s=3.0, jitter_s=0.25)
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)]:
        wait = policy.backoff(attempt)
        assert base <= wait <= min(base + 0.25, 3.0)


def test_redact_masks_keys_and_bearer_tokens() -> None:
    text = redact("Incorrect API key provided: sk-abc***xyz.\nAuthorization: Bearer abc.def", "abc.def")
    assert "sk-abc" not in text and "abc.def" not in text and "\n" not in text
