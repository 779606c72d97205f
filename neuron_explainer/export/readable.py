"""The part of an explanation a reader takes in: a lexicon list's `other tokens` tail shown as a count.

The lexicon explainer lists, after its readable head, every other token of the explain windows at its own level
(hundreds of items, what lets the lexical simulator reach the lexical ceiling). Tables, papers and the viewer's
index show the head and how many tokens the tail holds; the database, `show` and the JSON/CSV exports keep the
whole text, which is what the stored scores were computed from.
"""

from __future__ import annotations

from neuron_explainer.explain.lexical_grammar import OTHER, LexicalParseError, is_weighted_list, parse_items


def readable_text(text: str) -> str:
    """`text` with a weighted list's `other tokens` section replaced by its item count; any other text unchanged."""
    head, marker, _ = text.partition(OTHER)
    if not marker or not is_weighted_list(text):
        return text
    try:
        others = sum(1 for item in parse_items(text) if item.tail)
    except LexicalParseError:
        return text
    return f"{head}; and {others} other token{'s' if others != 1 else ''} at their own levels"
