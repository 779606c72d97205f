"""The nightly run on real SQLite files and PostgreSQL databases: incremental skips, re-scoring, budgets, the lock, and kill -9 resumes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.activations import record_activations
from neuron_explainer.core.errors import UserError
from neuron_explainer.db import open_database
from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from neuron_records import corpus_windows  # noqa: E402
from scripted_llm import competent_model  # noqa: E402
from db_targets import db_url, integrity, rows  # noqa: E402

WORDS = ["the", "of", "and", "to", "a", "in", "is", "that", "for", "be", "as", "with"]


def _rule(word: str):
    return lambda token: 1.0 if token.strip().lower() == word else 0.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real record store of 12 planted word neurons in layer 0 (same writer as the recorder)."""
    windows = corpus_windows(count=240, length=32)
    vocab = sorted({token for window in windows for token in window})
    index = {token: position for position, token in enumerate(vocab)}
    token_ids = np.array([[index[token] for token in window] for window in windows], dtype=np.int32)
    rules = [_rule(word) for word in WORDS]
    activations = np.array([[[rule(token) for rule in rules] for token in window] for window in windows],
                           dtype=np.float32)
    return record_activations(tmp_path_factory.mktemp("planted") / "records", token_ids=token_ids, vocab=vocab,
                              activations={0: activations})


def _config(store: Path, db: Path | str, **overrides) -> RunConfig:
    values = dict(db=db_url(db), records=str(store), explainers=("ngram",), simulator="lexical",
                  concurrency=4)
    values.update(overrides)
    return RunConfig(**values)


def _rows(db: Path | str, query: str) -> list[tuple]:
    return rows(db, query)


def test_second_run_skips_everything(store: Path, new_db) -> None:
    db = new_db()
    first = run_pipeline(_config(store, db), progress=False)
    assert (first.status, first.explained, first.scored, first.failed) == ("completed", 12, 12, 0)
    positive = first.scores["positive"]
    assert positive["mean"] is not None and positive["mean"] > 0.5
    assert positive["defined"] + positive["undefined"] == 12 and set(first.scores) == {"positive"}
    second = run_pipeline(_config(store, db), progress=False)
    assert (second.done, second.skipped, second.explained, second.scored) == (0, 12, 0, 0)
    assert len(_rows(db, "select id from explanations")) == 12
    assert len(_rows(db, "select id from scores")) == 12
    assert [row[0] for row in _rows(db, "select status from runs")] == ["completed", "completed"]


def test_new_simulator_rescores_without_re_explaining(store: Path, new_db) -> None:
    db = new_db()
    run_pipeline(_config(store, db, neurons="0:0-3"), progress=False)
    with FakeOpenAIServer(responder=competent_model) as server:
        summary = run_pipeline(_config(store, db, neurons="0:0-3", simulator="generated",
                                       llm=server.backend_spec("competent")), progress=False)
        # Only simulation requests: the ngram explanations were reused, not re-made.
        assert server.count("/v1/chat/completions") == 4 * 30
    assert (summary.explained, summary.scored) == (0, 4)
    assert len(_rows(db, "select id from explanations")) == 4
    assert [row[0] for row in _rows(db, "select distinct simulator from scores")] == ["generated", "lexical"]


def test_rescore_replaces_scores_without_duplicates(store: Path, new_db) -> None:
    db = new_db()
    run_pipeline(_config(store, db, neurons="0:0-3"), progress=False)
    before = _rows(db, "select explanation_id, run_id from scores")
    summary = run_pipeline(_config(store, db, neurons="0:0-3", rescore=True), progress=False)
    after = _rows(db, "select explanation_id, run_id from scores")
    assert (summary.explained, summary.scored) == (0, 4)
    assert [row[0] for row in after] == [row[0] for row in before]
    assert {row[1] for row in before} == {1} and {row[1] for row in after} == {summary.run_id} == {2}
    assert _rows(db, "select count(*) from score_windows") == [(4,)]


def test_limit_and_sample(store: Path, tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    limited = run_pipeline(_config(store, db, limit=5), progress=False)
    assert limited.done == 5
    sampled = run_pipeline(_config(store, tmp_path / "s.db", sample=3), progress=False)
    assert sampled.selected == 3


def test_budget_stops_cleanly_and_the_next_run_finishes(store: Path, new_db) -> None:
    db = new_db()
    with FakeOpenAIServer(responder=competent_model) as server:
        spec = server.backend_spec("competent")
        stopped = run_pipeline(_config(store, db, explainers=("token-pairs",), simulator="generated", llm=spec,
                                       concurrency=1, max_tokens=1), progress=False)
        assert stopped.status == "stopped: budget" and stopped.stop_reason.startswith("max-tokens")
        assert stopped.done == 1
        rest = run_pipeline(_config(store, db, explainers=("token-pairs",), simulator="generated", llm=spec),
                            progress=False)
    assert rest.status == "completed" and rest.done == 11 and rest.skipped == 1
    assert len(_rows(db, "select id from scores")) == 12
    assert _rows(db, "select status from runs") == [("completed",), ("stopped: budget",)]
    ledger_tokens = _rows(db, "select sum(prompt_tokens) from llm_calls")[0][0]
    assert ledger_tokens == stopped.prompt_tokens + rest.prompt_tokens


def test_one_run_per_database(store: Path, tmp_path: Path) -> None:
    db = tmp_path / "n.db"
    with open_database(f"sqlite:///{db}") as holder:
        run_id = holder.start_run(config={"holder": True})
        with pytest.raises(UserError, match="lock|running"):
            run_pipeline(_config(store, db), progress=False)
        holder.finish_run(run_id, "completed")
    assert run_pipeline(_config(store, db), progress=False).status == "completed"


def test_negative_budget_is_a_user_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="max-cost"):
        _config(store, tmp_path / "n.db", max_cost=-1)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "neuron_explainer.cli", *args]


def _table_snapshot(db: Path | str) -> dict[str, list[tuple]]:
    return {
        "explanations": _rows(db, "select n.layer, n.neuron, e.method, e.text from explanations e "
                                  "join neurons n on n.id = e.neuron_id"),
        "scores": _rows(db, "select n.layer, n.neuron, s.simulator, round(cast(s.pearson as numeric), 9) from scores s "
                            "join neurons n on n.id = s.neuron_id"),
    }


def test_kill_9_then_resume_equals_an_uninterrupted_run(store: Path, new_db) -> None:
    with FakeOpenAIServer(responder=competent_model, latency=0.01) as server:
        flags = ["run", "--records", str(store), "--explainer", "token-pairs", "--simulator", "generated",
                 "--llm", server.backend_spec("competent"), "--concurrency", "2"]
        reference = new_db()
        subprocess.run(_cli(*flags, "--db", db_url(reference)), check=True, capture_output=True)
        expected = _table_snapshot(reference)
        assert len(expected["scores"]) == 12
        rng = random.Random(7)
        # Fewer trials on PostgreSQL: the same code paths, a second backend (the suite's time stays small).
        for trial in range(2 if isinstance(reference, str) else 3):
            db = new_db()
            process = subprocess.Popen(_cli(*flags, "--db", db_url(db)), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(2.0, 5.0))
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            # The killed run's lock names a dead pid on this host, so the resume takes it over at once.
            subprocess.run(_cli(*flags, "--db", db_url(db)), check=True, capture_output=True)
            assert _table_snapshot(db) == expected
            assert integrity(db) == [("ok",)]


def test_run_baselines_are_a_derangement_over_the_selected_neurons(store: Path, tmp_path: Path) -> None:
    import asyncio
    import json

    from neuron_explainer.activations import RecordStore
    from neuron_explainer.explain import SplitConfig
    from neuron_explainer.scoring import ScoreConfig, compute_baselines, donor_assignment
    from neuron_explainer.simulate import make_simulator
    from neuron_explainer.core.neurons import NeuronId

    db = tmp_path / "b.db"
    summary = run_pipeline(_config(store, db, baselines=True, neurons="0:0-5"), progress=False)
    assert summary.scored == 6
    # Every score has both baselines; none was dropped from the run's shuffled summary.
    shuffled = summary.shuffled["positive"]
    assert shuffled["defined"] + shuffled["undefined"] == 6
    rows = _rows(db, "select n.neuron, e.text, s.baselines_json from scores s join explanations e on "
                     "e.id = s.explanation_id join neurons n on n.id = s.neuron_id")
    texts = {NeuronId(0, neuron): text for neuron, text, _ in rows}
    donors = donor_assignment(texts, seed=0)
    assert sorted(donors) == sorted(texts) and sorted(donors.values()) == sorted(texts)
    assert all(donor != neuron for neuron, donor in donors.items())
    opened = RecordStore.open(store)
    simulator = make_simulator("lexical", None)
    for neuron, _, baselines_json in rows:
        stored = json.loads(baselines_json)
        assert set(stored) == {"shuffled", "empty", "lexical_ceiling"}
        expected = asyncio.run(compute_baselines(opened.load_neuron(0, neuron), simulator,
                                                 shuffled_explanation=texts[donors[NeuronId(0, neuron)]],
                                                 config=ScoreConfig(split=SplitConfig())))
        assert stored["shuffled"] == pytest.approx(expected["shuffled"], nan_ok=True) or (
            stored["shuffled"] is None and expected["shuffled"] != expected["shuffled"])
    # Every run writes the statistics of the neurons it worked on.
    assert len(_rows(db, "select neuron_id from neuron_stats")) == 6
