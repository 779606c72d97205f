"""SASC: answer parsing, synthetic scores, and the whole explainer on a planted neuron with a scripted LLM server."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain.ngrams import NgramConfig, isolated_ngram_responses, text_responses
from neuron_explainer.explain.sasc import (
    SascConfig,
    clean_theme,
    explain_sasc,
    parse_text_list,
    sasc_prompt_files,
    synthetic_score,
)
from neuron_explainer.explain.types import ExplainerKind, Explanation
from neuron_explainer.llm import make_backend
from neuron_explainer.subject import Subject

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

SUMMARY_MARK = "What is the common theme of these words and phrases?"

# --- parsing -------------------------------------------------------------------------------------------------


def test_numbered_list_items_keep_their_own_digits() -> None:
    answer = ("Here are the sentences:\n"
              "1. In 1999, 3 cats slept on 2 mats.\n"
              "2) The dog barked at 10 p.m. on May 4.\n"
              "(3) A horse ran 5.5 miles in 2 hours.\n"
              "4: 42 is the answer.\n"
              "10. Ten birds sat on 1 wire.\n")
    assert parse_text_list(answer) == ["In 1999, 3 cats slept on 2 mats.", "The dog barked at 10 p.m. on May 4.",
                                       "A horse ran 5.5 miles in 2 hours.", "42 is the answer.",
                                       "Ten birds sat on 1 wire."]


def test_a_numbered_list_on_one_line_is_split_only_at_consecutive_numbers() -> None:
    answer = "1. He was born in 1999. 2. He moved 3 times. 3. She owns 2. cats"
    assert parse_text_list(answer) == ["He was born in 1999.", "He moved 3 times.", "She owns 2. cats"]
    # In a list written one item per line, an item's own "2. " is text, not a marker.
    assert parse_text_list("1. Buy 2. Then sell 3. Done.\n2. Rest.") == ["Buy 2. Then sell 3. Done.", "Rest."]


def test_bullets_plain_lines_wrapped_items_quotes_and_limits() -> None:
    assert parse_text_list("- cats purr\n* dogs bark\n\u2022 birds sing") == ["cats purr", "dogs bark", "birds sing"]
    assert parse_text_list("Sure, here you go:\nCats purr.\n\nDogs bark.") == ["Cats purr.", "Dogs bark."]
    assert parse_text_list("1. A sentence that\n   wraps.\n2. Short.") == ["A sentence that wraps.", "Short."]
    assert parse_text_list('1. "Quoted."\n2. **Bold.**\n3. "Hi," she said, "bye"') == [
        "Quoted.", "Bold.", '"Hi," she said, "bye"']
    assert parse_text_list("1. same\n2. same\n3. other\n4. more", limit=2) == ["same", "other"]
    assert parse_text_list("") == []


@pytest.mark.parametrize(("answer", "theme"), [
    ("The shared idea is animals.", "animals"),
    ("Shared idea: names of animals", "names of animals"),
    ('The common theme of the words above is "file handling."', "file handling"),
    ("The common theme", None),
    ("The common theme among these phrases is: domestic animals", "domestic animals"),
    ("These words are all related to animals", "animals"),
    ('"months of the year"\nThey appear in dates.', "months of the year"),
    ("**Python keywords**", "Python keywords"),
    ("the word 'the'", "the word 'the'"),
    ("I'm sorry, I cannot find a pattern.", None),
    ("", None),
    (" ".join(f"word{index}" for index in range(20)), None),
    (" ".join(["word"] * 20), "word"),  # a decoding loop is cut to one turn
])
def test_clean_theme(answer: str, theme: str | None) -> None:
    assert clean_theme(answer) == theme


def test_synthetic_score_is_a_mean_difference_in_std_units() -> None:
    assert synthetic_score([4.0, 6.0], [1.0, 1.0, 1.0], 2.0) == pytest.approx(2.0)
    assert synthetic_score([1.0], [3.0], 0.5) == pytest.approx(-4.0)
    assert np.isnan(synthetic_score([], [1.0], 1.0))
    assert np.isnan(synthetic_score([1.0], [1.0], 0.0))


# --- a planted neuron ----------------------------------------------------------------------------------------

PLANTED = NeuronId(0, 7)
ANIMALS = ("dog", "dogs", "horse", "horses", "bird", "birds", "cat", "cats", "animals")

# The project's own text: the animal words occur among unrelated prose.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Dogs and cats are animals.",
    "Return a list of the items; raise ValueError if the argument is negative.",
    "In the garden the horses eat while the birds sing in May and June.",
    "Numbers like 1, 2, 10 and 2024 appear in text about the month of March.",
    "A dog barks at night, a cat sleeps all day, and a horse runs in the field.",
    "The function returns the value of the key when the dictionary holds it.",
]

ANIMAL_SENTENCES = [
    "In 1999, 3 dogs chased 2 cats across the yard.", "The horses ate 12 apples in the barn.",
    "A bird sang at 6 every morning.", "Our cat and dog sleep together.", "Birds fly south in winter.",
    "The horse carried 2 riders.", "The dogs bark at the mail carrier.", "A cat watched 1 bird all day.",
]
MONTH_SENTENCES = [
    "The meeting moved from March to June.", "In May the garden is green.", "January is cold and long.",
    "We travel every July and August.", "The report is due in October.", "December ends the year.",
]
CODE_SENTENCES = [
    "The function returns a list of values.", "Raise an error if the argument is negative.",
    "The loop ends when the counter reaches 10.", "Import the module before you call it.",
    "The value of the key is a string.", "Write the result to a file.",
]


def _numbered(sentences: list[str]) -> str:
    return "\n".join(f"{index}. {sentence}" for index, sentence in enumerate(sentences, start=1))


def _words(texts: list[str]) -> set[str]:
    return {word for text in texts for word in re.findall(r"\w+", text)}


def _token_ids(tokenizer, word: str) -> set[int]:
    forms = {word, " " + word, word.capitalize(), " " + word.capitalize()}
    return {token for form in forms for token in tokenizer(form, add_special_tokens=False)["input_ids"]}


@pytest.fixture(scope="module")
def planted_model(tiny_model_factory, tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """A tiny Llama whose layer-0 neuron 7 fires on the tokens that only animal words use.

    Embedding dimension 0 is 1.0 for those tokens and 0 for every other token, layer 0's attention cannot write
    to it (row 0 of o_proj is zero), and the neuron's gate and up rows read it: act = silu(4 x) * 4 x, large for
    animal tokens, near zero for the rest. Returns the model directory and the animal words it can detect.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    base = tiny_model_factory("llama")
    tokenizer = AutoTokenizer.from_pretrained(base)
    other_words = _words(CORPUS + MONTH_SENTENCES + CODE_SENTENCES + ANIMAL_SENTENCES) - {
        form for word in ANIMALS for form in (word, word.capitalize())}
    other_tokens = set().union(*(_token_ids(tokenizer, word) for word in other_words))
    planted_tokens = set().union(*(_token_ids(tokenizer, word) for word in ANIMALS)) - other_tokens
    detectable = tuple(word for word in ANIMALS
                       if set(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) & planted_tokens)
    assert len(detectable) >= 4, f"the tiny tokenizer leaves too few animal-only tokens: {detectable}"

    model = LlamaForCausalLM.from_pretrained(base)
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight
        embeddings[:, 0] = 0.0
        embeddings[sorted(planted_tokens), 0] = 1.0
        layer = model.model.layers[PLANTED.layer]
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.gate_proj.weight[PLANTED.neuron, 0] += 4.0
        layer.mlp.up_proj.weight[PLANTED.neuron, 0] += 4.0
    directory = tmp_path_factory.mktemp("planted-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, detectable


@pytest.fixture(scope="module")
def planted_subject(planted_model) -> Subject:
    return Subject.load(str(planted_model[0]), dtype="float32")


def test_isolated_ngrams_rank_the_planted_words_first(planted_model, planted_subject: Subject) -> None:
    _, detectable = planted_model
    layer = isolated_ngram_responses(planted_subject, [PLANTED.layer], CORPUS, NgramConfig())[PLANTED.layer]
    top = layer.for_neuron(PLANTED.neuron)
    firing = [ngram for ngram, value in zip(top.top_ngrams, top.top_responses) if value > top.top_responses[0] / 4]
    expected_words = set(detectable) & _words(CORPUS)
    # Every n-gram that fires contains a detectable animal word, and every such word in the corpus fires alone.
    assert firing and all(set(ngram.split()) & expected_words for ngram in firing)
    assert {ngram for ngram in firing if " " not in ngram} == expected_words
    assert top.top_responses[len(firing)] < top.top_responses[0] / 100
    assert top.std > 0


def _scripted_responder(summaries: list[str]):
    """Answers like a competent model: themes in turn, then sentences for or against the theme asked about."""
    counter = itertools.count()
    lock = threading.Lock()

    def respond(request: dict) -> str:
        prompt = request["messages"][-1]["content"]
        if SUMMARY_MARK in prompt:
            with lock:
                return summaries[next(counter) % len(summaries)]
        against = "nothing to do with" in prompt
        if "animals" in prompt:
            return _numbered(MONTH_SENTENCES + CODE_SENTENCES if against else ANIMAL_SENTENCES)
        if "months" in prompt:
            return _numbered(CODE_SENTENCES if against else MONTH_SENTENCES)
        return "I cannot help with that."

    return respond


def _backend(server: FakeOpenAIServer):
    return make_backend(server.backend_spec("scripted"))


def test_synthetic_score_separates_the_right_concept_from_a_wrong_one(planted_subject: Subject) -> None:
    layer = isolated_ngram_responses(planted_subject, [PLANTED.layer], CORPUS, NgramConfig())[PLANTED.layer]
    ngrams = layer.for_neuron(PLANTED.neuron)
    summaries = ["The shared idea is animals.", "Shared idea: months of the year", "animals"]
    with FakeOpenAIServer(responder=_scripted_responder(summaries)) as server:
        explanation = asyncio.run(explain_sasc(ngrams, planted_subject, _backend(server),
                                               config=SascConfig(synthetic_texts=12)))
        requests = [request.body for request in server.requests]
    assert isinstance(explanation, Explanation)
    assert explanation.text == "animals"
    assert explanation.method is ExplainerKind.SASC
    assert explanation.neuron == PLANTED
    candidates = {candidate["text"]: candidate for candidate in explanation.extra["candidates"]}
    assert set(candidates) == {"animals", "months of the year"}  # the duplicate "animals" is dropped
    right, wrong = candidates["animals"]["synthetic_score"], candidates["months of the year"]["synthetic_score"]
    assert right > 1.0
    assert abs(wrong) < 0.05
    assert explanation.extra["synthetic_score"] == right
    # Every list was parsed whole, digits and all; the chosen concept's sentences are kept for audit.
    assert candidates["animals"]["concept_texts"] == len(ANIMAL_SENTENCES)
    assert candidates["animals"]["contrast_texts"] == len(MONTH_SENTENCES + CODE_SENTENCES)
    assert explanation.extra["concept_texts"][0] == ANIMAL_SENTENCES[0]

    # Three summaries from different samples of the top n-grams, then a concept and a contrast list per theme.
    assert len(requests) == 3 + 2 * 2
    summary_prompts = [body["messages"][-1]["content"] for body in requests if SUMMARY_MARK in
                       body["messages"][-1]["content"]]
    assert len(set(summary_prompts)) == 3
    assert explanation.prompt_hash == sasc_prompt_files().hash
    assert explanation.prompt_tokens > 0 and explanation.completion_tokens > 0
    assert explanation.source_window_ids == ()
    json.dumps(explanation.parameters)
    json.dumps(explanation.extra)


def test_the_synthetic_responses_come_from_the_planted_neuron(planted_subject: Subject) -> None:
    responses = text_responses(planted_subject, ANIMAL_SENTENCES + CODE_SENTENCES, [PLANTED.layer])[PLANTED.layer]
    column = responses[:, PLANTED.neuron]
    assert column[:len(ANIMAL_SENTENCES)].min() > 100 * np.abs(column[len(ANIMAL_SENTENCES):]).max()


def test_no_usable_theme_is_a_failure_with_the_raw_answers(planted_subject: Subject) -> None:
    layer = isolated_ngram_responses(planted_subject, [PLANTED.layer], CORPUS, NgramConfig())[PLANTED.layer]
    refusal = "I'm sorry, I cannot determine a pattern."
    with FakeOpenAIServer(responder=lambda request: refusal) as server:
        result = asyncio.run(explain_sasc(layer.for_neuron(PLANTED.neuron), planted_subject, _backend(server),
                                          config=SascConfig(candidates=2)))
    assert isinstance(result, Failure)
    assert result.stage == "explain" and "no usable theme" in result.reason
    assert refusal in result.raw_output


def test_unparseable_sentence_lists_leave_the_candidate_unscored(planted_subject: Subject) -> None:
    layer = isolated_ngram_responses(planted_subject, [PLANTED.layer], CORPUS, NgramConfig())[PLANTED.layer]

    def respond(request: dict) -> str:
        return "animals" if SUMMARY_MARK in request["messages"][-1]["content"] else "Only one sentence."

    with FakeOpenAIServer(responder=respond) as server:
        result = asyncio.run(explain_sasc(layer.for_neuron(PLANTED.neuron), planted_subject, _backend(server),
                                          config=SascConfig(candidates=1)))
    assert isinstance(result, Explanation) and result.text == "animals"
    assert result.extra["synthetic_score"] is None
    assert result.extra["selection"].startswith("first-candidate")
    assert "too few sentences" in result.extra["candidates"][0]["error"]



@pytest.mark.slow
def test_sasc_runs_offline_on_the_default_model_with_the_local_backend() -> None:
    from neuron_explainer.corpus import PYTHON_DOCS, open_corpus
    from neuron_explainer.explain.ngrams import explain_ngram

    subject = Subject.load("default", dtype="float32")
    documents = list(itertools.islice(open_corpus(PYTHON_DOCS).documents(), 40))
    layer = isolated_ngram_responses(subject, [2], documents, NgramConfig(max_ngrams=1500))[2]
    assert layer.responses.shape == (1500, subject.neurons_per_layer)
    ngrams = layer.for_neuron(11)
    baseline = explain_ngram(ngrams)
    assert baseline.text.startswith(f'"{ngrams.top_ngrams[0]}"')

    backend = make_backend("local:default", dtype="float32")
    config = SascConfig(candidates=2, synthetic_texts=5, min_synthetic_texts=2, texts_max_tokens=160)
    result = asyncio.run(explain_sasc(ngrams, subject, backend, config=config))
    assert isinstance(result, Explanation), result
    assert result.method is ExplainerKind.SASC and result.explainer_backend == "local:default"
    assert 1 <= len(result.extra["candidates"]) <= 2
    assert result.text in {candidate["text"] for candidate in result.extra["candidates"]}
    assert result.completion_tokens > 0
    json.dumps(result.extra)


def test_concurrent_neurons_share_the_subject_model_safely(planted_subject: Subject) -> None:
    layer = isolated_ngram_responses(planted_subject, [PLANTED.layer], CORPUS, NgramConfig())[PLANTED.layer]
    neurons = [layer.for_neuron(PLANTED.neuron), layer.for_neuron(3), layer.for_neuron(20)]
    summaries = ["animals"]
    config = SascConfig(candidates=1)
    with FakeOpenAIServer(responder=_scripted_responder(summaries)) as server:
        backend = _backend(server)

        async def together() -> list:
            return await asyncio.gather(*(explain_sasc(ngrams, planted_subject, backend, config=config)
                                          for ngrams in neurons))

        concurrent = asyncio.run(together())
        sequential = [asyncio.run(explain_sasc(ngrams, planted_subject, backend, config=config))
                      for ngrams in neurons]
    scores = [[result.extra["candidates"][0]["concept_mean"] for result in results]
              for results in (concurrent, sequential)]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)
    assert scores[0][0] > 100 * max(abs(value) for value in scores[0][1:])


def test_batched_sasc_gives_every_neuron_the_explanation_it_gets_alone(planted_subject: Subject) -> None:
    from neuron_explainer.explain.sasc import SascBatcher, explain_sasc_many

    layer = isolated_ngram_responses(planted_subject, [PLANTED.layer], CORPUS, NgramConfig())[PLANTED.layer]
    neurons = [layer.for_neuron(index) for index in (PLANTED.neuron, 3, 20, 31)]
    themes = ["animals", "months of the year", "a riddle with no sentences"]
    scripted = _scripted_responder(themes)

    def respond(request: dict) -> str:
        # A function of the prompt alone, so the order in which batched requests arrive does not matter.
        prompt = request["messages"][-1]["content"]
        return themes[len(prompt) % len(themes)] if SUMMARY_MARK in prompt else scripted(request)

    config = SascConfig(synthetic_texts=12)
    steps: list[tuple[str, int, int]] = []
    with FakeOpenAIServer(responder=respond) as server:
        backend = _backend(server)
        alone = [asyncio.run(explain_sasc(ngrams, planted_subject, backend, config=config)) for ngrams in neurons]
        batched = asyncio.run(explain_sasc_many(neurons, planted_subject, backend, config=config,
                                                on_step=lambda *step: steps.append(step)))

        async def concurrently() -> list:
            batcher = SascBatcher(planted_subject, backend, config=config)
            return await asyncio.gather(*(batcher.explain(ngrams) for ngrams in neurons))

        grouped = asyncio.run(concurrently())
    assert [phase for phase, _, _ in steps] == ["summaries", "sentences", "responses"]
    assert steps[0][1:] == (4, 4 * config.candidates)
    for results in (batched, grouped):
        for one, many in zip(alone, results, strict=True):
            assert isinstance(one, Explanation) and isinstance(many, Explanation)
            assert (many.neuron, many.text) == (one.neuron, one.text)
            assert (many.prompt_tokens, many.completion_tokens) == (one.prompt_tokens, one.completion_tokens)
            assert [candidate["text"] for candidate in many.extra["candidates"]] == \
                [candidate["text"] for candidate in one.extra["candidates"]]
            assert many.extra["concept_texts"] == one.extra["concept_texts"]
            for first, second in zip(one.extra["candidates"], many.extra["candidates"], strict=True):
                assert (first["synthetic_score"] is None) == (second["synthetic_score"] is None)
                if first["synthetic_score"] is not None:
                    assert second["synthetic_score"] == pytest.approx(first["synthetic_score"], rel=1e-4, abs=1e-6)
    assert {explanation.text for explanation in alone} >= {"animals"}
