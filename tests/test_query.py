"""Queries over real SQLite files and PostgreSQL databases: filters, best-per-neuron semantics, sorting, hostile input, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db_targets import db_url, integrity, rows
from fixtures.db_factory import explain_key, explanation, populate, register, score, score_key
from neuron_explainer.cli import main
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import Database, ExplanationQuery, open_database

NAN = float("nan")

ITEMS = [
    (0, 0, "token-pairs", "the keyword def", 0.9),
    (0, 1, "token-pairs", "closing parentheses", 0.3),
    (0, 1, "sasc", "function call syntax", 0.7),
    (1, 5, "token-pairs", "numbers in version strings", 0.5),
    (1, 6, "token-pairs", "constant", NAN),
    (2, 0, "ngram", "Python keywords", 0.8),
    (2, 1, "token-pairs", "tie breaker first", 0.4),
    (2, 1, "sasc", "tie breaker second", 0.4),
]

HOSTILE = [
    "it's a \"quoted\" 'word'",
    "x'; DROP TABLE explanations; --",
    "100% of the time",
    "snake_case names",
    "percent 100 of",
    "snakeXcase",
    "back\\slash and \"double\"\" quotes",
    "OR 1=1 -- ",
    "NEAR(a b) AND * ^col:",
]


@pytest.fixture()
def database(new_db):
    with open_database(db_url(new_db())) as opened:
        populate(opened, ITEMS)
        yield opened


def _neurons(rows) -> list[str]:
    return [str(row.neuron) for row in rows]


def test_best_per_neuron_by_default_sorted_by_score(database: Database) -> None:
    rows = database.query(ExplanationQuery())
    assert _neurons(rows) == ["0:0", "2:0", "0:1", "1:5", "2:1", "1:6"]
    assert [row.method for row in rows][2] == "sasc"  # 0.7 beats 0.3 for neuron 0:1
    assert rows[4].text == "tie breaker first"  # equal scores: the older row wins
    assert rows[-1].undefined_reason == "constant simulation" and rows[-1].score != rows[-1].score  # NaN last


def test_every_pair_and_other_sort_orders(database: Database) -> None:
    assert len(database.query(ExplanationQuery(best_per_neuron=False, limit=None))) == len(ITEMS)
    by_layer = database.query(ExplanationQuery(sort="layer"))
    assert _neurons(by_layer) == ["0:0", "0:1", "1:5", "1:6", "2:0", "2:1"]
    newest = database.query(ExplanationQuery(sort="created", best_per_neuron=False, limit=2))
    assert [row.text for row in newest] == ["tie breaker second", "tie breaker first"]
    assert len(database.query(ExplanationQuery(limit=2))) == 2


@pytest.mark.parametrize("filters", [
    {}, {"method": "token-pairs"}, {"max_score": 0.5}, {"min_score": 0.35, "layers": (0, 2)},
    {"search": "tie"}, {"search": "e", "sort": "layer"}, {"sort": "created"}, {"best_per_neuron": False},
    {"best_per_neuron": False, "min_score": 0.3, "sort": "layer"}, {"neurons": (1,), "simulator": "lexical"},
], ids=str)
def test_unlimited_queries_match_limited_ones(database: Database, filters: dict) -> None:
    # Unlimited queries rank candidates in one window-function pass; limited ones walk an index with NOT EXISTS.
    every = database.query(ExplanationQuery(limit=None, **filters))
    limited = database.query(ExplanationQuery(limit=1000, **filters))
    assert [row.score_id for row in every] == [row.score_id for row in limited] and every


def test_filters(database: Database) -> None:
    assert _neurons(database.query(ExplanationQuery(layers=(1, 2)))) == ["2:0", "1:5", "2:1", "1:6"]
    assert _neurons(database.query(ExplanationQuery(layers=(0,), neurons=(1,)))) == ["0:1"]
    assert _neurons(database.query(ExplanationQuery(min_score=0.5))) == ["0:0", "2:0", "0:1", "1:5"]
    # The range applies to each neuron's best: 0:1 (best 0.7) is not "poorly explained".
    assert _neurons(database.query(ExplanationQuery(max_score=0.5))) == ["1:5", "2:1"]
    assert _neurons(database.query(ExplanationQuery(min_score=0.4, max_score=0.5))) == ["1:5", "2:1"]
    method_rows = database.query(ExplanationQuery(method="token-pairs"))
    assert [(str(row.neuron), row.score) for row in method_rows][:3] == [("0:0", 0.9), ("1:5", 0.5), ("2:1", 0.4)]
    assert ("0:1", 0.3) in [(str(row.neuron), row.score) for row in method_rows]
    assert _neurons(database.query(ExplanationQuery(method="ngram"))) == ["2:0"]
    assert database.query(ExplanationQuery(model="another-model")) == []
    assert len(database.query(ExplanationQuery(model="tiny-llama"))) == 6
    assert database.query(ExplanationQuery(explainer_model="gpt-4o")) == []
    assert database.query(ExplanationQuery(simulator="embedding")) == []
    assert database.query(ExplanationQuery(run_id=1)) == []


def test_search_uses_substrings_case_insensitively(database: Database) -> None:
    # SQLite uses its FTS5 trigram index; PostgreSQL has none and matches with ILIKE.
    assert database.search_index == (database.url.get_backend_name() == "sqlite")
    assert [row.text for row in database.query(ExplanationQuery(search="KEYWORD", best_per_neuron=False))] == [
        "the keyword def", "Python keywords"]
    assert _neurons(database.query(ExplanationQuery(search="tie breaker"))) == ["2:1"]
    assert [row.text for row in database.query(ExplanationQuery(search="second"))] == ["tie breaker second"]
    assert _neurons(database.query(ExplanationQuery(search="de"))) == ["0:0"]  # short: LIKE path
    assert database.query(ExplanationQuery(search="zebra")) == []


def test_both_search_plans_give_the_same_rows(tmp_path: Path) -> None:
    from neuron_explainer.db.query import run_query

    words = ["alpha", "beta", "gamma", "delta"]
    items = [(index % 3, index, "token-pairs" if index % 4 else "sasc", f"{words[index % 4]} {words[index % 3]} x",
              ((index * 37) % 100) / 100) for index in range(120)]
    with open_database(str(tmp_path / "plans.db")) as database:
        populate(database, items)
        populate(database, [(layer, index, "ngram", f"{words[index % 2]} again", 0.5)
                            for layer, index, *_ in items[:40]])
        for query in (ExplanationQuery(search="alpha", limit=7), ExplanationQuery(search="gamma beta", limit=None),
                      ExplanationQuery(search="pha", method="sasc"), ExplanationQuery(search="beta", layers=(1,)),
                      ExplanationQuery(search="again", min_score=0.4, limit=5)):
            with database._read_engine.connect() as connection:
                plans = [[(str(row.neuron), row.score_id) for row in run_query(
                    connection, query, search_index=True, walk_scores=walk)] for walk in (True, False, None)]
                like = [(str(row.neuron), row.score_id) for row in run_query(
                    connection, query, search_index=False)]
            assert plans[0] == plans[1] == plans[2] == like and plans[0], query


def test_simulator_and_run_filters_pick_the_matching_score(new_db) -> None:
    with open_database(db_url(new_db())) as database:
        run_id = database.start_run(config={})
        recording = register(database)
        neuron = NeuronId(4, 4)
        database.record_explanation(recording, explanation(neuron, "x"), config_key=explain_key())
        database.record_score(recording, score(neuron, 0.2), explanation_key=explain_key(), config_key=score_key())
        database.record_score(recording, score(neuron, 0.6, simulator="embedding"), explanation_key=explain_key(),
                              config_key=score_key("embedding"), run_id=run_id)
        database.flush()
        assert [row.score for row in database.query(ExplanationQuery())] == [0.6]
        assert [row.score for row in database.query(ExplanationQuery(simulator="lexical"))] == [0.2]
        assert [row.simulator for row in database.query(ExplanationQuery(run_id=run_id))] == ["embedding"]


def test_invalid_queries_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown method"):
        ExplanationQuery(method="x'; DROP TABLE explanations; --")
    with pytest.raises(UserError, match="unknown simulator"):
        ExplanationQuery(simulator="nope")
    with pytest.raises(UserError, match="above max-score"):
        ExplanationQuery(min_score=0.9, max_score=0.1)
    with pytest.raises(UserError, match="limit"):
        ExplanationQuery(limit=0)
    with pytest.raises(ValueError):
        ExplanationQuery(sort="random()")


@pytest.mark.parametrize("search_index", [True, False], ids=["fts5", "like"])
def test_hostile_strings_match_literally_and_leave_tables_intact(new_db, search_index: bool) -> None:
    path = new_db()
    with open_database(db_url(path)) as database:
        populate(database, [(5, index, "token-pairs", text, 0.5) for index, text in enumerate(HOSTILE)])
        database.search_index = search_index and database.search_index
        needles = ["'", "\"", "'; DROP TABLE explanations; --", "%", "_", "100%", "e_c", "\\", "\"\"",
                   "1=1 --", "NEAR(", "* ^col:", "DROP TABLE explanations", "0%_o"]
        for needle in needles:
            expected = sorted(text for text in HOSTILE if needle.lower() in text.lower())
            found = sorted(row.text for row in database.query(
                ExplanationQuery(search=needle, best_per_neuron=False, limit=None)))
            assert found == expected, needle
        assert database.query(ExplanationQuery(model="'; DROP TABLE scores; --")) == []
        assert database.query(ExplanationQuery(explainer_model="' OR '1'='1")) == []
        assert database.counts()["explanations"] == len(HOSTILE)
    tables = {name for (name,) in rows(path, "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                             "'public'" if isinstance(path, str) else
                                             "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"explanations", "scores", "neurons", "runs"} <= tables
    assert integrity(path) == [("ok",)]


def test_user_values_reach_sql_only_as_bound_parameters() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    from neuron_explainer.db.query import build_select

    hostile = "x'); DROP TABLE scores; --"
    query = ExplanationQuery(layers=(1,), min_score=0.2, search=hostile, model=hostile, explainer_model=hostile)
    for dialect, search_index in ((sqlite.dialect(), True), (sqlite.dialect(), False), (postgresql.dialect(), False)):
        compiled = build_select(query, search_index=search_index).compile(dialect=dialect)
        assert "DROP" not in str(compiled)
        assert any(hostile in str(value) for value in compiled.params.values())


def test_cli_query_formats(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    url = database.where
    assert main(["query", "--db", url, "--layer", "0-1", "--min-score", "0.4"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["neuron", "polarity", "score", "method"]
    assert [line.split()[0] for line in table[1:]] == ["0:0", "0:1", "1:5"]
    assert main(["query", "--db", url, "--format", "json", "--search", "keyword", "--all", "--sort", "layer"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["layer"], row["neuron"], row["text"]) for row in rows] == [
        (0, 0, "the keyword def"), (2, 0, "Python keywords")]
    assert rows[0]["explanation_parameters"] == {"examples": 5, "temperature": 0.0}
    assert main(["query", "--db", url, "--format", "csv", "--limit", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("layer,neuron,model_id") and lines[1].startswith("0,0,tiny-llama")
    assert main(["query", "--db", url, "--search", "nothing like this"]) == 0
    assert capsys.readouterr().out.strip() == "no matching explanations"


def test_cli_show(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "0:1", "--db", database.where]) == 0
    page = capsys.readouterr().out
    assert page.index("function call syntax") < page.index("closing parentheses")  # best first
    assert "score 0.700 [0.60, 0.80]" in page
    assert "window 11 (score-top), max true activation 2.50" in page
    true_line = next(line.split() for line in page.splitlines() if line.split()[:1] == ["true"])
    simulated_line = next(line.split() for line in page.splitlines() if line.split()[:1] == ["sim"])
    assert true_line[1:] == [f"{value:.1f}" for value in (2.5, 0.25, 0.0, -0.125)]
    assert simulated_line[1:] == ["9.0", "1.0", "0.0", "0.0"]
    assert main(["show", "0:1", "--db", database.where, "--format", "json"]) == 0
    [detail] = json.loads(capsys.readouterr().out)
    assert [entry["method"] for entry in detail["explanations"]] == ["sasc", "token-pairs"]
    windows = detail["explanations"][0]["scores"][0]["windows"]
    assert windows[0]["tokens"] == ["def", " main", "(", ")"] and windows[0]["split"] == "score-top"
    assert windows[0]["true_activations"][0] == 2.5 and windows[0]["simulated_activations"][0] == 9.0


def test_cli_errors_are_one_line(tmp_path: Path, database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--db", str(tmp_path / "absent.db")]) == 2
    assert "no database at" in capsys.readouterr().err
    assert main(["query", "--db", database.where, "--layer", "3-1"]) == 2
    assert "malformed layer filter" in capsys.readouterr().err
    assert main(["query", "--db", database.where, "--method", "bogus"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["show", "9:9", "--db", database.where]) == 2
    assert "not in" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()


def test_cli_show_with_records_prints_the_windows_the_explainer_saw(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neuron_records import planted_store

    from neuron_explainer.activations import RecordStore

    records = planted_store(tmp_path)
    store = RecordStore.open(records)
    digits = store.load_neuron(3, 0)
    url = str(tmp_path / "r.db")
    with open_database(url) as database:
        recording = database.register_recording(model_id=store.manifest.model_id, fingerprint="fp", path=records,
                                                manifest={"recording_id": store.manifest.recording_id},
                                                manifest_hash=store.manifest.recording_id)
        made = explanation(NeuronId(3, 0), "digits")
        made = made.__class__(**{**made.__dict__,
                                 "source_window_ids": tuple(w.window_id for w in digits.top_windows[:2])})
        database.record_explanation(recording, made, config_key=explain_key())
        database.record_score(recording, score(NeuronId(3, 0), 0.8), explanation_key=explain_key(),
                              config_key=score_key())
    assert main(["show", "3:0", "--db", url, "--records", str(records), "--windows", "1"]) == 0
    page = capsys.readouterr().out
    assert "windows shown to the explainer for 3:0 (2 of 2 found" in page
    first = digits.top_windows[0]
    assert f"window {first.window_id} (explain), max true activation {max(first.activations):.2f}" in page
