"""The lexical ceiling, the `lexicon` explainer, its token-class rules and the weighted-list grammar the lexical
simulator reads: hostile tokens, malformed explanations, planted neurons, and a run through the pipeline."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.activations import record_activations
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.activations.records import Window
from neuron_explainer.eval.real import ScoredExplanation, versus_ceiling
from neuron_explainer.explain.lexical_grammar import (ItemKind, LexicalItem, LexicalParseError, format_items,
                                                      is_weighted_list, item_scores, parse_items, quotable, quote)
from neuron_explainer.explain.lexicon import LexiconConfig, explain_lexicon, fit_items
from neuron_explainer.explain.token_classes import (FIXED_CLASSES, candidate_classes, class_named,
                                                    mentioned_classes, prefix_class, suffix_class)
from neuron_explainer.explain.types import ExplainerKind, Explanation
from neuron_explainer.pipeline import RunConfig, run_pipeline
from neuron_explainer.scoring import ScoreConfig, lexical_ceiling, score_explanation
from neuron_explainer.simulate.lexical import LexicalSimulator, lexical_scores
from neuron_explainer.simulate.token_lookup import TokenLookup

sys.path.insert(0, str(Path(__file__).parent))
from neuron_records import corpus_windows, digit_activation, planted_record, word_activation  # noqa: E402

HOSTILE_TOKENS = ("", " ", "\n", "\u0120", "\u010a\u0120\u0120", "\ufffd", "\udcff", "\x00", "\u200b", "\u0663",
                  "\uff11", "\u00c9COLE", "\u00df", "\u03a9\u039c\u0395\u0393\u0391", "\U0001f600", "e\u0301",
                  "\t\t", "\r\n", "_\u00e9_", "(\u0663)", "--", "\u2019s")
"""Empty strings, whitespace, byte-level BPE markers, replacement and lone surrogate characters, zero-width and
full-width characters, Arabic-Indic and full-width digits, accented and Greek capitals, emoji, combining marks."""

# Per fixed class: tokens that belong to it and tokens that do not (the hostile ones are checked separately).
CLASS_CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "digits": ((" 7", "2045", "0", "\u0663"), ("x1", "1.5", "", " ", "\u00bd")),
    "numbers": (("3.11", " 1,000", "-2", "1e-5", "7"), ("3.", "v3", "", ".")),
    "all-caps words": ((" RFC", "HTTP", "\u03a9\u039c\u0395\u0393\u0391", "\u00c9COLE"), ("A", "Http", "R2D2", "", "__")),
    "capitalised words": ((" Python", "The", "\u00c9cole"), ("THE", "the", "A", "McDonald", "", "\u00df")),
    "lower-case words": ((" the", "ing", "\u00df"), ("The", "x1", "", "_")),
    "punctuation": ((".", " ,", "?!", ".,"), ("(", "a.", "", " ", "...a")),
    "commas": ((",", " ,,"), (".", ", a", "")),
    "full stops": ((".", "..."), (",", "", ".a")),
    "colons": ((":", " ::"), (";", "")),
    "quote marks": (("\"", " '", "\u201c", "``"), ("a'", "", "(")),
    "opening brackets": (("(", " [", "{", "(("), (")", "()", "", "a(")),
    "closing brackets": ((")", " ]", "}", "),", ")."), ("(", ",)", "", "a)")),
    "brackets": (("(", ")", "[]", "{}"), ("<", "", "(a")),
    "operators": (("=", " +", "==", "->", "<=", "%", "!="), ("!", "a", "", "=a")),
    "underscores": (("_", "__init__", " snake_case", "_\u00e9_"), ("-", "a", "", "_-")),
    "line breaks": (("\n", " \n", "\n\n  ", "\r\n"), (" ", "a\n", "", "\u010a")),
    "spaces": ((" ", "    ", "\t"), ("\n", "", "a ")),
}


def test_every_fixed_class_has_cases() -> None:
    assert set(CLASS_CASES) == {token_class.name for token_class in FIXED_CLASSES}


@pytest.mark.parametrize("name", sorted(CLASS_CASES))
def test_class_rule_members_non_members_and_hostile_tokens(name: str) -> None:
    token_class = class_named(name)
    assert token_class is not None and token_class.name == name
    members, non_members = CLASS_CASES[name]
    assert [token for token in members if not token_class(token)] == []
    assert [token for token in non_members if token_class(token)] == []
    for token in HOSTILE_TOKENS:
        assert isinstance(token_class(token), bool)
    assert token_class("") is False


def test_affix_classes_on_pieces_and_hostile_tokens() -> None:
    tion, un = suffix_class("tion"), prefix_class("un")
    assert tion(" function") and tion("tion") and tion("ACTION") and not tion("tions") and not tion("tion_")
    assert un(" undo") and un("Un") and not un(" fun") and not un("un-")
    for token_class in candidate_classes():
        assert all(isinstance(token_class(token), bool) for token in HOSTILE_TOKENS)
    assert class_named("words ending in -ful").name == "words ending in -ful"
    assert class_named("words starting with pre-")("prefix")
    assert class_named("no such class") is None and class_named("") is None


def test_free_form_text_names_classes() -> None:
    names = [token_class.name for token_class in mentioned_classes(
        "digits, opening parentheses, ACRONYMS, line breaks and the '-tion' suffix")]
    assert names == ["digits", "all-caps words", "opening brackets", "line breaks", "words ending in -tion"]
    assert mentioned_classes("number words such as one and two") == ()
    assert mentioned_classes("numbers written as words") == ()
    assert mentioned_classes("") == ()


def test_weighted_list_round_trip_and_scores() -> None:
    items = (LexicalItem(ItemKind.TOKEN, "def", 1.0), LexicalItem(ItemKind.TOKEN, '"', 0.5),
             LexicalItem(ItemKind.CLASS, "digits", 0.25, class_named("digits")))
    text = format_items(items)
    assert text == 'fires on "def" (1.00), `"` (0.50); also on digits (0.25)'
    assert is_weighted_list(text)
    assert [(item.kind, item.text, item.weight) for item in parse_items(text)] == [
        (item.kind, item.text, item.weight) for item in items]
    assert item_scores(parse_items(text), ("def", " Def", ' "', " 42", "x")) == (1.0, 0.8, 0.5, 0.25, 0.0)
    assert quote("`\"") == "‘`\"’" and not quotable("`\"‘’") and not quotable(" x") and not quotable("")


def test_context_whitespace_and_lowered_items_round_trip_and_score() -> None:
    items = (LexicalItem(ItemKind.TOKEN, "def", 1.0), LexicalItem(ItemKind.TOKEN, "(", 0.75, after="def"),
             LexicalItem(ItemKind.AFTER, "import", 0.5), LexicalItem(ItemKind.WHITESPACE, "\n    ", 0.25),
             LexicalItem(ItemKind.TOKEN, "the", -0.5), LexicalItem(ItemKind.WHITESPACE, "\n", -0.25))
    text = format_items(items)
    assert text == ('fires on "def" (1.00), "(" after "def" (0.75), tokens after "import" (0.50), a line break and '
                    '4 spaces (0.25); lower on "the" (0.50), a line break (0.25)')
    parsed = parse_items(text)
    assert [(item.kind, item.text, item.weight, item.after) for item in parsed] == [
        (item.kind, item.text, item.weight, item.after) for item in items]
    tokens = ("def", "(", " (", "\n    ", "import", " os", " the", "\n", " x", "(")
    # A raised item wins over a lowered one on the same token; "(" counts only right after "def".
    assert item_scores(parsed, tokens) == (1.0, 0.75, 0.0, 0.25, 0.0, 0.5, -0.5, -0.25, 0.0, 0.0)
    assert item_scores(parse_items('fires on "x" (0.50); lower on "x" (1.00)'), (" x", "y")) == (0.5, 0.0)
    assert parse_items("fires on 2 line breaks and a space (0.50)")[0].text == "\n\n "


def test_other_tokens_round_trip_in_groups_of_one_weight() -> None:
    items = (LexicalItem(ItemKind.TOKEN, "def", 1.0), LexicalItem(ItemKind.TOKEN, "x", -0.5),
             LexicalItem(ItemKind.TOKEN, "a", 0.2, tail=True), LexicalItem(ItemKind.TOKEN, "B", 0.2, tail=True),
             LexicalItem(ItemKind.WHITESPACE, "\n", -0.04, tail=True), LexicalItem(ItemKind.TOKEN, "c", -0.04, tail=True))
    text = format_items(items)
    assert text == ('fires on "def" (1.00); lower on "x" (0.50); other tokens: "a", "B" (0.20), a line break, "c" '
                    '(-0.04)')
    assert parse_items(text) == items
    assert item_scores(parse_items(text), ("def", " a", " b", "\n", "c", " x", "z")) == pytest.approx(
        (1.0, 0.2, 0.16, -0.04, -0.04, -0.5, 0.0))


def test_a_weighted_list_matches_whole_tokens_and_free_form_text_matches_phrases() -> None:
    # A quoted item of a weighted list is one token, as the explainer measured it; free-form quotes span tokens and
    # take the whitespace token before them along, as before.
    tokens = ("de", "f", "    ", "def", " Def")
    assert lexical_scores('fires on "def" (1.00)', tokens) == (0.0, 0.0, 0.0, 1.0, 0.8)
    assert lexical_scores('"def"', tokens) == (1.0, 1.0, 1.0, 1.0, 0.8)


def _reference_scores(items: tuple[LexicalItem, ...], tokens: tuple[str, ...]) -> tuple[float, ...]:
    """Weighted-list semantics written out token by token, item by item (what ItemMatcher must equal)."""
    scores = []
    for position, token in enumerate(tokens):
        raised, lowered = [], [0.0]
        for item in items:
            form = token.strip()
            if item.kind is ItemKind.WHITESPACE:
                quality = 1.0 if token == item.text else 0.0
            elif item.kind is ItemKind.AFTER:
                quality = 1.0 if position > 0 and tokens[position - 1].strip() == item.text else 0.0
            else:
                quality = 1.0 if form == item.text else 0.8 if form.casefold() == item.text.casefold() else 0.0
                if item.after is not None and not (position > 0 and tokens[position - 1].strip() == item.after):
                    quality = 0.0
            if quality:
                (raised if item.weight >= 0 else lowered).append(quality * item.weight)
        scores.append(max(raised) if raised else min(lowered))
    return tuple(scores)


def test_item_matcher_equals_the_item_by_item_semantics_on_random_lists() -> None:
    rng = random.Random(3)
    vocabulary = ("a", "A", "b", "ß", "SS", "ss", "(", "def", "Def", "\n", "  ", "\n  ", " a", "a ", "Ω", "ω", "1")
    for _ in range(300):
        items = []
        for _ in range(rng.randrange(1, 12)):
            weight = round(rng.uniform(-1, 1), 2) or 0.5
            token = rng.choice(vocabulary)
            if not token.strip():
                items.append(LexicalItem(ItemKind.WHITESPACE, token, weight, tail=rng.random() < 0.5))
            elif rng.random() < 0.2:
                items.append(LexicalItem(ItemKind.AFTER, token.strip(), weight))
            else:
                after = rng.choice(vocabulary).strip() or None if rng.random() < 0.3 else None
                items.append(LexicalItem(ItemKind.TOKEN, token.strip(), weight, after=after,
                                         tail=after is None and rng.random() < 0.5))
        tokens = tuple(rng.choice(vocabulary) for _ in range(rng.randrange(0, 20)))
        assert item_scores(items, tokens) == pytest.approx(_reference_scores(tuple(items), tokens)), (items, tokens)


def test_explainer_lists_the_rest_of_a_graded_neuron_as_other_tokens() -> None:
    windows = [tuple(window) for window in corpus_windows(count=200, length=32)]
    # Every token has a level of its own (a graded neuron, as on real layers): a head of 5 items cannot say it all.
    def level(token: str) -> float:
        return (sum(map(ord, token.strip().casefold())) % 17) / 17.0

    explain = [Window(window_id=index, tokens=tokens, activations=tuple(level(token) for token in tokens))
               for index, tokens in enumerate(windows[:10])]
    short = LexiconConfig(max_items=5)
    items = fit_items(explain, config=short)
    head_only = fit_items(explain, config=replace(short, tail=False))
    assert isinstance(items, list) and isinstance(head_only, list)
    tail = [item for item in items if item.tail]
    assert len(tail) > 20 and not any(item.tail for item in head_only)
    assert all(item.kind in (ItemKind.TOKEN, ItemKind.WHITESPACE) and item.after is None for item in tail)
    assert all(round(item.weight / 0.02) * 0.02 == pytest.approx(item.weight) for item in tail)
    text = format_items(items)
    assert "; other tokens: " in text
    assert sorted(map(repr, parse_items(text))) == sorted(map(repr, items))

    def fit(listed: list[LexicalItem], scored: list[Window]) -> float:
        return float(np.corrcoef([value for window in scored for value in window.activations],
                                 [value for window in scored for value in item_scores(listed, window.tokens)])[0, 1])

    held_out = [Window(window_id=100 + index, tokens=tokens, activations=tuple(level(token) for token in tokens))
                for index, tokens in enumerate(windows[100:140])]
    assert fit(items, explain) > fit(head_only, explain) + 0.05
    assert fit(items, held_out) > fit(head_only, held_out)


def test_explainer_writes_context_and_lowered_items() -> None:
    windows = [tuple(window) for window in corpus_windows(count=200, length=32)]
    # Fires on whatever follows "the", and sits below its usual level on ".".
    def activations(tokens: tuple[str, ...]) -> tuple[float, ...]:
        return tuple(1.0 if index and tokens[index - 1].strip() == "the" else -0.5 if token.strip() == "." else 0.1
                     for index, token in enumerate(tokens))

    items = fit_items([Window(window_id=index, tokens=tokens, activations=activations(tokens))
                       for index, tokens in enumerate(windows[:40])])
    assert isinstance(items, list)
    assert (ItemKind.AFTER, "the") in {(item.kind, item.text) for item in items if item.weight > 0}, items
    assert any(item.text == "." and item.weight < 0 for item in items), items
    assert format_items(items).startswith('fires on tokens after "the" (1.00)')


def test_free_form_explanations_read_as_before_plus_classes() -> None:
    tokens = ("United", " States", " def", " 12", ".")
    assert lexical_scores('"United States" and "def"', tokens) == (1.0, 1.0, 1.0, 0.0, 0.0)
    assert lexical_scores("the neuron fires on digits", tokens) == (0.0, 0.0, 0.0, 1.0, 0.0)
    assert lexical_scores("closing parentheses", ("(", " paren", "closing", " Parenthesis")) == (0.0, 0.0, 0.5, 0.0)
    # "fires on" without a (decimal weight) is free-form text, not a malformed list.
    assert lexical_scores("fires on the word def (in code)", tokens) == (0.0, 0.0, 0.5, 0.0, 0.0)


MALFORMED = [
    'fires on "def (1.00)',                   # unclosed quote
    'fires on "def" (1.00), flurbs (0.50)',   # unknown class
    'fires on "def" (1.00) "class" (0.50)',   # missing separator
    'fires on "def" (1.50)',                  # weight above 1
    'fires on "" (0.50)',                     # empty quote
    'fires on (0.50)',                        # no item
    'fires on "def" (0.50),',                 # trailing separator
    'fires on "def" (0.50), digits (1.0.5)',  # garbled weight
    'fires on digits (0.50); also on',        # dangling tail
    'fires on "(" after (0.50)',              # context item without its token
    'fires on tokens after def (0.50)',       # unquoted context token
    'fires on "a" (0.50); lower on "b" (0.20); also on digits (0.10)',  # raised items after the lowered ones
    'fires on "a" (0.50); lower on',          # dangling lowered tail
    'fires on 0 spaces (0.50)',               # whitespace item without whitespace
    'fires on "a" (0.50); other tokens: "b"',                  # a group without its weight
    'fires on "a" (0.50); other tokens: "b", "c" (0.10), "d"',  # the last group without its weight
    'fires on "a" (0.50); other tokens: digits (0.10)',        # a class among the other tokens
    'fires on "a" (0.50); other tokens: "b" after "a" (0.10)',  # a context item among the other tokens
    'fires on "a" (0.50); other tokens: "b" (-1.50)',          # weight below -1
    'fires on "a" (0.50); other tokens: "b" (0.10),',          # trailing separator
    'fires on "a" (0.50); other tokens: "b" (0.10); lower on "c" (0.10)',  # a section after the other tokens
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_list_is_one_clear_failure_with_the_raw_text(text: str) -> None:
    with pytest.raises(LexicalParseError) as caught:
        parse_items(text)
    assert caught.value.raw == text and repr(text) in str(caught.value)
    record = planted_record(word_activation("def"))
    outcome = asyncio.run(score_explanation(record, text, LexicalSimulator()))
    assert isinstance(outcome, Failure) and outcome.stage == "simulate"
    assert "malformed lexical explanation" in outcome.reason and repr(text) in outcome.reason


def test_parser_never_crashes_on_garbage() -> None:
    rng = random.Random(0)
    alphabet = 'fires on "`‘’(),;.0123456789 digitsalso\n\u0663\ufffd'
    for attempt in range(2000):
        prefix = "fires on " if attempt % 2 else 'fires on "a" (0.50); other tokens: '
        text = prefix + "".join(rng.choice(alphabet + "-") for _ in range(rng.randrange(30))) + " (0.5)"
        try:
            items = parse_items(text)
        except LexicalParseError as exc:
            assert exc.raw == text
        else:
            item_scores(items, ("a", " 1", "\n", ""))


def _window(window_id: int, pairs: list[tuple[str, float]]) -> Window:
    return Window(window_id=window_id, tokens=tuple(token for token, _ in pairs),
                  activations=tuple(value for _, value in pairs))


def test_token_lookup_shrinks_toward_the_mean_and_backs_off_to_it() -> None:
    lookup = TokenLookup.fit([_window(0, [("a", 4.0), ("b", 0.0), ("a", 4.0), ("c", 0.0)])], shrinkage=1.0)
    assert lookup.fallback == 2.0
    assert lookup.values["a"] == pytest.approx((8.0 + 2.0) / 3)
    assert lookup.values["b"] == pytest.approx(1.0)
    assert lookup.predict(["a", "zzz", ""]) == (pytest.approx(10 / 3), 2.0, 2.0)
    assert TokenLookup.fit([]).predict(["a"]) == (0.0,)


def test_lexical_ceiling_of_a_token_neuron_is_high_and_undefined_when_constant() -> None:
    assert lexical_ceiling(planted_record(word_activation("the"))) > 0.95
    assert math.isnan(lexical_ceiling(planted_record(lambda token: 0.0)))  # undefined, never a made-up 0


def test_explainer_names_classes_and_tokens() -> None:
    digits = explain_lexicon(planted_record(digit_activation))
    assert isinstance(digits, Explanation) and digits.method is ExplainerKind.LEXICON
    assert ("digits" in digits.text or "numbers" in digits.text) and digits.text.startswith("fires on")
    the = explain_lexicon(planted_record(word_activation("the")))
    assert isinstance(the, Explanation) and '"the"' in the.text.lower()
    assert the.source_window_ids and the.extra["items"][0]["weight"] == 1.0
    assert len(parse_items(the.text)) == len(the.extra["items"]) + the.extra["other_tokens"]
    dead = explain_lexicon(planted_record(lambda token: 0.0))
    assert isinstance(dead, Failure) and "no positive activation" in dead.reason
    assert fit_items([]) == "no explain windows"


def test_a_token_that_is_the_only_member_seen_of_a_fixed_class_is_named_as_the_class() -> None:
    commas = explain_lexicon(planted_record(lambda token: 1.0 if token.strip() == "," else 0.0))
    assert isinstance(commas, Explanation) and commas.text == "fires on commas (1.00)", commas.text


def test_explainer_reaches_the_ceiling_on_planted_class_neurons() -> None:
    simulator = LexicalSimulator()
    for rule in (digit_activation, lambda token: 1.0 if token.strip() in "([{" and token.strip() else 0.0):
        record = planted_record(rule)
        explanation = explain_lexicon(record)
        score = asyncio.run(score_explanation(record, explanation, simulator, config=ScoreConfig(bootstrap_samples=0)))
        assert score.metrics.pearson >= lexical_ceiling(record) - 0.02, explanation.text
    record = planted_record(word_activation("the"))
    score = asyncio.run(score_explanation(record, explain_lexicon(record), simulator,
                                          config=ScoreConfig(bootstrap_samples=0)))
    assert score.metrics.pearson > 0.9


def test_versus_ceiling_counts_undefined_as_zero() -> None:
    def item(score: float, ceiling: float, shuffled: float | None) -> ScoredExplanation:
        return ScoredExplanation(neuron=NeuronId(0, 0), group="g", simulator="lexical", split_seed=0, text="t",
                                 score=score, score_top=score, score_random=score,
                                 shuffled=math.nan if shuffled is None else shuffled, ceiling=ceiling,
                                 has_ceiling=True, has_shuffled=shuffled is not None)

    result = versus_ceiling([item(0.6, 0.4, 0.0), item(math.nan, 0.2, None), item(0.3, math.nan, math.nan)])
    assert result.neurons == 3 and result.score == pytest.approx(0.3) and result.ceiling == pytest.approx(0.2)
    assert result.shuffled == pytest.approx(0.0) and result.beats_ceiling == pytest.approx(2 / 3)
    assert result.verdict == "above ceiling"
    assert versus_ceiling([]).verdict == "no ceiling"


def test_run_with_the_lexicon_explainer_stores_the_ceiling(tmp_path: Path) -> None:
    windows = corpus_windows(count=120, length=32)
    vocab = sorted({token for window in windows for token in window})
    index = {token: position for position, token in enumerate(vocab)}
    token_ids = np.array([[index[token] for token in window] for window in windows], dtype=np.int32)
    rules = [digit_activation, word_activation("the"), word_activation("of")]
    activations = np.array([[[rule(token) for rule in rules] for token in window] for window in windows],
                           dtype=np.float32)
    store = record_activations(tmp_path / "records", token_ids=token_ids, vocab=vocab, activations={0: activations})
    db = tmp_path / "n.db"

    def run(baselines: bool):
        return run_pipeline(RunConfig(db=f"sqlite:///{db}", records=str(store), explainers=("lexicon",),
                                      simulator="lexical", baselines=baselines, concurrency=2), progress=False)

    summary = run(False)
    assert (summary.explained, summary.scored, summary.failed) == (3, 3, 0)
    with sqlite3.connect(db) as connection:
        stored = [json.loads(row[0]) for row in connection.execute("select baselines_json from scores")]
    # Without --baselines every score still carries its lexical ceiling, and only that.
    assert [sorted(values) for values in stored] == [["lexical_ceiling"]] * 3
    run(True)  # scores the same explanations again, now with shuffled and empty too
    with sqlite3.connect(db) as connection:
        rows = connection.execute("select e.method, e.text, s.pearson, s.baselines_json from explanations e "
                                  "join scores s on s.explanation_id = e.id where s.id > 3 order by e.id").fetchall()
    assert [row[0] for row in rows] == ["lexicon"] * 3
    # The word in its most frequent form first; other casings may follow (the simulator gives them only 0.8).
    for row, word in ((rows[1], "the"), (rows[2], "of")):
        assert row[1].startswith(f'fires on "{word}" (1.00)')
        assert {item.text.casefold() for item in parse_items(row[1])} == {word}
    for _, _, pearson, baselines in rows:
        values = json.loads(baselines)
        assert pearson > 0.75 and values["lexical_ceiling"] > 0.5 and {"shuffled", "empty"} <= set(values)
