"""What a lexical explanation says, as weighted items: quoted tokens or phrases, token classes, content words.

Two kinds of text are read:

- **Weighted lists**, as the `lexicon` explainer writes them: `fires on "def" (1.00), "(" after "def" (0.80),
  tokens after "import" (0.55); also on digits (0.55); lower on "the" (0.30)` — quoted tokens/phrases, context
  items (a quoted token right after a quoted token; any token right after a quoted token) and class names, each
  with a weight in parentheses (0 to 1). Items after `; lower on` are where the neuron sits *below* its usual
  level (the simulator predicts minus their weight there). A text that starts with `fires on` and carries a
  `(number)` is held to this grammar; if it does not parse, `parse_items` raises `LexicalParseError` with the raw
  text, never a half-read list.
- **Free-form text** (LLM explanations): every quoted string weighs 1; a text without quotes falls back to its
  content words (0.5 each), matched case-insensitively to whole tokens; and every class the text names (`digits`,
  `opening parentheses`, `the "-tion" suffix`) weighs 1.

`item_scores` turns items into a prediction per token: the largest weight of any item the token matches (a
quoted phrase matched exactly counts fully, case-insensitively 0.8 of its weight; phrases may span tokens); a token
that matches only `lower on` items gets the most negative of their (negated) weights; nothing matched is 0. A
context item's preceding token must equal its quoted text exactly (surrounding spaces stripped).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
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
LOWER = "; lower on "
OTHER = "; other tokens: "
AFTER = " after "
TOKENS_AFTER = "tokens after "

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|`([^`]+)`|(?<![A-Za-z])'([^']+)'(?![A-Za-z])|‘([^’]+)’")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+|\d+")
_WEIGHT_MARK = re.compile(r"\(\s*\d+\.\d+\s*\)")
_WEIGHT = re.compile(r"\s*\(\s*(\d+(?:\.\d+)?)\s*\)")
_SIGNED_WEIGHT = re.compile(r"\s*\(\s*(-?\d+(?:\.\d+)?)\s*\)")
_CLASS_NAME = re.compile(r"([^()\"`‘’,;]+?)(?=\s*\()")
_WHITESPACE_ITEM = re.compile(r"(?:(a|\d+) line breaks?)(?: and (a|\d+) spaces?)?|(a|\d+) spaces?")
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
    """A quoted string of free-form text, matched across tokens (see `item_scores`)."""
    TOKEN = "token"
    """One token whose text, surrounding whitespace stripped, is `text` (case-insensitively: 0.8 of the weight):
    how a weighted list reads a quoted item, exactly as the `lexicon` explainer measured it."""
    CLASS = "class"
    WORD = "word"
    AFTER = "after"
    """Any token right after the quoted token `text`."""
    WHITESPACE = "whitespace"
    """A whitespace-only token exactly (`text` is it: line breaks then spaces), written `a line break and 4
    spaces`: quotes cannot show it, and indentation depths differ."""


@dataclass(frozen=True)
class LexicalItem:
    """One thing an explanation says the neuron fires on, with its relative strength."""

    kind: ItemKind
    """Quoted phrase, token class or content word."""
    text: str
    """The phrase, the class name or the (lower-cased) word."""
    weight: float = 1.0
    """Relative strength, -1 to 1 (negative: the neuron is below its usual level there, `lower on`)."""
    token_class: TokenClass | None = None
    """The class, for CLASS items."""
    after: str | None = None
    """For PHRASE and TOKEN items: the token that must come right before (a context item), else None."""
    tail: bool = False
    """Listed in the `other tokens` section (a token or whitespace item whose weight is shared by its group)."""


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
    sign = 1.0
    while True:
        position = _item_start(text, position, raw)
        if text[position] in _CLOSING_QUOTE:
            phrase, position = _quoted_at(text, position, raw)
            after = None
            if text.startswith(AFTER, position) and text[position + len(AFTER):][:1] in _CLOSING_QUOTE:
                after, position = _quoted_at(text, position + len(AFTER), raw)
            item = LexicalItem(ItemKind.TOKEN, phrase, after=after)
        elif (blank := _WHITESPACE_ITEM.match(text, position)) is not None and _WEIGHT.match(text, blank.end()):
            if not _whitespace_text(blank):
                raise LexicalParseError(f"no whitespace in {blank.group(0)!r}", raw)
            item = LexicalItem(ItemKind.WHITESPACE, _whitespace_text(blank))
            position = blank.end()
        elif text.startswith(TOKENS_AFTER, position):
            if text[position + len(TOKENS_AFTER):][:1] not in _CLOSING_QUOTE:
                raise LexicalParseError(f"no quoted token after {TOKENS_AFTER.strip()!r} at character {position}",
                                        raw)
            before, position = _quoted_at(text, position + len(TOKENS_AFTER), raw)
            item = LexicalItem(ItemKind.AFTER, before)
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
        items.append(LexicalItem(item.kind, item.text, sign * value, item.token_class, item.after))
        position = weight.end()
        following = _skip_blanks(text, position)
        if following >= len(text):
            return tuple(items)
        if text.startswith(ALSO, position) and sign > 0:
            position += len(ALSO)
        elif text.startswith(LOWER, position) and sign > 0:
            position += len(LOWER)
            sign = -1.0
        elif text.startswith(OTHER, position):
            return tuple(items) + _parse_other_tokens(text, position + len(OTHER), raw)
        elif text.startswith(",", following):
            position = following + 1
        else:
            raise LexicalParseError(f"expected ',', '{ALSO.strip()}', '{LOWER.strip()}' or '{OTHER.strip()}' at "
                                    f"character {position}", raw)


def _item_start(text: str, position: int, raw: str) -> int:
    """Where the next item begins (blanks skipped); LexicalParseError when the text ends first."""
    position = _skip_blanks(text, position)
    if position >= len(text):
        raise LexicalParseError("an item is missing", raw)
    return position


def _skip_blanks(text: str, position: int) -> int:
    """The first position from `position` on that is not whitespace (`len(text)` if none)."""
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def _parse_other_tokens(text: str, position: int, raw: str) -> tuple[LexicalItem, ...]:
    """The `other tokens` section from `position` to the end: groups of quoted tokens and whitespace items, each
    group closed by one signed weight that all its items share."""
    items: list[LexicalItem] = []
    group: list[tuple[ItemKind, str]] = []
    while True:
        position = _item_start(text, position, raw)
        if text[position] in _CLOSING_QUOTE:
            phrase, position = _quoted_at(text, position, raw)
            group.append((ItemKind.TOKEN, phrase))
        elif (blank := _WHITESPACE_ITEM.match(text, position)) is not None and _whitespace_text(blank):
            group.append((ItemKind.WHITESPACE, _whitespace_text(blank)))
            position = blank.end()
        else:
            raise LexicalParseError(f"not a quoted token or whitespace in {OTHER.strip(' ;:')!r} at character "
                                    f"{position}", raw)
        weight = _SIGNED_WEIGHT.match(text, position)
        if weight is not None:
            value = float(weight.group(1))
            if abs(value) > 1.0:
                raise LexicalParseError(f"weight {value} of {group[-1][1]!r} is outside -1 to 1", raw)
            items += [LexicalItem(kind, phrase, value, tail=True) for kind, phrase in group]
            group = []
            position = weight.end()
        following = _skip_blanks(text, position)
        if following >= len(text):
            if group:
                raise LexicalParseError(f"no (weight) after {group[-1][1]!r}", raw)
            return tuple(items)
        if not text.startswith(",", following):
            raise LexicalParseError(f"expected ',' at character {position}", raw)
        position = following + 1


def _whitespace_text(match: re.Match[str]) -> str:
    def count(group: str | None) -> int:
        return 0 if group is None else 1 if group == "a" else int(group)

    return "\n" * count(match.group(1)) + " " * (count(match.group(2)) + count(match.group(3)))


def whitespace_item_text(token: str) -> str | None:
    """How a whitespace-only token of line breaks then spaces is written (`a line break and 4 spaces`), or None
    for any other token."""
    breaks = len(token) - len(token.lstrip("\n"))
    spaces = len(token) - breaks
    if not token or token != "\n" * breaks + " " * spaces:
        return None
    parts = []
    if breaks:
        parts.append("a line break" if breaks == 1 else f"{breaks} line breaks")
    if spaces:
        parts.append("a space" if spaces == 1 else f"{spaces} spaces")
    return " and ".join(parts)


def _quoted_at(text: str, position: int, raw: str) -> tuple[str, int]:
    """The stripped quoted text opening at `position` and the position after its closing quote."""
    end = text.find(_CLOSING_QUOTE[text[position]], position + 1)
    if end < 0:
        raise LexicalParseError(f"unclosed quote at character {position}", raw)
    phrase = text[position + 1:end]
    if not phrase.strip():
        raise LexicalParseError(f"empty quote at character {position}", raw)
    return phrase.strip(), end + 1


def format_items(items: Sequence[LexicalItem]) -> str:
    """The weighted-list text of items: quoted and context items, then `; also on` classes, then `; lower on`
    items (negative weights), each part strongest first. There must be at least one positive item."""
    def listed(selected: Sequence[LexicalItem]) -> str:
        return ", ".join(f"{describe(item)} ({abs(item.weight):.2f})"
                         for item in sorted(selected, key=lambda item: -abs(item.weight)))

    tail = [item for item in items if item.tail]
    raised = [item for item in items if item.weight >= 0 and not item.tail]
    lowered = [item for item in items if item.weight < 0 and not item.tail]
    text = LIST_PREFIX + ALSO.join(part for part in (listed([item for item in raised if item.kind is not ItemKind.CLASS]),
                                                     listed([item for item in raised if item.kind is ItemKind.CLASS]))
                                   if part)
    if lowered:
        text += LOWER + listed(lowered)
    return text + OTHER + _grouped(tail) if tail else text


def _grouped(items: Sequence[LexicalItem]) -> str:
    """Items in groups of equal weight, highest first, each group closed by its signed weight."""
    groups: dict[float, list[LexicalItem]] = {}
    for item in items:
        groups.setdefault(round(item.weight, 2), []).append(item)
    return ", ".join(", ".join(describe(item) for item in group) + f" ({weight:.2f})"
                     for weight, group in sorted(groups.items(), key=lambda pair: -pair[0]))


def describe(item: LexicalItem) -> str:
    """An item as the weighted list writes it, without its weight."""
    if item.kind is ItemKind.AFTER:
        return TOKENS_AFTER + quote(item.text)
    if item.kind is ItemKind.WHITESPACE:
        return whitespace_item_text(item.text) or ""
    if item.kind in (ItemKind.PHRASE, ItemKind.TOKEN):
        return quote(item.text) + (AFTER + quote(item.after) if item.after is not None else "")
    return item.text


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
    """Prediction per token: the largest weight of the positive items the token matches; where it matches none,
    the most negative of the `lower on` items it matches; 0 when it matches nothing."""
    return ItemMatcher(items).scores(tokens)


class ItemMatcher:
    """Items ready to score many windows: single-token items (quoted items of a weighted list, whitespace items)
    are looked up per token, so a list of hundreds of them costs what a short one does."""

    def __init__(self, items: Sequence[LexicalItem]) -> None:
        self.by_folded: dict[str, list[tuple[str, float]]] = {}
        """Case-folded text -> (text, weight) of the TOKEN items without context."""
        self.by_token: dict[str, list[float]] = {}
        """Whitespace token -> weights of its items."""
        self.others: list[LexicalItem] = []
        """Every other item, matched one by one."""
        for item in items:
            if item.kind is ItemKind.TOKEN and item.after is None:
                self.by_folded.setdefault(item.text.casefold(), []).append((item.text, item.weight))
            elif item.kind is ItemKind.WHITESPACE:
                self.by_token.setdefault(item.text, []).append(item.weight)
            else:
                self.others.append(item)

        self._per_token: dict[str, tuple[float | None, float]] = {}
        """Token -> (largest raised value, most negative lowered value) from the looked-up items, as computed."""

    def _token_values(self, token: str) -> tuple[float | None, float]:
        form = token.strip()
        raised: float | None = None
        lowered = 0.0
        values = [(EXACT_WEIGHT if text == form else CASE_INSENSITIVE_WEIGHT) * weight
                  for text, weight in self.by_folded.get(form.casefold(), ())]
        values += [EXACT_WEIGHT * weight for weight in self.by_token.get(token, ())]
        for value in values:
            if value >= 0:
                raised = value if raised is None else max(raised, value)
            else:
                lowered = min(lowered, value)
        self._per_token[token] = (raised, lowered)
        return raised, lowered

    def scores(self, tokens: Sequence[str]) -> tuple[float, ...]:
        """Prediction per token (see `item_scores`)."""
        known = self._per_token
        pairs = [known.get(token) or self._token_values(token) for token in tokens]
        if not self.others:
            return tuple(lowered if raised is None else raised for raised, lowered in pairs)
        raised_values = [raised for raised, _ in pairs]
        lowered_values = [lowered for _, lowered in pairs]
        view = _view(tuple(tokens))
        for item in self.others:
            for position, quality in _matches(item, view):
                value = quality * item.weight
                if item.weight >= 0:
                    current = raised_values[position]
                    raised_values[position] = value if current is None else max(current, value)
                else:
                    lowered_values[position] = min(lowered_values[position], value)
        return tuple(lowered if raised is None else raised for raised, lowered in zip(raised_values, lowered_values))


class _TokenView:
    """The tokens of one window with what matching needs, computed once: stripped forms, and where each case-folded
    head (the token without leading whitespace) and each head without trailing whitespace occurs."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self.tokens = tokens
        self.stripped = [token.strip() for token in tokens]
        self.folded = [form.casefold() for form in self.stripped]
        self.heads = [token.lstrip().casefold() for token in tokens]
        self.by_head: dict[str, list[int]] = {}
        self.by_bare_head: dict[str, list[int]] = {}
        for position, head in enumerate(self.heads):
            if head:
                self.by_head.setdefault(head, []).append(position)
                if head.rstrip() != head:
                    self.by_bare_head.setdefault(head.rstrip(), []).append(position)

    def phrase_starts(self, folded: str) -> list[int]:
        """Non-blank positions where a match of the case-folded phrase can start: the head is a prefix of it, or
        is it followed by whitespace."""
        starts = [position for end in range(1, len(folded) + 1) for position in self.by_head.get(folded[:end], ())]
        return sorted(set(starts + self.by_bare_head.get(folded, [])))


@lru_cache(maxsize=4096)
def _view(tokens: tuple[str, ...]) -> _TokenView:
    # Cached: the same scored windows are simulated for an explanation and for its baselines.
    return _TokenView(tokens)


def _matches(item: LexicalItem, view: _TokenView) -> list[tuple[int, float]]:
    """(position, match quality) of every token the item covers."""
    tokens = view.tokens
    if item.kind is ItemKind.AFTER:
        return [(position + 1, EXACT_WEIGHT) for position, form in enumerate(view.stripped[:-1]) if form == item.text]
    if item.kind is ItemKind.WHITESPACE:
        return [(position, EXACT_WEIGHT) for position, token in enumerate(tokens) if token == item.text]
    if item.kind is ItemKind.TOKEN:
        folded = item.text.casefold()
        return [(position, EXACT_WEIGHT if form == item.text else CASE_INSENSITIVE_WEIGHT)
                for position, form in enumerate(view.stripped)
                if view.folded[position] == folded
                and (item.after is None or (position > 0 and view.stripped[position - 1] == item.after))]
    if item.kind is ItemKind.CLASS:
        if item.token_class is None:
            return []
        return [(position, EXACT_WEIGHT) for position, token in enumerate(tokens) if item.token_class(token)]
    if item.kind is ItemKind.WORD:
        return [(position, EXACT_WEIGHT) for position, form in enumerate(view.stripped)
                if _singular(form.casefold()) == item.text]
    phrase, folded = item.text, item.text.casefold()
    if not folded:
        return []
    found: list[tuple[int, float]] = []

    def starts_after(start: int) -> bool:
        return item.after is None or (start > 0 and view.stripped[start - 1] == item.after)

    for start in view.phrase_starts(folded):
        joined = ""
        for end in range(start, min(len(tokens), start + MAX_PHRASE_TOKENS)):
            joined += tokens[end]
            if len(joined.strip()) > len(phrase):
                break
            quality = phrase_match(phrase, joined)
            if quality:
                # Whitespace-only tokens right before the match match with it (a match may start on them: the
                # phrase is compared stripped), within the longest run of tokens tried.
                first = start
                while first > 0 and not view.heads[first - 1] and end - (first - 1) < MAX_PHRASE_TOKENS:
                    first -= 1
                for begin in range(first, start + 1):
                    if starts_after(begin):
                        found.extend((position, quality) for position in range(begin, end + 1))
                break
    return found
