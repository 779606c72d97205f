"""N-gram extraction, in-context responses, the isolated layer cache, and the LLM-free `ngram` explainer."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sys
from pathlib import Path

from neuron_explainer.activations.records import Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.paths import cache_dir
from neuron_explainer.explain.ngrams import (
    NgramConfig,
    NgramMode,
    corpus_hash,
    explain_ngram,
    extract_ngrams,
    in_context_ngram_responses,
    in_context_ngrams_for_record,
    isolated_ngram_responses,
    ngram_word_prefix,
    text_responses,
)
from neuron_explainer.explain.splits import SplitConfig, check_no_leakage, split_neuron
from neuron_explainer.explain.types import ExplainerKind, Polarity
from neuron_explainer.subject import Subject

sys.path.insert(0, str(Path(__file__).parent))
from neuron_records import digit_activation, planted_record, word_activation  # noqa: E402


def test_extract_ngrams_orders_by_frequency_and_stops_at_punctuation() -> None:
    texts = ["the cat sat. the cat ran", "The dog, the cat"]
    ngrams = extract_ngrams(texts, NgramConfig(min_order=1, max_order=2))
    # "the" x3 and "cat" x3 tie on count: unigrams first by order, then first seen.
    assert ngrams[:3] == ["the", "cat", "the cat"]
    assert "sat the" not in ngrams  # the full stop ends the phrase
    assert "dog the" not in ngrams  # so does the comma
    assert "The dog" in ngrams and "The" in ngrams  # case is kept
    assert len(ngrams) == len(set(ngrams))


def test_extract_ngrams_keeps_inner_apostrophes_and_hyphens_and_respects_limits() -> None:
    texts = ["don't use built-in names", "don't panic"]
    assert extract_ngrams(texts, NgramConfig(min_order=1, max_order=1))[:1] == ["don't"]
    assert "built-in" in extract_ngrams(texts, NgramConfig(min_order=1, max_order=1))
    assert extract_ngrams(texts, NgramConfig(min_order=2, max_order=2, min_count=2)) == []
    only_trigrams = extract_ngrams(texts, NgramConfig(min_order=3, max_order=3))
    assert only_trigrams == ["don't use built-in", "use built-in names"]
    assert extract_ngrams(texts, NgramConfig(max_ngrams=2)) == ["don't", "use"]


def test_ngram_config_rejects_bad_settings() -> None:
    with pytest.raises(UserError):
        NgramConfig(min_order=3, max_order=2)
    with pytest.raises(UserError):
        NgramConfig(top_k=0)


def test_corpus_hash_depends_on_content_and_boundaries() -> None:
    assert corpus_hash(["ab", "c"]) != corpus_hash(["a", "bc"])
    assert corpus_hash(["ab", "c"]) == corpus_hash(iter(["ab", "c"]))


def _window(window_id: int, tokens: list[str], activations: list[float]) -> Window:
    return Window(window_id=window_id, tokens=tuple(tokens), activations=tuple(activations))


def test_in_context_responses_average_occurrences_of_the_max_over_spanned_tokens() -> None:
    neuron = NeuronId(2, 5)
    windows = [
        _window(10, ["The", " ca", "t", " sat", "."], [0.0, 1.0, 3.0, 0.5, 9.0]),
        _window(11, [" cat", " sat", " down"], [1.0, 2.0, -1.0]),
    ]
    result = in_context_ngram_responses(neuron, windows, NgramConfig(min_order=1, max_order=2, top_k=3))
    # "cat": max(1, 3)=3 in window 10 and 1 in window 11 -> mean 2. "cat sat": max(1,3,0.5)=3 and max(1,2)=2 -> 2.5.
    # "sat" 0.5 and 2 -> 1.25; "The cat" 3; "sat down" 2; "down" -1; "The" 0. The "." (9.0) is no word.
    assert result.top_ngrams == ("The cat", "cat sat", "cat")
    assert result.top_responses == pytest.approx((3.0, 2.5, 2.0))
    values = [3.0, 2.5, 2.0, 1.25, 2.0, 0.0, -1.0]
    assert result.std == pytest.approx(float(np.std(values)))
    assert result.ngram_count == 7
    assert result.window_ids == (10, 11)
    assert result.mode is NgramMode.IN_CONTEXT


def test_in_context_negative_polarity_ranks_the_most_negative() -> None:
    windows = [_window(0, ["up", " down"], [2.0, -4.0])]
    result = in_context_ngram_responses(NeuronId(0, 0), windows, NgramConfig(max_order=1, top_k=1),
                                        polarity=Polarity.NEGATIVE)
    assert result.top_ngrams == ("down",)
    assert result.top_responses == (4.0,)


def test_in_context_ngrams_of_a_record_come_from_its_explain_split_only() -> None:
    record = planted_record(digit_activation, neuron=NeuronId(3, 9))
    split = SplitConfig(seed=2)
    ngrams = in_context_ngrams_for_record(record, split=split, config=NgramConfig(top_k=10))
    assert ngrams.neuron == NeuronId(3, 9) and ngrams.polarity is Polarity.POSITIVE
    assert all(any(character.isdigit() for character in ngram) for ngram in ngrams.top_ngrams)
    assert ngrams.top_responses[0] > 0 and ngrams.std > 0
    explain_ids = {window.window_id for window in split_neuron(record, split).explain}
    assert set(ngrams.window_ids) == explain_ids
    check_no_leakage(split_neuron(record, split), explained_ids=ngrams.window_ids)
    assert ngrams.parameters["split_seed"] == 2


def test_in_context_ngrams_of_the_negative_side_read_the_bottom_windows() -> None:
    record = planted_record(word_activation("the"), negative_rule=word_activation("of"), neuron=NeuronId(0, 1))
    ngrams = in_context_ngrams_for_record(record, polarity=Polarity.NEGATIVE, config=NgramConfig(max_order=1))
    assert ngrams.polarity is Polarity.NEGATIVE
    assert ngrams.top_ngrams[0] == "of" and ngrams.top_responses[0] == pytest.approx(1.0)


def test_ngram_explainer_quotes_the_top_ngrams() -> None:
    windows = [_window(3, ["alpha", " beta", " gamma", " delta"], [5.0, 3.0, 2.8, 1.0])]
    ngrams = in_context_ngram_responses(NeuronId(1, 2), windows, NgramConfig(max_order=1))
    explanation = explain_ngram(ngrams, top=2, split_seed=4)
    assert explanation.text == '"alpha", "beta"'
    assert explanation.method is ExplainerKind.NGRAM
    assert (explanation.explainer_backend, explanation.explainer_model, explanation.prompt_hash) == (
        "none", "none", "none")
    assert explanation.source_window_ids == (3,)
    assert explanation.split_seed == 4
    assert explanation.extra["ngrams"] == ["alpha", "beta"]
    json.dumps(explanation.parameters)
    json.dumps(explanation.extra)


def test_ngram_explainer_keeps_the_minimal_ngram_and_drops_weak_ones() -> None:
    # "the" fires; every phrase containing it ties with it and says less; "cat" is below half of the strongest.
    windows = [_window(0, ["the", " cat", " sat", " on", " the", " mat"], [4.0, 1.0, 0.0, 0.0, 4.0, 0.0])]
    ngrams = in_context_ngram_responses(NeuronId(0, 0), windows, NgramConfig(max_order=3))
    explanation = explain_ngram(ngrams)
    assert explanation.text == '"the"'
    assert explanation.parameters["relative_floor"] == 0.5 and explanation.parameters["subsumption"] == 0.9


CORPUS = ["The quick brown fox jumps over the lazy dog.", "Numbers like 1, 2, 10 and 2024 appear in text.",
          "Return a list of the items; raise ValueError if the argument is negative."]


@pytest.fixture(scope="module")
def tiny_subject(tiny_model_factory) -> Subject:
    return Subject.load(str(tiny_model_factory("llama")), dtype="float32")


def test_byte_level_bpe_reads_ngrams_with_a_leading_space(tiny_subject: Subject) -> None:
    assert ngram_word_prefix(tiny_subject.tokenizer) == " "


def test_isolated_responses_match_direct_runs_and_are_cached(tiny_subject: Subject) -> None:
    config = NgramConfig(max_ngrams=50)
    layers = isolated_ngram_responses(tiny_subject, [1, 0], CORPUS, config)
    assert sorted(layers) == [0, 1]
    layer = layers[1]
    assert layer.responses.shape == (50, tiny_subject.neurons_per_layer)
    assert layers[0].key != layer.key
    direct = text_responses(tiny_subject, [" " + ngram for ngram in layer.ngrams], [1])[1]
    np.testing.assert_allclose(np.asarray(layer.responses, dtype=np.float32), direct, rtol=2e-3, atol=1e-4)

    stored = cache_dir() / "sasc-ngrams" / layer.key / "responses.npy"
    written = stored.stat().st_mtime_ns
    again = isolated_ngram_responses(tiny_subject, [1], CORPUS, config)[1]
    assert again.key == layer.key and stored.stat().st_mtime_ns == written
    assert isinstance(again.responses, np.memmap)
    # A different corpus or n-gram setting is a different cache entry.
    assert isolated_ngram_responses(tiny_subject, [1], CORPUS[:2], config)[1].key != layer.key
    assert isolated_ngram_responses(tiny_subject, [1], CORPUS, NgramConfig(max_ngrams=40))[1].key != layer.key


def test_for_neuron_ranks_by_response_and_reports_the_std(tiny_subject: Subject) -> None:
    layer = isolated_ngram_responses(tiny_subject, [0], CORPUS, NgramConfig(max_ngrams=60))[0]
    column = np.asarray(layer.responses[:, 7], dtype=np.float64)
    top = layer.for_neuron(7, top_k=5)
    assert top.neuron == NeuronId(0, 7)
    assert list(top.top_responses) == sorted(column, reverse=True)[:5]
    assert top.std == pytest.approx(float(column.std()), rel=1e-6)
    assert top.source == layer.key and top.parameters["layer"] == 0
    negative = layer.for_neuron(7, top_k=1, polarity=Polarity.NEGATIVE)
    assert negative.top_responses[0] == pytest.approx(-column.min())
    with pytest.raises(UserError):
        layer.for_neuron(tiny_subject.neurons_per_layer)


def test_text_responses_skip_empty_texts(tiny_subject: Subject) -> None:
    responses = text_responses(tiny_subject, ["the dog", "", "the"], [0])[0]
    assert np.isfinite(responses[[0, 2]]).all()
    assert np.isnan(responses[1]).all()
