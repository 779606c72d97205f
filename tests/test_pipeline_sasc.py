"""`run --explainer sasc,ngram` end to end: record a planted tiny model, isolated n-gram sweep, SASC over HTTP."""

from __future__ import annotations

import sys
from pathlib import Path


from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import open_database
from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from test_sasc import CORPUS, PLANTED, _scripted_responder, planted_model  # noqa: E402,F401 - fixture import


def test_run_with_sasc_and_ngram_explainers_over_a_planted_model(planted_model, tmp_path: Path) -> None:
    model_dir, detectable = planted_model
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS * 4), encoding="utf-8")
    db = tmp_path / "n.db"
    summaries = ["The shared idea is animals.", "Shared idea: months of the year"]
    with FakeOpenAIServer(responder=_scripted_responder(summaries)) as server:
        config = RunConfig(db=f"sqlite:///{db}", model=str(model_dir), corpus=str(corpus), layers="0", ctx=8,
                           windows=200, top_k=20, random=20, explain_windows=5, score_top_windows=5,
                           score_random_windows=5, neurons=f"{PLANTED}", explainers=("sasc", "ngram"),
                           simulator="lexical", llm=server.backend_spec("scripted"), dtype="float32",
                           records_root=str(tmp_path / "records"), ngram_mode="isolated",
                           polarity="positive")
        summary = run_pipeline(config, progress=False)
        again = run_pipeline(config, progress=False)
    assert (summary.status, summary.explained, summary.scored, summary.failed) == ("completed", 2, 2, 0)
    assert (again.done, again.skipped) == (0, 1)
    with open_database(f"sqlite:///{db}") as database:
        details = database.neuron_details(NeuronId(PLANTED.layer, PLANTED.neuron))
    stored = [item for detail in details for item in detail.explanations]
    texts = {item.explanation.method.value: item.explanation.text for item in stored}
    assert all(len(item.scores) == 1 for item in stored)
    assert texts["sasc"] == "animals"
    assert any(word in texts["ngram"] for word in detectable)
