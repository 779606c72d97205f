"""Detection and fuzzing scorers against the loopback OpenAI server with a scripted competent model."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

import pytest

from neuron_explainer.explain import SplitConfig
from neuron_explainer.core.failures import Failure
from neuron_explainer.llm import make_backend
from neuron_explainer.scoring_llm import ClassifierScore, ClassifierScorer, ScorerKind, classification_metrics
from neuron_explainer.scoring_llm.classifier import auroc, render_passage

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer, Reply  # noqa: E402
from neuron_records import digit_activation, planted_record  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

SPLIT = SplitConfig(seed=0, explain_top=10, score_top=10, score_random=10)


def _score(server: FakeOpenAIServer, kind: str, explanation: str) -> ClassifierScore | Failure:
    async def go() -> ClassifierScore | Failure:
        backend = make_backend(server.backend_spec("gpt-4o-mini"))
        try:
            return await ClassifierScorer(kind, backend).score(planted_record(digit_activation), explanation,
                                                               split=SPLIT)
        finally:
            await backend.aclose()
    return asyncio.run(go())


@pytest.mark.parametrize("kind", ["detection", "fuzzing"])
def test_a_right_explanation_beats_a_wrong_one_in_few_requests(fake_openai: FakeOpenAIServer, kind: str) -> None:
    fake_openai.responder = competent_model
    right = _score(fake_openai, kind, "digits and numbers")
    requests = fake_openai.count("/v1/chat/completions")
    wrong = _score(fake_openai, kind, 'the word "banana"')
    assert isinstance(right, ClassifierScore) and isinstance(wrong, ClassifierScore)
    assert right.scorer is ScorerKind(kind) and right.metrics.answered == right.metrics.passages > 0
    assert right.metrics.balanced_accuracy == 1.0 and right.metrics.auroc == 1.0
    assert wrong.metrics.balanced_accuracy == 0.5
    assert requests == math.ceil(right.metrics.passages / 10) == right.requests
    assert right.prompt_tokens > 0 and right.completion_tokens > 0
    if kind == "fuzzing":
        assert {passage.label for passage in right.passages} == {True, False}
        assert all(passage.marked for passage in right.passages)


def test_every_request_starts_with_the_same_prefix(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.responder = competent_model
    _score(fake_openai, "detection", "digits")
    _score(fake_openai, "detection", 'the word "of"')
    conversations = [request.body["messages"] for request in fake_openai.requests]
    assert len(conversations) == 4
    assert all(messages[:-1] == conversations[0][:-1] for messages in conversations)
    assert conversations[0][-1] != conversations[2][-1]


def test_unreadable_answers_are_a_failure_not_a_score(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.responder = lambda body: Reply(text="I cannot tell.")
    outcome = _score(fake_openai, "detection", "digits")
    assert isinstance(outcome, Failure) and outcome.stage == "detection" and "misaligned" in outcome.reason


def test_an_answer_that_runs_on_past_the_last_passage_is_read_up_to_it(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.responder = lambda body: competent_model(body) + "\n11\t1\n12\t0\n13\t1"
    outcome = _score(fake_openai, "detection", "digits and numbers")
    assert isinstance(outcome, ClassifierScore) and outcome.metrics.answered == outcome.metrics.passages
    assert outcome.metrics.balanced_accuracy == 1.0
    fake_openai.responder = lambda body: "1\t1\n11\t1\n12\t0"  # a gap before the run-on is still misaligned
    assert isinstance(_score(fake_openai, "detection", "digits"), Failure)


def test_metrics_and_rendering() -> None:
    metrics = classification_metrics([True, True, False, False], [1, 0, 0, 0], [0.9, 0.4, 0.3, 0.1], 5)
    assert metrics.accuracy == 0.75 and metrics.balanced_accuracy == 0.75 and metrics.auroc == 1.0
    assert metrics.auroc_from == "logprobs" and metrics.passages == 5 and metrics.answered == 4
    one_class = classification_metrics([True, True], [1, 1], [None, None], 2)
    assert one_class.accuracy == 1.0 and math.isnan(one_class.auroc) and one_class.undefined_reason
    assert auroc([True, False], [0.5, 0.5]) == 0.5
    assert render_passage(["a", " b", " c", "\n"], [1, 2]) == "a[[ b c]]\\n"


def test_run_stores_detection_and_fuzzing_next_to_simulation_and_resumes(fake_openai: FakeOpenAIServer,
                                                                         tmp_path: Path) -> None:
    import sqlite3

    from neuron_explainer.cli import main
    from neuron_explainer.db import ExplanationQuery, open_database

    fake_openai.responder = competent_model
    records = _planted_store(tmp_path)
    db = tmp_path / "n.db"
    common = ["run", "--records", str(records), "--db", f"sqlite:///{db}", "--explainer", "ngram",
              "--simulator", "lexical", "--simulator-llm", fake_openai.backend_spec("gpt-4o-mini"),
              "--neurons", "0:0-3", "--scorer", "simulation,detection,fuzzing", "--json"]
    assert main(common) == 0
    first = fake_openai.count("/v1/chat/completions")
    assert 0 < first <= 4 * 4  # a few requests per neuron and scorer
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT scorer, COUNT(*), MIN(balanced_accuracy) FROM classifier_scores "
                                  "GROUP BY scorer ORDER BY scorer").fetchall()
        assert connection.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 4
    assert [(name, count) for name, count, _ in rows] == [("detection", 4), ("fuzzing", 4)]
    assert all(lowest is not None and lowest > 0.5 for _, _, lowest in rows)
    assert main(common) == 0
    assert fake_openai.count("/v1/chat/completions") == first  # nothing asked twice
    with open_database(f"sqlite:///{db}", create=False) as database:
        row = database.query(ExplanationQuery(limit=1))[0]
        detail = database.neuron_details(row.neuron)[0]
    assert set(row.classifiers) == {"detection", "fuzzing"} and row.classifiers["detection"]["balanced_accuracy"] > 0.5
    assert {score.scorer.value for score in detail.explanations[0].classifier_scores} == {"detection", "fuzzing"}


def _planted_store(tmp_path: Path, words: tuple[str, ...] = ("the", "of", "and", "to")) -> Path:
    """Planted word neurons (one per word, layer 0) in a real record store."""
    import numpy as np

    from neuron_explainer.activations import record_activations
    from neuron_records import corpus_windows

    windows = corpus_windows(count=160, length=32)
    vocab = sorted({token for window in windows for token in window})
    index = {token: position for position, token in enumerate(vocab)}
    token_ids = np.array([[index[token] for token in window] for window in windows], dtype=np.int32)
    activations = np.array([[[1.0 if token.strip().lower() == word else 0.0 for word in words] for token in window]
                            for window in windows], dtype=np.float32)
    return record_activations(tmp_path / "records", token_ids=token_ids, vocab=vocab, activations={0: activations})
