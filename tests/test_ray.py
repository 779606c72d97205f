"""A night on a real local Ray cluster (`run --ray`): worker actors run the units and store exactly what one process
stores (SQLite: the driver commits the workers' writes; PostgreSQL: the workers write, splitting by leases); one
rate limiter and one token budget hold for the whole night rather than for each worker; a `local:` model in one
actor serves every worker.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from db_targets import db_url, integrity, rows  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from fault_harness import results_snapshot, word_store  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

NEURONS = 12
pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_store(tmp_path_factory.mktemp("ray-words"), neurons=NEURONS, words=NEURONS)


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(responder=competent_model, latency=0.02) as running:
        yield running


def _config(store: Path, db, server, **overrides) -> RunConfig:
    values = dict(db=db_url(db), records=str(store), explainers=("token-pairs",), simulator="generated",
                  llm=server.backend_spec("competent", "timeout=10&attempts=3&backoff=0.01"), concurrency=2,
                  score_top_windows=2, score_random_windows=2, explain_windows=6)
    values.update(overrides)
    return RunConfig(**values)


def _calls(db) -> list[tuple]:
    return rows(db, "select stage, unit, prompt_tokens, completion_tokens from llm_calls order by stage, unit, "
                    "prompt_tokens, completion_tokens")


def test_a_ray_night_stores_what_one_process_stores(store: Path, server, new_db,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    reference = new_db()
    assert run_pipeline(_config(store, reference, server), progress=False).status == "completed"
    db = new_db()
    server.reset()
    with caplog.at_level(logging.INFO, logger="neuron_explainer.pipeline.ray_night"):
        summary = run_pipeline(_config(store, db, server, ray="auto", ray_workers=2, rpm=100_000), progress=False)
    assert summary.status == "completed" and summary.done == NEURONS
    # One bucket for the endpoint's requests, shared by both workers: it granted every request the server saw.
    [line] = [record.getMessage() for record in caplog.records if "rate limiter granted" in record.getMessage()]
    assert line.endswith(f"requests: {server.count()}") and server.count() > 0
    assert results_snapshot(db) == results_snapshot(reference)
    assert len(results_snapshot(db)["scores"]) == NEURONS
    # The same calls, each once, counted by the driver's one run.
    assert _calls(db) == _calls(reference)
    assert summary.prompt_tokens == sum(call[2] for call in _calls(reference))
    [(status, totals)] = rows(db, "select status, totals_json from runs")
    assert status == "completed" and json.loads(totals)["done"] == NEURONS
    assert integrity(db) == [("ok",)]
    if isinstance(db, str):
        return  # the finished-night check below costs a second cluster start-up; once (SQLite) is enough
    # A second Ray night on the finished database does nothing.
    again = run_pipeline(_config(store, db, server, ray="auto", ray_workers=2), progress=False)
    assert (again.status, again.done, again.skipped) == ("completed", 0, NEURONS)


def test_a_token_budget_bounds_the_whole_night_not_each_worker(store: Path, server, tmp_path: Path) -> None:
    reference = tmp_path / "reference.db"
    assert run_pipeline(_config(store, reference, server), progress=False).status == "completed"
    per_neuron = [int(total) for (total,) in rows(
        reference, "select sum(prompt_tokens + completion_tokens) from llm_calls group by unit")]
    budget = 4 * max(per_neuron)
    assert sum(per_neuron) > 2 * budget  # per-worker budgets would let two workers spend more than the night's
    db = tmp_path / "budget.db"
    summary = run_pipeline(_config(store, db, server, ray="auto", ray_workers=2, concurrency=1, max_tokens=budget),
                           progress=False)
    assert summary.status == "stopped: budget" and summary.stop_reason == f"max-tokens {budget}"
    [(spent,)] = rows(db, "select sum(prompt_tokens + completion_tokens) from llm_calls")
    # Reached, and overshot by at most the one unit each worker had in flight when it was.
    assert budget <= int(spent) <= budget + 2 * max(per_neuron)
    assert summary.prompt_tokens + summary.completion_tokens == int(spent)


def test_a_local_model_serves_every_worker_from_one_actor(store: Path, tmp_path: Path, tiny_llama: Path) -> None:
    import ray

    def night(db: Path, **ray_settings) -> object:
        config = RunConfig(db=str(db), records=str(store), explainers=("token-pairs", "ngram"),
                           simulator="all-at-once", llm=f"local:{tiny_llama}", neurons="0:0-3", concurrency=2,
                           score_top_windows=2, score_random_windows=2, explain_windows=4, device="cpu",
                           dtype="float32", **ray_settings)
        return run_pipeline(config, progress=False)

    reference = night(tmp_path / "one.db")
    summary = night(tmp_path / "ray.db", ray="auto", ray_workers=2)
    assert summary.status == reference.status == "completed"
    failures = "select layer, neuron, stage, config_key, reason from failures order by 1, 2, 3, 4"
    assert rows(tmp_path / "ray.db", failures) == rows(tmp_path / "one.db", failures)
    assert results_snapshot(tmp_path / "ray.db") == results_snapshot(tmp_path / "one.db")
    assert len(results_snapshot(tmp_path / "ray.db")["scores"]) >= 4
    # The model's calls, counted under each worker's units: the same as in one process.
    assert _calls(tmp_path / "ray.db") == _calls(tmp_path / "one.db") and _calls(tmp_path / "one.db")
    # The model actor is gone with the night, as is every other actor of it.
    assert not [actor for actor in ray.util.list_named_actors(all_namespaces=True)
                if actor["namespace"] == "neuron-explainer"]
