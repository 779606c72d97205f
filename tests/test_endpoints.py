"""`openai:MODEL@URL1,URL2,...`: one model behind several loopback servers; requests spread by load, and a night
finishes when one endpoint is down."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.llm import make_backend
from neuron_explainer.llm.factory import parse_backend_spec
from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from db_targets import rows  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from fault_harness import word_store  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

NEURONS = 6


def _closed_url() -> str:
    with FakeOpenAIServer() as gone:
        url = gone.base_url
    return url  # the server is stopped: connections to its port are refused


def test_requests_spread_over_every_live_endpoint() -> None:
    with FakeOpenAIServer(latency=0.05) as first, FakeOpenAIServer(latency=0.05) as second:
        backend = make_backend(f"openai:m@{first.base_url},{second.base_url}?concurrency=2")
        assert backend.name == f"openai:m@{first.base_url},{second.base_url}"

        async def many() -> None:
            await asyncio.gather(*(backend.generate(f"prompt {index}") for index in range(12)))
            await backend.aclose()

        asyncio.run(many())
        assert first.count() + second.count() == 12
        assert first.count() >= 4 and second.count() >= 4
        # Per-endpoint concurrency: neither server saw more than its endpoint's limit at once.
        assert first.max_in_flight <= 2 and second.max_in_flight <= 2


def test_a_night_finishes_with_one_endpoint_down(tmp_path: Path) -> None:
    store = word_store(tmp_path / "words", neurons=NEURONS, words=NEURONS)
    down = _closed_url()
    with FakeOpenAIServer(responder=competent_model) as live:
        spec = f"openai:competent@{down},{live.base_url}?attempts=2&backoff=0.01&timeout=5"
        config = RunConfig(db=f"sqlite:///{tmp_path / 'n.db'}", records=str(store), explainers=("token-pairs",),
                           simulator="generated", llm=spec, concurrency=2, score_top_windows=2,
                           score_random_windows=2, explain_windows=6)
        summary = run_pipeline(config, progress=False)
        assert (summary.status, summary.failed, summary.scored) == ("completed", 0, NEURONS)
        assert live.count() > 0
    assert rows(tmp_path / "n.db", "select count(*) from failures") == [(0,)]


def test_all_endpoints_down_fails_the_unit_not_silently() -> None:
    backend = make_backend(f"openai:m@{_closed_url()},{_closed_url()}?attempts=1&timeout=2")

    async def one() -> None:
        try:
            await backend.generate("hello")
        finally:
            await backend.aclose()

    from neuron_explainer.llm.errors import LLMTransientError

    with pytest.raises(LLMTransientError):
        asyncio.run(one())
    assert all(not healthy and failures == 1 for _, healthy, failures in backend.health())


def test_malformed_url_lists_are_user_errors() -> None:
    with pytest.raises(UserError, match="URL list"):
        parse_backend_spec("openai:m@http://127.0.0.1:9/v1,127.0.0.1:10/v1")
