"""`--explain-with-weights`: the token-pairs prompt carries the neuron's weight views, as its own explainer config."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from neuron_explainer.activations import RecordConfig, RecordStore, record
from neuron_explainer.activations.weight_views import (NeuronWeightView, TokenWeight, WeightViews,
                                                       compute_weight_views)
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.prompts import load_prompt_files
from neuron_explainer.explain import Polarity, printable_token
from neuron_explainer.explain.token_pairs import PROMPT_FILES_WITH_WEIGHTS, weight_view_text
from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from tiny_models import SAMPLE_TEXT  # noqa: E402

WEIGHTS_HEADER = "here is what the neuron's weights say"


@pytest.fixture(scope="module")
def stores(tiny_model_factory, tmp_path_factory) -> tuple[Path, Path]:
    """(a store with weight views, the same store without them)."""
    directory = tmp_path_factory.mktemp("weights")
    corpus = directory / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": line}) + "\n" for _ in range(4)
                              for line in SAMPLE_TEXT.splitlines()), encoding="utf-8")
    plain = directory / "plain"
    record(RecordConfig(model=str(tiny_model_factory("llama")), corpus=str(corpus), layers="1", window_length=16,
                        windows=40, top_k=12, random_k=12, dtype="float32"), plain, progress=False)
    with_views = directory / "views"
    shutil.copytree(plain, with_views)
    compute_weight_views(with_views, top_k=6, dtype="float32")
    return with_views, plain


def _answer(body: dict) -> str:
    return 'the word "def"'


def _explain_requests(server: FakeOpenAIServer) -> list[list[dict]]:
    return [request.body["messages"] for request in server.requests if request.path == "/v1/chat/completions"]


def _config(store: Path, db: Path, spec: str, **overrides) -> RunConfig:
    values = dict(db=f"sqlite:///{db}", records=str(store), explainers=("token-pairs",), simulator="lexical",
                  llm=spec, neurons="1:0-1", explain_windows=4, score_top_windows=4, score_random_windows=4,
                  concurrency=2, polarity="positive")
    values.update(overrides)
    return RunConfig(**values)


def test_the_prompt_carries_the_views_and_results_with_and_without_are_distinct(stores, tmp_path):
    store, _ = stores
    db = tmp_path / "n.db"
    views = WeightViews.open(RecordStore.open(store))
    with FakeOpenAIServer(responder=_answer) as server:
        summary = run_pipeline(_config(store, db, server.backend_spec(), explain_with_weights=True), progress=False)
        assert (summary.explained, summary.failed) == (2, 0)
        requests = _explain_requests(server)
        assert len(requests) == 2
        for messages in requests:
            request = messages[-1]["content"]
            assert WEIGHTS_HEADER in request
            # Only the neuron's own request carries weights: the few-shot examples have none.
            assert not any(WEIGHTS_HEADER in message["content"] for message in messages[:-1])
            shown = {f"1:{neuron}" for neuron in (0, 1)
                     if all(f'"{printable_token(item.token)}"' in request
                            for item in views.neuron(1, neuron).promoted[:3])}
            assert shown, request
            line = next(line for line in request.splitlines() if "more likely to predict next" in line)
            assert line.count('"') == 2 * 6  # the store's views keep 6 tokens per list (fewer than the 10 asked)
        server.reset()
        plain = run_pipeline(_config(store, db, server.backend_spec()), progress=False)
        assert plain.explained == 2  # a different explainer config: explained again, not reused
        assert all(WEIGHTS_HEADER not in messages[-1]["content"] for messages in _explain_requests(server))
        server.reset()
        again = run_pipeline(_config(store, db, server.backend_spec(), explain_with_weights=True), progress=False)
        assert (again.explained, again.skipped) == (0, 2)
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT prompt_hash, parameters_json FROM explanations").fetchall()
    hashes = {prompt_hash for prompt_hash, _ in rows}
    assert len(rows) == 4 and len(hashes) == 2
    assert load_prompt_files(PROMPT_FILES_WITH_WEIGHTS).hash in hashes
    assert sorted(json.loads(parameters).get("weight_view_tokens") for _, parameters in rows
                  if "weight_view_tokens" in json.loads(parameters)) == [10, 10]


def test_negative_explanations_read_the_views_the_other_way_round():
    def items(*tokens: str) -> tuple[TokenWeight, ...]:
        return tuple(TokenWeight(index, token, 1.0) for index, token in enumerate(tokens))

    view = NeuronWeightView(NeuronId(0, 0), promoted=items("up"), suppressed=items("down", "\t"),
                            exciting=items("in"), inhibiting=items("out"))
    files = load_prompt_files(PROMPT_FILES_WITH_WEIGHTS)
    positive = weight_view_text(files, view, polarity=Polarity.POSITIVE, tokens=10)
    negative = weight_view_text(files, view, polarity=Polarity.NEGATIVE, tokens=1)
    assert 'more likely to predict next: "up"' in positive and 'less likely to predict next: "down", "\\t"' in positive
    assert 'more likely to predict next: "down"\n' in negative and 'fire when read on their own: "out"' in negative
    assert "\t" not in positive  # a tab would pose as a token line


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neuron_explainer.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_a_store_without_weight_views_is_refused_with_how_to_compute_them(stores, tmp_path):
    _, plain = stores
    with FakeOpenAIServer(responder=_answer) as server:
        spec = server.backend_spec()
        run = _cli("run", "--records", str(plain), "--db", "sqlite:///n.db", "--explainer", "token-pairs", "--llm",
                   spec, "--simulator", "lexical", "--neurons", "1:0", "--explain-with-weights", cwd=tmp_path)
        explain = _cli("explain", "--records", str(plain), "--neurons", "1:0", "--llm", spec, "--out", "e.jsonl",
                       "--with-weights", cwd=tmp_path)
        other = _cli("run", "--records", str(plain), "--db", "sqlite:///n.db", "--explainer", "ngram", "--simulator",
                     "lexical", "--explain-with-weights", cwd=tmp_path)
        assert server.count("/v1/chat/completions") == 0
    for result in (run, explain):
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and f"neuron-explainer weights --records {plain}" in result.stderr
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "token-pairs" in other.stderr
    assert not (tmp_path / "n.db").exists() and not (tmp_path / "e.jsonl").exists()


def test_explain_command_shows_the_views(stores, tmp_path):
    store, _ = stores
    with FakeOpenAIServer(responder=_answer) as server:
        result = _cli("explain", "--records", str(store), "--neurons", "1:3", "--llm", server.backend_spec(),
                      "--out", "e.jsonl", "--with-weights", "--explain-windows", "4", "--score-top-windows", "4",
                      "--score-random-windows", "4", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        [messages] = _explain_requests(server)
    assert WEIGHTS_HEADER in messages[-1]["content"]
    [line] = (tmp_path / "e.jsonl").read_text().splitlines()
    assert json.loads(line)["parameters"]["weight_view_tokens"] == 10


def test_the_cost_plan_counts_the_weights_paragraph():
    from neuron_explainer.pipeline.plan import _stage_figures

    def explain_prompt(**values) -> float:
        figures = _stage_figures(RunConfig(llm="openai:gpt-4o-mini", simulator="lexical", **values), {})
        [figure] = [figure for figure in figures if figure.stage == "explain:token-pairs"]
        return figure.prompt_tokens

    plain, with_weights = explain_prompt(), explain_prompt(explain_with_weights=True)
    assert 100 < with_weights - plain < 300  # about 150 tokens: four lists of ten quoted tokens plus the framing
