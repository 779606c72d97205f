"""The `score` command picks its scorer from the registry (simulation, detection, fuzzing) by --scorer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from neuron_explainer.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from neuron_records import planted_store  # noqa: E402
from scripted_llm import competent_model  # noqa: E402


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A planted store (3:0 fires on digits, 3:1 on "the") and the competent model's explanations of it."""
    directory = tmp_path_factory.mktemp("score-command")
    store = planted_store(directory)
    explanations = directory / "explanations.jsonl"
    with FakeOpenAIServer(responder=competent_model) as server:
        assert main(["explain", "--records", str(store), "--neurons", "3:*", "--llm", server.backend_spec("competent"),
                     "--out", str(explanations)]) == 0
    return store, explanations


def _lines(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()),
                  key=lambda item: item["neuron"])


@pytest.mark.parametrize("scorer", ["detection", "fuzzing"])
def test_score_with_a_classifying_scorer_writes_its_scores(explained, tmp_path, scorer, capsys):
    store, explanations = explained
    out = tmp_path / "scores.jsonl"
    with FakeOpenAIServer(responder=competent_model) as server:
        assert main(["score", "--records", str(store), "--explanations", str(explanations), "--scorer", scorer,
                     "--llm", server.backend_spec("competent"), "--out", str(out), "--json"]) == 0
        requests = server.count("/v1/chat/completions")
    summary = json.loads(capsys.readouterr().out)
    assert summary["succeeded"] == 2 and summary["failed"] == 0 and summary["prompt_tokens"] > 0
    scores = _lines(out)
    assert [(score["type"], score["neuron"], score["scorer"]) for score in scores] == [
        ("classifier_score", "3:0", scorer), ("classifier_score", "3:1", scorer)]
    digits = scores[0]
    assert "digits" in digits["explanation_text"] and digits["metrics"]["balanced_accuracy"] == 1.0
    assert digits["passages"] and requests >= 2


def test_score_defaults_to_the_simulation_scorer(explained, tmp_path):
    store, explanations = explained
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--records", str(store), "--explanations", str(explanations), "--neurons", "3:0",
                 "--out", str(out), "--baselines"]) == 0
    (score,) = _lines(out)
    assert score["type"] == "score" and score["simulator"] == "lexical" and "shuffled" in score["baselines"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--scorer", "magic"], "unknown scorer 'magic': choose one of simulation, detection, fuzzing"),
    (["--scorer", "detection"], "--scorer detection asks a chat model: give one with --llm"),
    (["--scorer", "fuzzing", "--llm", "openai:x@http://127.0.0.1:9/v1", "--baselines"],
     "--baselines: the fuzzing scorer has no baselines"),
])
def test_a_scorer_that_cannot_run_is_one_line_and_writes_nothing(explained, tmp_path, capsys, extra, message):
    store, explanations = explained
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--records", str(store), "--explanations", str(explanations), "--out", str(out),
                 *extra]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not out.exists()


def test_score_help_names_the_scorers(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert "--scorer" in text and "detection" in text and "fuzzing" in text
