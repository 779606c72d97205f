"""What a lexical explanation says, as weighted items: quoted tokens or phrases, token classes, content words.

Two kinds of text are read:

- **Weighted lists**, as the `lexicon` explainer writes them: `fires on "def" (1.00), "class" (0.62); also on
  digits (0.55)` — quoted tokens/phrases and class names, each with a weight in parentheses (0 to 1). A text that
  starts with `fires on` and carries a `(number)` is held to this grammar; if it does not parse, `parse_items`
  raises `LexicalParseError` with the raw text, never a half-read list.
- **Free-form text** (LLM explanations): every quoted string weighs 1; a text without quotes falls back to its
  content words (0.5 each), matched case-insensitively to whole tokens; and every class the text names (`digits`,
  `opening parentheses`, `the "-tion" suffix`) weighs 1.

`item_scores` turns items into a prediction per token: the largest weight of any item the token matches (a
quoted phrase matched exactly counts fully, case-insensitively 0.8 of its weight; phrases may span tokens).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from neuron_explainer.explain.token_classes import TokenClass, class_named, mentioned_classes

EXACT_WEIGHT = 1.0
CASE_INSENSITIVE_WEIGHT = 0.8
WORD_WEIGHT = 0.5
MAX_PHRASE_TOKENS = 12
"""Longest run of tokens tried against one quoted phrase."""
LIST_PREFIX = "fires on "
ALSO = "; also on "

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|`([^`]+)`|(?<![A-Za-z])'([^']+)'(?![A-Za-z])|‘([^’]+)’")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+|\d+")
_WEIGHT_MARK = re.compile(r"\(\s*\d+\.\d+\s*\)")
_WEIGHT = re.compile(r"\s*\(\s*(\d+(?:\.\d+)?)\s*\)")
_CLASS_NAME = re.compile(r"([^()\"`‘’,;]+?)(?=\s*\()")
_CLOSING_QUOTE = {'"': '"', "`": "`", "‘": "’"}
# Words that describe neurons rather than the text they respond to.
_GENERIC_WORDS = frozenset("""
a an the and or of in on at to for with by from as is are be being been it its this that these those such
neuron neurons fires fire firing activates activate activation active responds respond response detects
token tokens word words phrase phrases text mention mentions term terms related relating about like
mostly mainly strongly often usually especially particular specific various other certain some any
""".split())


class ItemKind(str, Enum):
    """What an item matches."""

    PHRASE = "phrase"
    CLASS = "class"
    WORD = "word"


@dataclass(frozen=True)
class LexicalItem:
    """One thing an explanation says the neuron fires on, with its relative strength."""

    kind: ItemKind
    """Quoted phrase, token class or content word."""
    text: str
    """The phrase, the class name or the (lower-cased) word."""
    weight: float = 1.0
    """Relative strength, 0 to 1."""
    token_class: TokenClass | None = None
    """The class, for CLASS items."""


class LexicalParseError(ValueError):
    """A weighted list that does not follow the grammar; `raw` is the text as given."""

    def __init__(self, reason: str, raw: str) -> None:
        super().__init__(f"malformed lexical explanation ({reason}): {raw!r}")
        self.reason = reason
        self.raw = raw


def is_weighted_list(text: str) -> bool:
    """True when the text claims the weighted-list grammar (starts with `fires on`, carries a `(weight)`)."""
    return text.lstrip().casefold().startswith(LIST_PREFIX.strip()) and _WEIGHT_MARK.search(text) is not None


def parse_items(text: str) -> tuple[LexicalItem, ...]:
    """The items of an explanation: a weighted list parsed strictly, anything else read as free-form text."""
    if not isinstance(text, str):
        raise LexicalParseError("not a string", repr(text))
    if is_weighted_list(text):
        return _parse_weighted_list(text)
    return _free_form_items(text)


def quoted_phrases(explanation: str) -> tuple[str, ...]:
    """Strings quoted in the explanation, in order, without duplicates."""
    phrases: list[str] = []
    for match in _QUOTED.finditer(explanation):
        phrase = next(group for group in match.groups() if group is not None).strip()
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return tuple(phrases)


def content_words(explanation: str) -> tuple[str, ...]:
    """Lower-cased words of the explanation that could appear in text (describing words dropped)."""
    words: list[str] = []
    for word in _WORD.findall(explanation):
        word = word.casefold()
        if word not in _GENERIC_WORDS and word not in words:
            words.append(word)
    return tuple(words)


def _free_form_items(text: str) -> tuple[LexicalItem, ...]:
    items = [LexicalItem(ItemKind.PHRASE, phrase) for phrase in quoted_phrases(text)]
    if not items:
        items = [LexicalItem(ItemKind.WORD, _singular(word), WORD_WEIGHT) for word in content_words(text)]
    items += [LexicalItem(ItemKind.CLASS, token_class.name, token_class=token_class)
              for token_class in mentioned_classes(text)]
    return tuple(items)


def _parse_weighted_list(raw: str) -> tuple[LexicalItem, ...]:
    text = raw.strip()
    position = len(LIST_PREFIX.strip())
    items: list[LexicalItem] = []
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            raise LexicalParseError("an item is missing", raw)
        opening = text[position]
        if opening in _CLOSING_QUOTE:
            end = text.find(_CLOSING_QUOTE[opening], position + 1)
            if end < 0:
                raise LexicalParseError(f"unclosed quote at character {position}", raw)
            phrase = text[position + 1:end]
            if not phrase.strip():
                raise LexicalParseError(f"empty quote at character {position}", raw)
            item = LexicalItem(ItemKind.PHRASE, phrase.strip())
            position = end + 1
        else:
            match = _CLASS_NAME.match(text, position)
            token_class = class_named(match.group(1)) if match else None
            if match is None or token_class is None:
                shown = match.group(1).strip() if match else text[position:position + 20]
                raise LexicalParseError(f"unknown token class {shown!r}", raw)
            item = LexicalItem(ItemKind.CLASS, token_class.name, token_class=token_class)
            position = match.end()
        weight = _WEIGHT.match(text, position)
        if weight is None:
            raise LexicalParseError(f"no (weight) after {item.text!r}", raw)
        value = float(weight.group(1))
        if value > 1.0:
            raise LexicalParseError(f"weight {value} of {item.text!r} is above 1", raw)
        items.append(LexicalItem(item.kind, item.text, value, item.token_class))
        position = weight.end()
        rest = text[position:]
        if not rest.strip():
            return tuple(items)
        if rest.startswith(ALSO):
            position += len(ALSO)
        elif rest.lstrip().startswith(","):
            position += len(rest) - len(rest.lstrip()) + 1
        else:
            raise LexicalParseError(f"expected ',' or '{ALSO.strip()}' at character {position}", raw)


def format_items(items: Sequence[LexicalItem]) -> str:
    """The weighted-list text of items (phrases first, then `; also on` classes, each strongest first)."""
    phrases = sorted((item for item in items if item.kind is ItemKind.PHRASE), key=lambda item: -item.weight)
    classes = sorted((item for item in items if item.kind is ItemKind.CLASS), key=lambda item: -item.weight)
    parts = [", ".join(f"{quote(item.text)} ({item.weight:.2f})" for item in phrases),
             ", ".join(f"{item.text} ({item.weight:.2f})" for item in classes)]
    return LIST_PREFIX + ALSO.join(part for part in parts if part)


def quote(phrase: str) -> str:
    """The phrase in the first quote pair it does not contain; ValueError when it contains all of them."""
    for opening, closing in _CLOSING_QUOTE.items():
        if opening not in phrase and closing not in phrase:
            return f"{opening}{phrase}{closing}"
    raise ValueError(f"cannot quote {phrase!r}")


def quotable(phrase: str) -> bool:
    """True when `quote` can write the phrase and reading it back gives the same phrase."""
    stripped = phrase.strip()
    return bool(stripped) and stripped == phrase and any(
        opening not in phrase and closing not in phrase for opening, closing in _CLOSING_QUOTE.items())


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def phrase_match(phrase: str, text: str) -> float:
    """How a token (or a run of tokens joined) matches a quoted phrase: 1 exactly, 0.8 case-insensitively, else 0
    (surrounding spaces stripped)."""
    candidate = text.strip()
    if candidate == phrase:
        return EXACT_WEIGHT
    return CASE_INSENSITIVE_WEIGHT if candidate.casefold() == phrase.casefold() else 0.0


def item_scores(items: Sequence[LexicalItem], tokens: Sequence[str]) -> tuple[float, ...]:
    """Prediction per token: the largest weight of any item the token matches (0 when none does)."""
    scores = [0.0] * len(tokens)
    heads = [token.lstrip().casefold() for token in tokens]
    for item in items:
        if item.kind is ItemKind.PHRASE:
            _mark_phrase(item, tokens, heads, scores)
        elif item.kind is ItemKind.CLASS and item.token_class is not None:
            for position, token in enumerate(tokens):
                if item.weight > scores[position] and item.token_class(token):
                    scores[position] = item.weight
        else:
            for position, token in enumerate(tokens):
                if item.weight > scores[position] and _singular(token.strip().casefold()) == item.text:
                    scores[position] = item.weight
    return tuple(scores)


def _mark_phrase(item: LexicalItem, tokens: Sequence[str], heads: Sequence[str], scores: list[float]) -> None:
    phrase, folded = item.text, item.text.casefold()
    for start, head in enumerate(heads):
        # A match starting here must begin with this token's text: skip the rest cheaply (most tokens).
        if head and not folded.startswith(head) and folded != head.rstrip():
            continue
        joined = ""
        for end in range(start, min(len(tokens), start + MAX_PHRASE_TOKENS)):
            joined += tokens[end]
            if len(joined.strip()) > len(phrase):
                break
            quality = phrase_match(phrase, joined)
            if quality:
                for position in range(start, end + 1):
                    scores[position] = max(scores[position], quality * item.weight)
                break
