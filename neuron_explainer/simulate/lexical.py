"""Lexical simulator (no LLM): predicts activity where the window contains what the explanation names.

The explanation is read into weighted items by `explain.lexical_grammar`: quoted strings ("the", `def`,
“United States”, also across consecutive tokens), token classes (digits, line breaks, words ending in -tion) and,
for free-form text without quotes, content words. A token's raw score is the largest weight of the items it
matches (a case-insensitive phrase match counts 0.8 of the weight). The `lexicon` explainer's weighted lists
(`fires on "def" (1.00), "class" (0.62); also on digits (0.55)`) are read with their weights; a list that breaks
the grammar fails every window with the raw text in the error. The raw scores are mapped to the 0-10 scale by a
linear fit on the calibrate split (done by scoring).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuron_explainer.explain.lexical_grammar import (CASE_INSENSITIVE_WEIGHT, EXACT_WEIGHT, WORD_WEIGHT,
                                                      ItemMatcher, LexicalParseError, content_words, item_scores,
                                                      parse_items, quoted_phrases)
from neuron_explainer.simulate.base import SimulationResult, Simulator, WindowSimulation
from neuron_explainer.simulate.types import SimulatorKind

__all__ = ["LexicalSimulator", "content_words", "lexical_scores", "quoted_phrases"]


def lexical_scores(explanation: str, tokens: Sequence[str]) -> tuple[float, ...]:
    """Match score per token (0 when nothing matches); LexicalParseError for a malformed weighted list."""
    return item_scores(parse_items(explanation), tokens)


class LexicalSimulator(Simulator):
    """Weighted matching of the quoted strings, token classes and words an explanation names."""

    kind = SimulatorKind.LEXICAL
    backend_name = "none"
    model = "token-match"
    prompt_hash = "none"
    needs_fit = True

    @property
    def parameters(self) -> dict[str, Any]:
        return {"exact_weight": EXACT_WEIGHT, "case_insensitive_weight": CASE_INSENSITIVE_WEIGHT,
                "word_weight": WORD_WEIGHT, "grammar": "weighted-items-v2"}

    async def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> SimulationResult:
        try:
            items = parse_items(explanation)
        except LexicalParseError as exc:
            return SimulationResult(tuple(WindowSimulation(None, str(exc)) for _ in windows))
        matcher = ItemMatcher(items)
        return SimulationResult(tuple(WindowSimulation(matcher.scores(tokens)) for tokens in windows))
