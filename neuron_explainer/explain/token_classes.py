"""Token classes decidable from a token's text alone (digits, capitalised words, brackets, line breaks, suffixes, ...):
the classes the `lexicon` explainer names and the lexical simulator applies.

Every rule takes the token exactly as the tokenizer decoded it (leading space, line break and byte-level junk
included) and never raises: empty strings, lone surrogates, replacement characters and non-Latin scripts simply
belong to no class or to the classes whose test they pass. A class is named in an explanation by its `name`
(`digits`, `words ending in -tion`); free-form text names it by any of its `mention` patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

_SENTENCE_PUNCTUATION = frozenset(".,;:!?")
_QUOTE_CHARACTERS = frozenset("\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb")
_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")
_OPERATOR_CHARACTERS = frozenset("=+-*/<>%&|^~!")
_NUMBER = re.compile(r"[+-]?\d+(?:[.,_]\d+)*(?:[eE][+-]?\d+)?")
_IDENTIFIER = re.compile(r"\w+")
SUFFIXES = ("tion", "sion", "ing", "ed", "ly", "ment", "ness", "able", "ity", "er", "es", "al", "ous", "ive", "ize",
            "ise")
"""Suffixes the explainer tries as classes (`words ending in -ing`); explanations may name any other."""
PREFIXES = ("un", "re", "pre", "dis", "non", "sub", "over", "de")
"""Prefixes the explainer tries as classes (`words starting with un-`); explanations may name any other."""


@dataclass(frozen=True)
class TokenClass:
    """A set of tokens defined by a rule on the token's text."""

    name: str
    """How explanations name it, e.g. `digits`."""
    test: Callable[[str], bool]
    """True when a token (as decoded, surrounding whitespace included) belongs to the class."""
    mentions: tuple[str, ...] = ()
    """Regular expressions (matched case-insensitively) by which free-form text names the class."""

    def __call__(self, token: str) -> bool:
        return _safe(self.test, token)


def _safe(test: Callable[[str], bool], token: str) -> bool:
    try:
        return bool(test(token))
    except (TypeError, ValueError, UnicodeError):
        return False


def _stripped(token: str) -> str:
    return token.strip() if isinstance(token, str) else ""


def _only(characters: frozenset[str]) -> Callable[[str], bool]:
    def test(token: str) -> bool:
        text = _stripped(token)
        return bool(text) and all(character in characters for character in text)
    return test


def _is_word(text: str) -> bool:
    return text.isalpha()


def _closing_bracket(token: str) -> bool:
    text = _stripped(token)
    return bool(text) and text[0] in _CLOSING and all(character in _CLOSING | _SENTENCE_PUNCTUATION
                                                      for character in text)


def _operator(token: str) -> bool:
    text = _stripped(token)
    return _only(_OPERATOR_CHARACTERS)(token) and text != "!"


def _line_break(token: str) -> bool:
    return isinstance(token, str) and "\n" in token and not token.strip()


def _spaces(token: str) -> bool:
    return isinstance(token, str) and bool(token) and not token.strip() and "\n" not in token


def _capitalised(token: str) -> bool:
    text = _stripped(token)
    return len(text) >= 2 and _is_word(text) and text[0].isupper() and text[1:].islower()


def _all_caps(token: str) -> bool:
    text = _stripped(token)
    return len(text) >= 2 and _is_word(text) and text.isupper()


def _lower_case(token: str) -> bool:
    text = _stripped(token)
    return _is_word(text) and text.islower()


def _underscore(token: str) -> bool:
    text = _stripped(token)
    return "_" in text and _IDENTIFIER.fullmatch(text) is not None


def suffix_class(suffix: str) -> TokenClass:
    """Words (or word pieces) ending in `suffix`, e.g. `words ending in -tion`."""
    suffix = suffix.casefold()

    def test(token: str) -> bool:
        text = _stripped(token)
        return _is_word(text) and text.casefold().endswith(suffix)

    return TokenClass(f"words ending in -{suffix}", test)


def prefix_class(prefix: str) -> TokenClass:
    """Words (or word pieces) starting with `prefix`, e.g. `words starting with un-`."""
    prefix = prefix.casefold()

    def test(token: str) -> bool:
        text = _stripped(token)
        return _is_word(text) and text.casefold().startswith(prefix)

    return TokenClass(f"words starting with {prefix}-", test)


_BRACKET_WORDS = r"(?:brackets?|parenthes[ie]s|parens?|braces?)"

FIXED_CLASSES: tuple[TokenClass, ...] = (
    TokenClass("digits", lambda token: _stripped(token).isdecimal(), (r"\bdigits?\b", r"\bnumerals?\b")),
    TokenClass("numbers", lambda token: _NUMBER.fullmatch(_stripped(token)) is not None,
               (r"\bnumbers?\b(?!\s+(?:words|as words|written (?:as|in) words|written out|spelled|spelt))", r"\bnumeric\b")),
    TokenClass("all-caps words", _all_caps,
               (r"\ball[- ]caps\b", r"\bacronyms?\b", r"\bcapital letters\b", r"\binitialisms?\b",
                r"\bupper[- ]?case (?:words|letters)\b")),
    TokenClass("capitalised words", _capitalised, (r"\bcapitali[sz]ed\b", r"\btitle[- ]case\b")),
    TokenClass("lower-case words", _lower_case, (r"\blower[- ]?case words\b",)),
    TokenClass("punctuation", _only(_SENTENCE_PUNCTUATION), (r"\bpunctuation\b",)),
    TokenClass("commas", _only(frozenset(",")), (r"\bcommas?\b",)),
    TokenClass("full stops", _only(frozenset(".")), (r"\bfull stops?\b",)),
    TokenClass("colons", _only(frozenset(":")), (r"\bcolons?\b",)),
    TokenClass("quote marks", _only(_QUOTE_CHARACTERS), (r"\bquot(?:e|ation) marks?\b",)),
    TokenClass("opening brackets", _only(_OPENING),
               (rf"\bopen(?:ing)?\s+(?:\w+\s+)?{_BRACKET_WORDS}", rf"\bleft\s+{_BRACKET_WORDS}")),
    TokenClass("closing brackets", _closing_bracket,
               (rf"\bclos(?:e|ing)\s+(?:\w+\s+)?{_BRACKET_WORDS}", rf"\bright\s+{_BRACKET_WORDS}")),
    TokenClass("brackets", _only(_OPENING | _CLOSING), (r"\bany brackets\b",)),
    TokenClass("operators", _operator, (r"\boperators?\b",)),
    TokenClass("underscores", _underscore, (r"\bunderscores?\b", r"\bdunder\b", r"\bsnake[_ ]case\b")),
    TokenClass("line breaks", _line_break,
               (r"\bline[- ]?breaks?\b", r"\bnew[- ]?lines?\b", r"\bline endings?\b", r"\bend of (?:a |the )?line\b")),
    TokenClass("spaces", _spaces, (r"\bwhitespace\b", r"\bindentation\b")),
)
"""Classes with a fixed name, in the order explanations list them when tied."""

_FIXED_BY_NAME = {token_class.name: token_class for token_class in FIXED_CLASSES}
_SUFFIX_NAME = re.compile(r"words ending in -(\w+)")
_PREFIX_NAME = re.compile(r"words starting with (\w+)-")
_SUFFIX_MENTION = re.compile(r"\bending in [\"'`]?-(\w+)\b|[\"'`]-(\w+)[\"'`]|(?<![\w-])-(\w+) (?:suffix|endings?)\b",
                             re.IGNORECASE)
_PREFIX_MENTION = re.compile(r"\bstarting with [\"'`]?(\w+)-(?!\w)|[\"'`](\w+)-[\"'`]|\b(\w+)- prefix\b",
                             re.IGNORECASE)


def candidate_classes() -> tuple[TokenClass, ...]:
    """Every class the explainer tries: the fixed ones, then the listed suffixes and prefixes."""
    return _candidates()


@lru_cache(maxsize=200_000)
def class_memberships(token: str) -> tuple[bool, ...]:
    """Whether the token belongs to each of `candidate_classes()`, in order (cached: vocabularies repeat)."""
    return tuple(token_class(token) for token_class in _candidates())


@lru_cache(maxsize=1)
def _candidates() -> tuple[TokenClass, ...]:
    return (FIXED_CLASSES + tuple(suffix_class(suffix) for suffix in SUFFIXES)
            + tuple(prefix_class(prefix) for prefix in PREFIXES))


def class_named(name: str) -> TokenClass | None:
    """The class an explanation names exactly (`digits`, `words ending in -ful`), or None."""
    name = " ".join(name.split())
    if name in _FIXED_BY_NAME:
        return _FIXED_BY_NAME[name]
    if (match := _SUFFIX_NAME.fullmatch(name)) is not None:
        return suffix_class(match.group(1))
    if (match := _PREFIX_NAME.fullmatch(name)) is not None:
        return prefix_class(match.group(1))
    return None


def mentioned_classes(text: str) -> tuple[TokenClass, ...]:
    """Classes free-form text names (`digits`, `opening parentheses`, `the "-tion" suffix`), in class order."""
    found: list[TokenClass] = [token_class for token_class in FIXED_CLASSES
                               if any(re.search(pattern, text, re.IGNORECASE) for pattern in token_class.mentions)]
    for pattern, make in ((_SUFFIX_MENTION, suffix_class), (_PREFIX_MENTION, prefix_class)):
        for match in pattern.finditer(text):
            affix = next(group for group in match.groups() if group is not None)
            token_class = make(affix)
            if all(existing.name != token_class.name for existing in found):
                found.append(token_class)
    return tuple(found)
