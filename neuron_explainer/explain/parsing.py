"""Cleaning an explainer's answer into one short phrase, or saying why it is unusable."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_WORDS = 25
"""Longer answers are essays, not the one phrase asked for."""
MAX_CHARACTERS = 200
"""Hard cap on a stored explanation."""

_LABEL = re.compile(r"^\s*(?:final\s+)?(?:answer|explanation|phrase|description|summary)\s*[:\-–]\s*",
                    re.IGNORECASE)
_SUBJECT = r"(?:(?:this|the|that)\s+(?:neuron|unit|feature)|it)\s+"
_HEDGE = r"(?:(?:mainly|mostly|primarily|strongly|seems\s+to|appears\s+to|is\s+likely\s+to|likely)\s+)*"
_VERB = (r"(?:fires|activates|responds|reacts|is\s+active|is\s+activated|detects|tracks|looks|"
         r"fire|activate|respond|react|detect|track|look)(?:\s+(?:most\s+)?(?:strongly|mainly|mostly|primarily))?")
_PREPOSITION = r"(?:on|for|to|at|in\s+response\s+to|when\s+it\s+sees|when\s+seeing)"
# A lead-in needs a subject ("this neuron fires ...") or a preposition ("fires on ..."), so an explanation that
# merely starts with a verb-like word ("tracks of music") is left alone.
_LEAD_IN = re.compile(
    rf"^\s*(?:{_SUBJECT}{_HEDGE}{_VERB}(?:\s+{_PREPOSITION})?|{_HEDGE}{_VERB}\s+{_PREPOSITION})\b\s*[:\-–]?\s*",
    re.IGNORECASE)
_REFUSAL = re.compile(
    r"\b(?:i\s*(?:'m|am)\s+(?:sorry|unable|not\s+able)|i\s+(?:can(?:no|')t|cannot|won't)|as\s+an\s+ai|"
    r"unable\s+to\s+(?:determine|identify|tell)|no\s+(?:clear|obvious|discernible)\s+pattern|"
    r"not\s+enough\s+information)",
    re.IGNORECASE)
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("`", "`"), ("«", "»"))


@dataclass(frozen=True)
class ParsedExplanation:
    """The outcome of cleaning one answer: a phrase, or the reason there is none."""

    text: str | None
    """The cleaned phrase, or None when the answer is unusable."""
    reason: str | None = None
    """Why the answer is unusable."""


def _first_content_line(raw: str) -> str:
    for line in raw.strip().splitlines():
        line = line.replace("**", "").strip().strip("*#>").strip()
        if line and not re.fullmatch(r"(?:answer|explanation|phrase)\s*:?", line, re.IGNORECASE):
            return line
    return ""


def _unquote(text: str) -> str:
    for opening, closing in _QUOTE_PAIRS:
        if len(text) >= 2 and text.startswith(opening) and text.endswith(closing):
            inner = text[1:-1]
            # Only strip quotes that wrap the whole answer, not a quoted token at each end ("a" and "b").
            if opening not in inner and closing not in inner:
                return inner.strip()
        # A lone opening or closing quote (the answer was cut off, or started mid-quote) is noise.
        if opening == closing and text.count(opening) == 1 and (text.startswith(opening) or text.endswith(opening)):
            return text.strip(opening).strip()
    return text


LOOP_REPEATS = 3
"""A phrase said this many times in a row is a decoding loop, not content."""


def _cut_repetition_loop(text: str) -> str:
    """Keep an answer up to the first pass through a loop ("the action of the action of the action of ...").

    Small models decoding greedily fall into such loops until the token budget runs out; the phrase before the
    loop and one turn of it are the answer they meant, the rest is the loop.
    """
    words = text.split()
    for start in range(len(words)):
        for length in range(1, (len(words) - start) // LOOP_REPEATS + 1):
            unit = words[start:start + length]
            if all(words[start + turn * length:start + (turn + 1) * length] == unit for turn in range(1, LOOP_REPEATS)):
                return " ".join(words[:start + length]).rstrip(" .;,")
    return text


def clean_explanation(raw: str) -> ParsedExplanation:
    """Reduce an answer to one phrase: first content line, labels/lead-ins/wrapping quotes/final period removed."""
    if _REFUSAL.search(raw):
        return ParsedExplanation(None, "the answer is a refusal or says there is no pattern")
    text = _first_content_line(raw)
    previous = None
    while text != previous:
        previous = text
        text = _LABEL.sub("", text)
        text = _LEAD_IN.sub("", text, count=1)
        text = _unquote(text.strip())
        text = text.rstrip(" .;,")
    text = _cut_repetition_loop(" ".join(text.split()))
    if not text:
        return ParsedExplanation(None, "the answer is empty")
    if len(text) > MAX_CHARACTERS or len(text.split()) > MAX_WORDS:
        return ParsedExplanation(None, f"the answer is longer than {MAX_WORDS} words / {MAX_CHARACTERS} characters")
    return ParsedExplanation(text)
