"""Planted-neuron evaluation: the suite format, the activation rules, the planted record store (written by the
recorder's own writer), and the evaluation run offline, through a loopback OpenAI-compatible server and the CLI."""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.eval import (PlantedEvalConfig, PlantedRecordingConfig, build_planted_store,
                                   format_planted_report, load_suite, parse_methods, parse_suite, planted_activations,
                                   run_planted_eval)
from neuron_explainer.eval.suite import BUILTIN_SUITE_PATH

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from tiny_models import train_tokenizer  # noqa: E402

SMALL_SUITE = """
[suite]
name = "small"
seed = 3

[[neuron]]
name = "the"
category = "token"
concept = 'the word "the"'
value = 3.0
jitter = 0.2
rule = { kind = "token", pattern = "the", ignore_case = true }
checker = { regex = ['"the"'] }

[[neuron]]
name = "digits"
category = "token-class"
concept = 'digits ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")'
value = 4.0
jitter = 0.3
rule = { kind = "token", pattern = '\\d+' }
checker = { keywords = ["digit", "number"], members = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], min_members = 3 }

[[neuron]]
name = "first-token"
category = "position"
concept = "the first token of the text"
value = 5.0
rule = { kind = "position", positions = [0] }
checker = { keywords = ["first token", "beginning"] }

[[neuron]]
name = "inside-parentheses"
category = "context"
concept = "text inside parentheses"
value = 2.5
noise = 0.05
rule = { kind = "inside", open = "(", close = ")" }
checker = { keywords = ["parenthes"] }
"""


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> str:
    """Directory of a small byte-level BPE tokenizer (no model weights needed to cut windows)."""
    directory = tmp_path_factory.mktemp("tiny-tokenizer")
    train_tokenizer(directory)
    return str(directory)


@pytest.fixture()
def small_suite_file(tmp_path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SUITE, encoding="utf-8")
    return path


# --- the suite format ------------------------------------------------------------------------------------------


def test_builtin_suite_spans_every_kind_of_concept_and_names_its_own_concepts():
    suite = load_suite()
    assert suite.name == "builtin" and suite.source == str(BUILTIN_SUITE_PATH)
    assert len(suite.neurons) >= 40
    categories = Counter(neuron.category for neuron in suite.neurons)
    assert set(categories) == {"token", "token-class", "word-list", "multi-token", "position", "context"}
    names = {neuron.name for neuron in suite.neurons}
    assert {"digits", "capitalised", "punctuation", "closing-brackets", "colours", "months", "animals",
            "python-keywords", "of-the", "after-def", "first-token", "inside-double-quotes",
            "inside-parentheses"} <= names
    assert sum(neuron.jitter > 0 for neuron in suite.neurons) >= 30
    assert sum(neuron.noise > 0 for neuron in suite.neurons) >= 8
    # A true description of the concept must pass its own checker, or recovery would be unreachable.
    assert [neuron.name for neuron in suite.neurons if not neuron.checker.passes(neuron.concept)] == []


def test_checkers_need_the_concept_not_just_a_member_of_it():
    suite = parse_suite(__import__("tomllib").loads(SMALL_SUITE))
    the, digits = suite.neurons[0].checker, suite.neurons[1].checker
    assert the.passes('the word "the"') and not the.passes("the word of")
    assert digits.passes("Digits and numbers") and digits.passes('"0", "3", "7"')
    assert not digits.passes('"2045", "1"') and digits.matched('"1", "2", "9"') == ["1", "2", "9"]


@pytest.mark.parametrize("text, problem", [
    ("[[neuron]\nname = 1", "not valid TOML"),
    ("[suite]\nname = 'x'\n", "no [[neuron]] entries"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nchecker = { keywords = ['k'] }\n", "neuron #1 ('a'): missing `rule`"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nrule = { kind = 'regex', pattern = 'x' }\nchecker = { keywords = ['k'] }",
     "`kind` must be one of token, words, text, after, position, inside (got 'regex')"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nrule = { kind = 'token', patern = 'x' }\nchecker = { keywords = ['k'] }",
     "unknown key(s) patern"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nrule = { kind = 'token', pattern = '(' }\nchecker = { keywords = ['k'] }",
     "`pattern` is not a valid regular expression"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nrule = { kind = 'words', words = ['red'], weights = { blue = 1.0 } }\n"
     "checker = { keywords = ['k'] }", "weight given for 'blue', which is not in `words`"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\njitter = 1.5\nrule = { kind = 'position', positions = [0] }\n"
     "checker = { keywords = ['k'] }", "`jitter` must be in [0, 1)"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nrule = { kind = 'inside', open = '(' }\nchecker = { keywords = ['k'] }",
     "the inside rule needs close"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nrule = { kind = 'position', positions = [0] }\nchecker = {}",
     "give at least one of keywords, regex, members"),
    ("[[neuron]]\nname = 'a'\nconcept = 'c'\nrule = { kind = 'position', positions = [0] }\n"
     "checker = { keywords = ['k'] }\n[[neuron]]\nname = 'a'\nconcept = 'd'\n"
     "rule = { kind = 'position', positions = [1] }\nchecker = { keywords = ['k'] }", "duplicate neuron name 'a'"),
])
def test_malformed_suite_files_are_user_errors_naming_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_suite(path)
    assert problem in str(caught.value) and str(path) in str(caught.value)


def test_a_missing_suite_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_suite(tmp_path / "nope.toml")


# --- activation rules ------------------------------------------------------------------------------------------


def _suite(rules: str) -> object:
    import tomllib

    return parse_suite(tomllib.loads(rules))


def _activations(suite, windows: list[list[str]], **kwargs) -> np.ndarray:
    vocab = sorted({token for window in windows for token in window})
    ids = np.array([[vocab.index(token) for token in window] for window in windows])
    return planted_activations(suite, ids, vocab, **kwargs)


def _neuron(name: str, rule: str, *, value: float = 1.0, extra: str = "") -> str:
    return (f"[[neuron]]\nname = '{name}'\nconcept = 'c'\nvalue = {value}\n{extra}rule = {rule}\n"
            "checker = { keywords = ['k'] }\n")


def test_each_rule_kind_fires_exactly_where_its_concept_is():
    suite = _suite(
        _neuron("the", "{ kind = 'token', pattern = 'the', ignore_case = true }")
        + _neuron("september", "{ kind = 'words', words = ['September', 'red'], weights = { red = 0.5 } }")
        + _neuron("of-the", "{ kind = 'text', pattern = 'of the', fire_on = 'last' }")
        + _neuron("after-def", "{ kind = 'after', after = 'def', pattern = '\\w+' }")
        + _neuron("edges", "{ kind = 'position', positions = [0, -1], weights = [1.0, 0.25] }")
        + _neuron("parens", "{ kind = 'inside', open = '(', close = ')' }")
        + _neuron("quotes", "{ kind = 'inside', open = '\"', close = '\"' }"))
    windows = [
        ["The", " end", " of", " the", " Sep", "tember", " red", "dish", " red", "."],
        ["def", " area", "(", "a", ",", " (", "b", "))", " c", " the"],
        ["x", " \"", "a", " b", "\"", " y", " \"", "z", "\n", "w"],
    ]
    acts = _activations(suite, windows)
    column = {neuron.name: index for index, neuron in enumerate(suite.neurons)}

    def fired(name: str, row: int) -> list[float]:
        return [round(float(value), 3) for value in acts[row, :, column[name]]]

    assert fired("the", 0) == [1, 0, 0, 1, 0, 0, 0, 0, 0, 0] and fired("the", 1)[-1] == 1
    # A word split over two tokens fires on both; "red" inside "reddish" is not the word "red".
    assert fired("september", 0) == [0, 0, 0, 0, 1, 1, 0, 0, 0.5, 0]
    assert fired("of-the", 0) == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert fired("after-def", 1) == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert fired("edges", 2) == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0.25]
    # Nested parentheses: everything between the outer pair, but not the delimiters or what follows.
    assert fired("parens", 1) == [0, 0, 0, 1, 1, 0, 1, 0, 0, 0]
    # Quotes pair within a line: a stray quote does not turn the next line into a quotation.
    assert fired("quotes", 2) == [0, 0, 1, 1, 0, 0, 0, 1, 0, 0]


def test_grades_are_fixed_per_token_and_noise_is_seeded():
    suite = _suite("[suite]\nseed = 7\n" + _neuron("the", "{ kind = 'token', pattern = 'the', ignore_case = true }",
                                                    value=2.0, extra="jitter = 0.5\nnoise = 0.1\n"))
    windows = [["the", " The", " x", " the"] * 8, [" The", "the", " y", "the"] * 8]
    first = _activations(suite, windows, noise_key="a")
    assert np.array_equal(first, _activations(suite, windows, noise_key="a"))
    assert not np.array_equal(first, _activations(suite, windows, noise_key="b"))
    noiseless = _activations(_suite("[suite]\nseed = 7\n" + _neuron(
        "the", "{ kind = 'token', pattern = 'the', ignore_case = true }", value=2.0, extra="jitter = 0.5\n")),
        windows)[:, :, 0]
    fired = noiseless[noiseless > 0]
    assert fired.min() >= 1.0 and fired.max() <= 2.0 and len(set(fired.tolist())) == 3
    # The same token type always fires at the same grade, wherever it is.
    assert noiseless[0, 0] == noiseless[1, 1] == noiseless[1, 3] and noiseless[0, 1] == noiseless[1, 0]
    noise = first[:, :, 0] - noiseless
    assert 0.05 < float(noise.std()) < 0.3


# --- the planted record store ------------------------------------------------------------------------------------


def test_planted_store_is_an_ordinary_record_store_with_the_recorders_top_k(tmp_path, tiny_tokenizer,
                                                                             small_suite_file):
    from neuron_explainer.activations import RecordStore

    suite = load_suite(small_suite_file)
    config = PlantedRecordingConfig(tokenizer=tiny_tokenizer, windows=300, window_length=32, top_k=20, random_k=15)
    built = build_planted_store(suite, config, out_dir=tmp_path / "store")
    assert not built.reused
    store = RecordStore.open(built.path)
    manifest = store.manifest
    assert manifest.model_id == "planted:small" and manifest.layers == (0,) and manifest.neurons_per_layer == 4
    assert manifest.extra["planted"]["suite"]["neurons"][1]["name"] == "digits"
    assert store.num_windows == 300 and store.window_length == 32

    expected = planted_activations(suite, np.asarray(store.token_ids), store.vocab)
    for index in range(len(suite.neurons)):
        record = store.load_neuron(0, index)
        maxima = expected[:, :, index].max(axis=1)
        # Descending max activation, ties to the earlier window: the recorder's rule.
        order = sorted(range(len(maxima)), key=lambda window: (-maxima[window], window))[:20]
        assert [window.window_id for window in record.top_windows] == order
        for window in record.top_windows[:3]:
            assert np.allclose(window.activations, expected[window.window_id, :, index], atol=1e-6)
        assert record.stats.max == pytest.approx(float(expected[:, :, index].max()), rel=1e-6)
        assert record.stats.mean == pytest.approx(float(expected[:, :, index].mean()), rel=1e-4, abs=1e-6)
    assert [w.window_id for w in store.load_neuron(0, 0).random_windows] == \
        [w.window_id for w in store.load_neuron(0, 3).random_windows]

    again = build_planted_store(suite, config, out_dir=tmp_path / "store")
    assert again.reused and again.identity == built.identity
    changed = parse_suite(__import__("tomllib").loads(SMALL_SUITE.replace("value = 5.0", "value = 6.0")),
                          source=str(small_suite_file))
    rebuilt = build_planted_store(changed, config, out_dir=tmp_path / "store")
    assert not rebuilt.reused and rebuilt.identity != built.identity


# --- the evaluation ------------------------------------------------------------------------------------------------


def test_offline_eval_recovers_token_neurons_and_shows_where_cheap_methods_fail(tmp_path, tiny_tokenizer,
                                                                                small_suite_file):
    config = PlantedEvalConfig(
        methods=tuple(parse_methods(["ngram"], ["lexical"], [None])), planted=str(small_suite_file),
        store=str(tmp_path / "store"),
        recording=PlantedRecordingConfig(tokenizer=tiny_tokenizer, windows=600, window_length=32))
    report = run_planted_eval(config)
    (method,) = report.methods
    assert (method.explainer, method.simulator, method.backend) == ("ngram", "lexical", "none")
    results = {result.name: result for result in method.neurons}
    the = results["the"]
    assert the.recovered and the.score > 0.5 and the.concept_score > 0.8, the
    # Position and context concepts are invisible to an n-gram list: that is what the report is for.
    assert not results["first-token"].recovered and not results["inside-parentheses"].recovered
    assert method.categories["context"].recovery_rate == 0 and method.categories["position"].recovery_rate == 0
    assert method.summary.neurons == 4 and method.prompt_tokens_per_neuron == 0
    assert method.cost_per_neuron_usd == 0
    assert abs(method.summary.shuffled_mean) < 0.2
    data = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert data["methods"][0]["categories"]["token"]["recovered"] == 1
    # Every neuron is counted: explained, or listed under the reason its run stored.
    summary = method.summary
    assert summary.explained == sum(result.explanation is not None for result in method.neurons)
    assert summary.neurons - summary.explained <= sum(summary.failures.values())
    assert all(result.failure for result in method.neurons if result.explanation is None)
    text = format_planted_report(report)
    assert "explained" in text and ">concept" in text and "ceiling" not in text


def _unescape(token: str) -> str:
    return token.replace("␣", " ").replace("\\n", "\n").replace("\\t", "\t")


def scripted_model(body: dict) -> str:
    """Answers explainer and simulator prompts like a capable LLM, from the prompt text alone."""
    system, request = body["messages"][0]["content"], body["messages"][-1]["content"]
    if system.startswith("You are studying a single neuron"):
        strong = [_unescape(line.rsplit("\t", 1)[0]).strip() for line in request.splitlines()
                  if "\t" in line and line.rsplit("\t", 1)[1].isdigit() and int(line.rsplit("\t", 1)[1]) >= 5]
        if strong and sum(token.isdigit() for token in strong) > 0.8 * len(strong):
            return "digits and numbers"
        word, _ = Counter(token.lower() for token in strong).most_common(1)[0]
        return f'the word "{word}"'
    if system.startswith("You predict how strongly"):
        description = re.search(r"^Description: (.*)$", request, re.MULTILINE).group(1)
        quoted = {word.lower() for word in re.findall(r'"([^"]+)"', description)}
        lines = []
        for line in request.split("Tokens:\n", 1)[1].splitlines():
            index, token = line.split("\t", 1)
            token = _unescape(token).strip()
            hit = token.isdigit() if "digit" in description else token.lower() in quoted
            lines.append(f"{index}\t{10 if hit else 0}")
        return "\n".join(lines)
    raise AssertionError(f"unexpected prompt: {system[:60]!r}")


def test_eval_against_a_loopback_server_counts_tokens_and_recovers_concepts(tmp_path, tiny_tokenizer,
                                                                            small_suite_file):
    with FakeOpenAIServer(responder=scripted_model) as server:
        spec = server.backend_spec("scripted")
        config = PlantedEvalConfig(
            methods=tuple(parse_methods(["token-pairs"], [None], [spec])), planted=str(small_suite_file),
            store=str(tmp_path / "store"), limit=2,
            recording=PlantedRecordingConfig(tokenizer=tiny_tokenizer, windows=600, window_length=32))
        report = run_planted_eval(config)
    (method,) = report.methods
    # A chat server without prompt logprobs gets the generated-output simulator by default.
    assert method.backend == spec and method.simulator == "generated" and method.summary.neurons == 2
    results = {result.name: result for result in method.neurons}
    assert results["digits"].explanation == "digits and numbers" and results["digits"].recovered
    assert results["digits"].score > 0.8 and results["digits"].shuffled < 0.2
    assert results["the"].recovered and results["the"].score > 0.7
    # Every product call went over HTTP and was counted; the unpriced model's cost is unknown, not 0.
    assert method.prompt_tokens_per_neuron > 100 and method.completion_tokens_per_neuron > 10
    assert method.cost_per_neuron_usd is None and method.reference_tokens > 0
    assert results["digits"].prompt_tokens > 0


def scripted_sasc_model(body: dict) -> str:
    """Answers SASC's summary and sentence prompts like a capable LLM: a theme for the listed n-grams, then
    sentences that do (or do not) involve it."""
    request = body["messages"][-1]["content"]
    nouns = ["garden", "river", "teacher", "window", "forest", "letter", "violin", "harbour", "kitchen", "meadow"]
    if "nothing to do with" in request:
        return "\n".join(f"{index}. A quiet {noun} waited under grey skies." for index, noun in enumerate(nouns, 1))
    if "Write" in request:
        if "number" in request:
            return "\n".join(f"{index}. The {noun} shop sold {index * 7} apples and {index + 3} pears."
                             for index, noun in enumerate(nouns, 1))
        return "\n".join(f"{index}. The {noun} is near the sea." for index, noun in enumerate(nouns, 1))
    # The n-grams are the longest paragraph of the prompt, one per line.
    entries = max((block.strip().splitlines() for block in request.split("\n\n")), key=len)
    # The strongest entries come first; the theme is what most of the first few share.
    with_digits = sum(any(character.isdigit() for character in entry) for entry in entries[:5])
    return "numbers and digits" if with_digits >= 3 else f'the word "{entries[0].split()[-1]}"'


def test_sasc_scores_its_candidates_on_the_planted_rules_themselves(tmp_path, tiny_tokenizer, small_suite_file):
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.core.neurons import NeuronId
    from neuron_explainer.eval import Method, PlantedSubject, explain_and_score, load_tokenizer
    from neuron_explainer.explain import ExplainerKind, Explanation
    from neuron_explainer.simulate import SimulatorKind

    suite = load_suite(small_suite_file)
    config = PlantedRecordingConfig(tokenizer=tiny_tokenizer, windows=600, window_length=32)
    store = RecordStore.open(build_planted_store(suite, config, out_dir=tmp_path / "store").path)
    digits = NeuronId(0, 1)
    with FakeOpenAIServer(responder=scripted_sasc_model) as server:
        method = Method(ExplainerKind.SASC, SimulatorKind.LEXICAL, server.backend_spec("scripted"))
        run = asyncio.run(explain_and_score(method, {digits: store.load_neuron(0, 1)},
                                            subject=PlantedSubject(suite, load_tokenizer(tiny_tokenizer))))
    explanation = run.explanations[digits]
    assert isinstance(explanation, Explanation) and explanation.text == "numbers and digits"
    assert suite.neurons[1].checker.passes(explanation.text)
    # The planted digits neuron fires on the sentences full of numbers and not on the contrast sentences.
    assert explanation.extra["synthetic_score"] > 1.0
    assert run.product_usage.prompt_tokens > 0 and run.product_usage.calls >= 3


def test_eval_planted_command_writes_json_and_reports_bad_files_in_one_line(tmp_path, tiny_tokenizer,
                                                                           small_suite_file, capsys):
    from neuron_explainer.cli import main

    out = tmp_path / "report.json"
    common = ["eval", "planted", "--tokenizer", tiny_tokenizer, "--windows", "300", "--ctx", "32",
              "--store", str(tmp_path / "store")]
    assert main([*common, "--planted", str(small_suite_file), "--format", "json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert [method["explainer"] for method in printed["methods"]] == ["lexicon"]  # the default explainer
    assert printed["suite"] == "small" and len(printed["methods"][0]["neurons"]) == 4

    assert main([*common, "--planted", str(small_suite_file), "--limit", "2", "--details"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"lexicon +lexical +none +2 ", table) and "by category" in table and "digits" in table

    assert main([*common, "--planted", str(small_suite_file), "--only", "context,digits", "--format", "json"]) == 0
    chosen = json.loads(capsys.readouterr().out)["methods"][0]["neurons"]
    assert [(item["name"], item["neuron"]) for item in chosen] == [("digits", "0:1"), ("inside-parentheses", "0:3")]
    assert main([*common, "--planted", str(small_suite_file), "--only", "colours"]) == 2
    assert "no planted neuron or category named colours" in capsys.readouterr().err

    bad = tmp_path / "bad.toml"
    bad.write_text("[[neuron]]\nname = 'x'\nconcept = 'c'\nrule = { kind = 'token' }\nchecker = { keywords = ['k'] }")
    assert main([*common, "--planted", str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "the token rule needs pattern" in error


def test_unknown_methods_and_missing_backends_are_user_errors():
    with pytest.raises(UserError, match="unknown explainer 'magic'"):
        parse_methods(["magic"], [None], [None])
    with pytest.raises(UserError, match="unknown simulator 'psychic'"):
        parse_methods(["ngram"], ["psychic"], [None])
    with pytest.raises(UserError, match="needs an LLM backend"):
        parse_methods(["token-pairs"], [None], [None])
    methods = parse_methods(["ngram", "token-pairs"], [None], ["local:default", "openai:gpt-4o-mini"])
    assert [method.label for method in methods] == [
        "ngram / default / local:default", "token-pairs / default / local:default",
        "ngram / default / openai:gpt-4o-mini", "token-pairs / default / openai:gpt-4o-mini"]
    assert parse_methods(["ngram"], [None], [None])[0].label == "ngram / lexical / none"


# --- the built-in suite on the default model's tokenizer (slow: converts the bundled model once) ------------------


@pytest.mark.slow
def test_builtin_suite_offline_shows_what_cheap_methods_recover_and_where_they_fail(tmp_path):
    config = PlantedEvalConfig(methods=tuple(parse_methods(["ngram"], ["lexical"], [None])),
                               store=str(tmp_path / "store"))
    report = run_planted_eval(config)
    (method,) = report.methods
    categories = method.categories
    assert method.summary.neurons >= 40 and report.windows > 9000
    # The simulator can represent single tokens and word lists (high ceilings) ...
    assert categories["token"].concept_mean > 0.8 and categories["word-list"].concept_mean > 0.6
    # ... the n-gram explainer names single tokens (the bar: >= 90% recovered, scoring > 0.7) and word lists,
    # and nothing of positions or enclosing context.
    assert categories["token"].recovery_rate >= 0.9 and categories["token"].mean_score > 0.7
    assert categories["word-list"].recovery_rate >= 0.9
    assert categories["position"].recovery_rate == 0 and categories["context"].recovery_rate == 0
    assert abs(method.summary.shuffled_mean) < 0.05


@pytest.mark.slow
def test_local_default_backend_runs_the_planted_eval(tmp_path):
    from neuron_explainer.explain import SplitConfig

    # A small split: on 2 CPU cores each simulated window costs the 135M model about a second.
    config = PlantedEvalConfig(methods=tuple(parse_methods(["token-pairs"], [None], ["local:default"])),
                               store=str(tmp_path / "store"), only=("digits",),
                               split=SplitConfig(explain_top=5, score_top=3, score_random=3),
                               recording=PlantedRecordingConfig(windows=1500))
    report = run_planted_eval(config)
    (method,) = report.methods
    assert (method.explainer, method.simulator, method.backend) == ("token-pairs", "all-at-once", "local:default")
    (result,) = method.neurons
    assert result.name == "digits" and (result.explanation is not None or result.failure is not None)
    # In-process models are free; their tokens are still counted.
    assert method.cost_per_neuron_usd == 0 and method.prompt_tokens_per_neuron > 0
    assert math.isfinite(result.concept_score)
