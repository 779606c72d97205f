"""`run --causal` end to end on a tiny real model: stored causal scores, resume, `show`, and the bad inputs."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.activations import RecordConfig, record, record_activations
from neuron_explainer.cli import main
from neuron_explainer.db import open_database
from neuron_explainer.db.causal import load_causal_scores
from neuron_explainer.pipeline import RunConfig, run_pipeline
from neuron_explainer.core.neurons import NeuronId

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import SAMPLE_TEXT  # noqa: E402


@pytest.fixture(scope="module")
def tiny_store(tiny_model_factory, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("causal")
    # Many short documents: splits keep a document's windows on one side, so one long file would leave nothing
    # to score.
    corpus = directory / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for _ in range(8)
                              for line in SAMPLE_TEXT.splitlines()), encoding="utf-8")
    path = directory / "records"
    record(RecordConfig(model=str(tiny_model_factory("llama")), corpus=str(corpus), layers="all", window_length=16,
                        windows=40, top_k=12, random_k=12, dtype="float32"), path, progress=False)
    return path


def _config(store: Path, db: Path, **overrides) -> RunConfig:
    values = dict(db=f"sqlite:///{db}", records=str(store), explainers=("ngram",), simulator="lexical",
                  neurons="1:0-3", explain_windows=4, score_top_windows=4, score_random_windows=4, concurrency=2,
                  dtype="float32", causal=True)
    values.update(overrides)
    return RunConfig(**values)


def test_run_causal_stores_a_causal_score_per_score_resumes_and_reaches_query(tiny_store, tmp_path, capsys):
    db = tmp_path / "n.db"
    summary = run_pipeline(_config(tiny_store, db), progress=False)
    assert summary.scored == 4 and summary.causal["scored"] == 4
    assert set(summary.causal["seconds_per_layer"]) == {1}
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT score_id, value, ci_low, ci_high, ablation, details_json "
                                  "FROM causal_scores").fetchall()
    assert len(rows) == 4
    for _, value, low, high, ablation, details in rows:
        assert ablation == "mean"
        parsed = json.loads(details)
        assert parsed["windows"] == 8 and parsed["tokens"] == 8 * 16  # 4 top + 4 random held-out windows
        assert parsed["kl_ablated"] > 0
        if value is not None:
            assert low <= value + 1e-9 and value <= high + 1e-9
            assert value == pytest.approx(1 - parsed["kl_simulated"] / parsed["kl_ablated"], rel=1e-6)
    again = run_pipeline(_config(tiny_store, db), progress=False)
    assert again.causal["scored"] == 0  # every score already has its causal score
    with open_database(str(db), create=False) as database:
        detail = database.neuron_details(NeuronId(1, 2))[0]
        ids = [item.id for stored in detail.explanations for item in stored.scores]
        [causal] = load_causal_scores(database, ids).values()
        assert causal.windows == 8 and not math.isnan(causal.kl_ablated)
    assert main(["show", "1:2", "--db", str(db)]) == 0
    assert "causal scores (1 - KL_sim / KL_ablate" in capsys.readouterr().out
    assert main(["show", "1:2", "--db", str(db), "--format", "json"]) == 0
    [shown] = json.loads(capsys.readouterr().out)
    assert list(shown["causal_scores"].values())[0]["windows"] == 8
    _causal_reaches_query_and_exports(db, rows, tmp_path, capsys)


def _causal_reaches_query_and_exports(db: Path, rows: list, tmp_path: Path, capsys) -> None:
    stored = {value for _, value, *_ in rows}
    assert main(["query", "--db", str(db), "--format", "json"]) == 0
    queried = json.loads(capsys.readouterr().out)
    assert len(queried) == 4 and {row["causal"]["value"] for row in queried} == stored
    assert all(row["causal"]["ablation"] == "mean" for row in queried)
    assert main(["query", "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:4] == ["neuron", "polarity", "score", "causal"]
    assert main(["export", "--db", str(db), "--format", "csv", "--out", str(tmp_path / "x.csv")]) == 0
    import csv

    with open(tmp_path / "x.csv", newline="", encoding="utf-8") as handle:
        exported = list(csv.DictReader(handle))
    assert {json.loads(row["causal"])["value"] for row in exported} == stored
    assert main(["export", "--db", str(db), "--format", "jsonl", "--out", str(tmp_path / "x.jsonl")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {entry["causal"]["value"] for line in lines for entry in line["explanations"]} == stored
    site = tmp_path / "site"
    assert main(["export", "--db", str(db), "--format", "html", "--out", str(site)]) == 0
    pages = [path.read_text(encoding="utf-8") for path in site.rglob("*.html")]
    neuron_pages = [text for text in pages if "data-score-id" in text]
    # Each neuron's score row shows its causal score, with the interval (or why it is undefined) on hover.
    assert len(neuron_pages) == 4
    assert all(">causal</th>" in text and ("mean ablation, 95% CI [" in text or "changes nothing" in text)
               for text in neuron_pages)


def test_rescore_drops_the_old_causal_scores(tiny_store, tmp_path):
    db = tmp_path / "r.db"
    run_pipeline(_config(tiny_store, db, neurons="1:0"), progress=False)
    summary = run_pipeline(_config(tiny_store, db, neurons="1:0", rescore=True), progress=False)
    assert summary.causal["scored"] == 1
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT count(*) FROM causal_scores").fetchone() == (1,)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neuron_explainer.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_causal_on_a_store_whose_model_is_not_loadable(tmp_path):
    windows = np.arange(8 * 6, dtype=np.int32).reshape(8, 6) % 5
    store = record_activations(tmp_path / "planted", token_ids=windows, vocab=[f"t{i}" for i in range(5)],
                               activations={0: np.ones((8, 6, 2), dtype=np.float32)}, model_id="synthetic")
    result = _cli("run", "--records", str(store), "--db", "sqlite:///n.db", "--explainer", "ngram", "--simulator",
                  "lexical", "--causal", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "not loadable" in result.stderr
    assert not (tmp_path / "n.db").exists()


def test_causal_without_calibration_windows(tiny_store, tmp_path):
    result = _cli("run", "--records", str(tiny_store), "--db", "sqlite:///n.db", "--explainer", "ngram",
                  "--simulator", "lexical", "--neurons", "1:0", "--explain-windows", "6", "--score-top-windows", "6",
                  "--score-random-windows", "12", "--causal", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "calibrate" in result.stderr
    assert not (tmp_path / "n.db").exists()


def test_weight_views_reach_show_and_the_viewer(tiny_store, tmp_path, capsys):
    db = tmp_path / "w.db"
    run_pipeline(_config(tiny_store, db, neurons="1:1", causal=False), progress=False)
    assert main(["weights", "--records", str(tiny_store), "--top", "8"]) == 0
    capsys.readouterr()
    assert main(["show", "1:1", "--db", str(db), "--records", str(tiny_store)]) == 0
    assert "weight view of 1:1" in capsys.readouterr().out
    assert main(["show-record", "1:1", "--records", str(tiny_store), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["weight_view"]["promoted"]) == 8
    site = tmp_path / "site"
    assert main(["export", "--db", str(db), "--format", "html", "--out", str(site), "--records", str(tiny_store)]) == 0
    [page] = [path for path in site.rglob("*.html") if "What the weights say" in path.read_text(encoding="utf-8")]
    assert "Output tokens raised" in page.read_text(encoding="utf-8")
    assert main(["weights", "--records", str(tiny_store), "--out", str(tmp_path / "v.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 48 and {"promoted", "suppressed", "exciting", "inhibiting"} <= set(rows[0])


def test_an_upgraded_version_1_database_takes_causal_scores(tmp_path):
    import shutil

    from neuron_explainer.causal import Ablation, WindowDivergence, causal_score
    from neuron_explainer.db.causal import record_causal_scores

    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "neurons_v1.db", path)
    score = causal_score([WindowDivergence(1, 4, 0.5, 2.0, 4.0, 4.5, 6.0)], ablation=Ablation.MEAN,
                         ablation_value=0.1, bootstrap_samples=10)
    with open_database(str(path), create=False) as database:
        [old] = database.neuron_details(NeuronId(0, 2))[0].explanations[0].scores
        record_causal_scores(database, {old.id: score})
        stored = load_causal_scores(database, [old.id])[old.id]
    assert stored.value == pytest.approx(0.75) and stored.windows == 1 and stored.loss_recovered == pytest.approx(0.75)
    assert stored.ablation == "mean" and stored.undefined_reason is None


def test_the_causal_phase_stops_at_the_runs_limit_and_the_next_run_finishes(tiny_store, tmp_path, monkeypatch):
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.pipeline import causal as causal_phase

    db = tmp_path / "d.db"
    run_pipeline(_config(tiny_store, db, causal=False), progress=False)
    monkeypatch.setattr(causal_phase, "REQUESTS_PER_GROUP", 2)
    answers = iter([None, "deadline 06:30"])
    with open_database(str(db), create=False) as database:
        summary = causal_phase.run_causal(database, RecordStore.open(tiny_store), [NeuronId(1, n) for n in range(4)],
                                          run_id=None, dtype="float32", should_stop=lambda: next(answers))
    assert (summary.scored, summary.left, summary.stop_reason) == (2, 2, "deadline 06:30")
    again = run_pipeline(_config(tiny_store, db), progress=False)
    assert again.status == "completed" and again.causal["scored"] == 2 and again.causal["stop_reason"] is None
