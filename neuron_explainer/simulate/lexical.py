"""Lexical simulator (no LLM): predicts activity where the window contains what the explanation quotes.

Quoted strings in the explanation ("the", `def`, “United States”) are matched against the window's tokens, also
across consecutive tokens for multi-token phrases: an exact match scores 1, a case-insensitive one 0.8. An
explanation without quotes falls back to its content words matched case-insensitively to whole tokens (0.5).
The raw scores are mapped to the 0-10 scale by a linear fit on the calibrate split (done by scoring).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from neuron_explainer.simulate.base import SimulationResult, Simulator, WindowSimulation
from neuron_explainer.simulate.types import SimulatorKind

EXACT_WEIGHT = 1.0
CASE_INSENSITIVE_WEIGHT = 0.8
WORD_WEIGHT = 0.5
MAX_PHRASE_TOKENS = 12
"""Longest run of tokens tried against one quoted phrase."""

_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|`([^`]+)`|(?<![A-Za-z])'([^']+)'(?![A-Za-z])|‘([^’]+)’")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+|\d+")
# Words that describe neurons rather than the text they respond to.
_GENERIC_WORDS = frozenset("""
a an the and or of in on at to for with by from as is are be being been it its this that these those such
neuron neurons fires fire firing activates activate activation active responds respond response detects
token tokens word words phrase phrases text mention mentions term terms related relating about like
mostly mainly strongly often usually especially particular specific various other certain some any
""".split())


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


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def lexical_scores(explanation: str, tokens: Sequence[str]) -> tuple[float, ...]:
    """Match score per token (0 when nothing matches)."""
    scores = [0.0] * len(tokens)
    phrases = quoted_phrases(explanation)
    if phrases:
        for phrase in phrases:
            folded = phrase.casefold()
            for start in range(len(tokens)):
                joined = ""
                for end in range(start, min(len(tokens), start + MAX_PHRASE_TOKENS)):
                    joined += tokens[end]
                    candidate = joined.strip()
                    if len(candidate) > len(phrase):
                        break
                    weight = (EXACT_WEIGHT if candidate == phrase
                              else CASE_INSENSITIVE_WEIGHT if candidate.casefold() == folded else 0.0)
                    if weight:
                        for position in range(start, end + 1):
                            scores[position] = max(scores[position], weight)
                        break
        return tuple(scores)
    words = {_singular(word) for word in content_words(explanation)}
    for position, token in enumerate(tokens):
        if _singular(token.strip().casefold()) in words:
            scores[position] = WORD_WEIGHT
    return tuple(scores)


class LexicalSimulator(Simulator):
    """Exact and case-insensitive token matching of what the explanation quotes."""

    kind = SimulatorKind.LEXICAL
    backend_name = "none"
    model = "token-match"
    prompt_hash = "none"
    needs_fit = True

    @property
    def parameters(self) -> dict[str, Any]:
        return {"exact_weight": EXACT_WEIGHT, "case_insensitive_weight": CASE_INSENSITIVE_WEIGHT,
                "word_weight": WORD_WEIGHT}

    async def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> SimulationResult:
        return SimulationResult(tuple(WindowSimulation(lexical_scores(explanation, tokens)) for tokens in windows))
