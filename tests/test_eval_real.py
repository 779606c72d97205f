"""`eval real`: per-layer score distributions, matched-minus-shuffled gap, agreement between methods and stability
across split seeds, read from a real SQLite results database and a real record store."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.eval import run_real_eval
from neuron_explainer.eval.real import ScoredExplanation, build_real_report, format_real_report, spearman

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from test_eval_planted import SMALL_SUITE, scripted_model, tiny_tokenizer  # noqa: E402,F401

LAYERS = (1, 3)
# Small splits keep the scripted server's per-window requests few (the n-gram scores use the default split).
SPLIT = dict(explain_top=5, score_top=4, score_random=4, calibrate_top=2, calibrate_random=2)


def _write(database, recording, manifest, explanation, score) -> None:
    from neuron_explainer.db import explanation_config_key, score_config_key

    explanation_key = explanation_config_key(
        subject_model=manifest.model_id, model_fingerprint=manifest.model_fingerprint,
        manifest_hash=manifest.recording_id, method=explanation.method.value, polarity=explanation.polarity.value,
        backend=explanation.explainer_backend, model=explanation.explainer_model, prompt_hash=explanation.prompt_hash,
        split_seed=explanation.split_seed, parameters=explanation.parameters)
    database.record_explanation(recording, explanation, config_key=explanation_key)
    database.record_score(recording, score, explanation_key=explanation_key, config_key=score_config_key(
        manifest_hash=manifest.recording_id, simulator=score.simulator.value, backend=score.simulator_backend,
        model=score.simulator_model, prompt_hash=score.prompt_hash, split_seed=score.split_seed,
        parameters={key: value for key, value in score.parameters.items() if key != "undefined"}))


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_tokenizer):
    """A two-layer record store of planted-style neurons, and a database holding n-gram explanations scored
    lexically (two split seeds, with shuffled baselines) and token-pair explanations from a scripted server
    scored by the generated simulator (one seed, no baselines)."""
    import tomllib

    from neuron_explainer.activations import RecordStore, record_activations
    from neuron_explainer.corpus import open_corpus, window_batches
    from neuron_explainer.db import open_database
    from neuron_explainer.eval import load_tokenizer, parse_suite, planted_activations
    from neuron_explainer.explain import ExplainConfig, SplitConfig, explain_ngram
    from neuron_explainer.explain.batch import explain_neurons
    from neuron_explainer.explain.ngrams import in_context_ngrams_for_record
    from neuron_explainer.llm import make_backend
    from neuron_explainer.scoring import ScoreConfig, score_explanations
    from neuron_explainer.simulate import make_simulator
    from neuron_explainer.subject.subject import token_strings

    directory = tmp_path_factory.mktemp("real")
    tokenizer = load_tokenizer(tiny_tokenizer)
    token_ids = np.concatenate(list(window_batches(open_corpus("python-docs").documents(), tokenizer, length=32,
                                                   max_windows=400, batch_size=200)))
    vocab = token_strings(tokenizer)
    activations = planted_activations(parse_suite(tomllib.loads(SMALL_SUITE)), token_ids, vocab)
    # Layer 3 holds the same concepts in reverse order, so a neuron's concept depends on its layer.
    path = record_activations(directory / "records", token_ids=token_ids, vocab=vocab,
                              activations={1: activations, 3: activations[:, :, ::-1].copy()}, top_k=30,
                              random_k=30, model_id="tiny-subject", corpus_spec="python-docs")
    store = RecordStore.open(path)
    manifest = store.manifest
    neurons = [NeuronId(layer, index) for layer in LAYERS for index in range(4)]
    records = {neuron: store.load_neuron(neuron.layer, neuron.neuron) for neuron in neurons}
    db_url = f"sqlite:///{directory / 'results.db'}"

    async def produce(server: FakeOpenAIServer) -> list:
        pairs = []
        lexical = make_simulator("lexical", None)
        for seed in (0, 1):
            split = SplitConfig(seed=seed)
            explanations = [explain_ngram(in_context_ngrams_for_record(records[neuron], split=split),
                                          split_seed=seed) for neuron in neurons]
            scores: list = []
            await score_explanations(records.__getitem__, explanations, lexical, config=ScoreConfig(split=split),
                                     baselines=True, on_result=scores.append, progress=False)
            pairs += _pair(explanations, scores)
        backend = make_backend(server.backend_spec("scripted"))
        try:
            explained: list = []
            split = SplitConfig(seed=0, **SPLIT)
            await explain_neurons(records.__getitem__, neurons, backend, config=ExplainConfig(split=split),
                                  on_result=explained.append, progress=False)
            scores = []
            await score_explanations(records.__getitem__, explained, make_simulator("generated", backend),
                                     config=ScoreConfig(split=split), on_result=scores.append, progress=False)
            pairs += _pair(explained, scores)
        finally:
            await backend.aclose()
        return pairs

    with FakeOpenAIServer(responder=scripted_model) as server:
        pairs = asyncio.run(produce(server))
        with open_database(db_url) as database:
            recording = database.register_recording(model_id=manifest.model_id,
                                                    fingerprint=manifest.model_fingerprint, path=path,
                                                    manifest=json.loads(manifest.to_json()),
                                                    manifest_hash=manifest.recording_id)
            for explanation, score in pairs:
                _write(database, recording, manifest, explanation, score)
        yield {"records": str(path), "db": db_url, "spec": server.backend_spec("scripted")}


def _pair(explanations, scores) -> list:
    by_neuron = {score.neuron: score for score in scores}
    return [(explanation, by_neuron[explanation.neuron]) for explanation in explanations]


NGRAM = "ngram / lexical[token-match]"
TOKEN_PAIRS = "token-pairs[scripted] / generated[scripted]"


def test_report_gives_layers_gap_agreement_and_stability(results):
    report = run_real_eval(results["records"], results["db"])
    assert report.model_id == "tiny-subject" and report.layers == LAYERS and report.neurons_per_layer == 4
    groups = {group.group: group for group in report.groups}
    assert set(groups) == {NGRAM, TOKEN_PAIRS}
    ngram = groups[NGRAM]
    assert set(ngram.layers) == set(LAYERS) and ngram.coverage == {1: 1.0, 3: 1.0}
    assert ngram.overall.count + ngram.overall.undefined == 8
    assert ngram.gap_neurons >= 4 and ngram.gap > 0.3 and abs(ngram.shuffled_mean) < 0.2
    # The scripted explainer names digits and words; the scripted simulator follows them.
    assert groups[TOKEN_PAIRS].overall.mean > 0.3
    assert math.isnan(groups[TOKEN_PAIRS].gap) and groups[TOKEN_PAIRS].gap_neurons == 0
    (stability,) = report.stability
    assert stability.group == NGRAM and stability.seeds == (0, 1) and stability.neurons == 8
    assert 0 <= stability.mean_absolute_difference < 0.5 and 0 <= stability.same_text <= 1
    (agreement,) = report.agreement
    assert {agreement.first, agreement.second} == {NGRAM, TOKEN_PAIRS} and agreement.neurons == 8
    assert any("token-pairs[scripted]" in note and "--simulator generated" in note for note in report.notes)
    assert any("one split seed only" in note for note in report.notes)
    json.dumps(report.as_dict(), allow_nan=False)
    text = format_real_report(report)
    assert "no neuron has a shuffled baseline yet" in text and "- = -" not in text and "over 0 neurons" not in text


def test_missing_shuffled_baselines_are_computed_with_the_same_simulator(results):
    report = run_real_eval(results["records"], results["db"], simulator="generated", llm=results["spec"])
    groups = {group.group: group for group in report.groups}
    token_pairs = groups[TOKEN_PAIRS]
    assert token_pairs.gap_neurons >= 4 and token_pairs.gap > 0.3
    # The lexical scores already had their baselines; a generated simulator does not touch them.
    assert groups[NGRAM].gap_neurons == run_real_eval(results["records"], results["db"]).groups[0].gap_neurons


def test_eval_real_command(results, capsys):
    from neuron_explainer.cli import main

    assert main(["eval", "real", "--records", results["records"], "--db", results["db"], "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [group["group"] for group in data["groups"]] == [NGRAM, TOKEN_PAIRS]
    assert main(["eval", "real", "--records", results["records"], "--db", results["db"], "--layer", "3"]) == 0
    text = capsys.readouterr().out
    assert "stability" in text and "agreement between methods" in text and "\n3 " in text
    assert main(["eval", "real", "--records", results["records"], "--db", results["db"], "--layer", "2"]) == 2
    assert "layer(s) [2] were not recorded" in capsys.readouterr().err


def test_report_arithmetic_on_hand_made_results():
    def item(layer: int, neuron: int, group: str, seed: int, score: float, shuffled: float = math.nan,
             text: str = "x", order: int = 0) -> ScoredExplanation:
        return ScoredExplanation(neuron=NeuronId(layer, neuron), group=group, simulator="lexical", split_seed=seed,
                                 text=text, score=score, score_top=score, score_random=0.0, shuffled=shuffled,
                                 order=order)

    items = [item(0, 0, "a", 0, 0.9, 0.1), item(0, 1, "a", 0, 0.5, 0.0), item(1, 0, "a", 0, 0.1, -0.1),
             item(1, 1, "a", 0, math.nan),
             item(0, 0, "a", 1, 0.8, text="y"), item(0, 1, "a", 1, 0.6), item(1, 0, "a", 1, 0.2),
             item(0, 0, "b", 0, 0.3), item(0, 1, "b", 0, 0.2), item(1, 0, "b", 0, 0.1),
             # An older, better result of the same method and seed does not count: the newest one does.
             item(0, 0, "b", 0, 0.95, order=-1)]
    report = build_real_report(items, model_id="m", records="r", layers=(0, 1), neurons_per_layer=2)
    a, b = report.groups
    assert a.layers[0].mean == pytest.approx(0.7) and a.layers[1].count == 1 and a.layers[1].undefined == 1
    assert a.coverage == {0: 1.0, 1: 1.0} and b.coverage == {0: 1.0, 1: 0.5}
    assert a.gap == pytest.approx(0.5 - 0.0) and a.gap_neurons == 3
    (stability,) = report.stability
    assert stability.neurons == 3 and stability.spearman == pytest.approx(1.0)
    assert stability.mean_absolute_difference == pytest.approx(0.1) and stability.same_text == pytest.approx(2 / 3)
    (agreement,) = report.agreement
    assert agreement.neurons == 3 and agreement.spearman == pytest.approx(1.0)
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0])) and spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    with pytest.raises(UserError):
        run_real_eval("/nonexistent/records", "sqlite:///x.db")
