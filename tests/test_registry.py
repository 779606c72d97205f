"""Adding an explainer is one module plus one registry line: a toy explainer runs through `run`, `eval planted`
and `explain` like the built-in ones, and what a stage needs is read from its declaration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from neuron_explainer.cli import main
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain import EXPLAINERS, register_explainer
from neuron_explainer.scoring import SCORERS
from neuron_explainer.simulate import SIMULATORS

sys.path.insert(0, str(Path(__file__).parent))
from test_eval_planted import SMALL_SUITE, tiny_tokenizer  # noqa: E402,F401 - fixture import
from toy_explainer import ToyExplainer  # noqa: E402


@pytest.fixture()
def toy_registered(monkeypatch):
    """The toy explainer registered for one test only."""
    monkeypatch.setattr(EXPLAINERS, "_items", dict(EXPLAINERS._items))
    register_explainer(ToyExplainer)  # the one registry line a new explainer needs
    yield


def test_a_registered_toy_explainer_runs_through_eval_run_and_explain(toy_registered, tmp_path, tiny_tokenizer,
                                                                      capsys):
    suite = tmp_path / "small.toml"
    suite.write_text(SMALL_SUITE, encoding="utf-8")
    store_dir = tmp_path / "planted"
    assert main(["eval", "planted", "--planted", str(suite), "--tokenizer", tiny_tokenizer, "--windows", "300",
                 "--ctx", "32", "--store", str(store_dir), "--explainer", "toy", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (method,) = report["methods"]
    assert (method["explainer"], method["simulator"], method["backend"]) == ("toy", "lexical", "none")
    explained = [item["explanation"] for item in method["neurons"] if item["explanation"]]
    assert explained and all(text.startswith('the token "') for text in explained)

    store = report["store"]
    db = tmp_path / "toy.db"
    assert main(["run", "--records", store, "--db", f"sqlite:///{db}", "--explainer", "toy,ngram",
                 "--simulator", "lexical", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["explained"] == 2 * summary["selected"] > 0
    assert main(["query", "--db", f"sqlite:///{db}", "--method", "toy", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == summary["selected"] and {row["method"] for row in rows} == {"toy"}

    out = tmp_path / "toy.jsonl"
    assert main(["explain", "--records", store, "--neurons", "0:0-1", "--explainer", "toy", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["method"] for line in lines] == ["toy", "toy"]
    assert all(line["text"].startswith('the token "') for line in lines)


def test_unknown_names_list_the_registered_ones_and_needs_are_declared(toy_registered):
    with pytest.raises(UserError, match="unknown explainer 'magic': choose one of token-pairs, sasc, ngram, lexicon, toy"):
        EXPLAINERS.get("magic")
    assert [name for name in EXPLAINERS if EXPLAINERS.get(name).needs.llm] == ["token-pairs", "sasc"]
    assert [name for name in EXPLAINERS if EXPLAINERS.get(name).needs.subject] == ["sasc"]
    assert [name for name in SIMULATORS if SIMULATORS.get(name).needs.llm] == ["all-at-once", "generated"]
    assert SIMULATORS.get("all-at-once").needs.slot_distributions
    import neuron_explainer.scoring_llm  # noqa: F401 - registers detection and fuzzing

    assert SCORERS.names() == ["simulation", "detection", "fuzzing"]
    assert [name for name in SCORERS if SCORERS.get(name).needs.llm] == ["detection", "fuzzing"]
