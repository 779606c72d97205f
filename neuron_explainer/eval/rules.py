"""Activations of planted neurons on token windows: the rules of `suite.py` applied to real tokenised text.

Token-level rules are evaluated once per distinct token id and looked up; text-level rules (`words`, `text`,
`inside`) run on each window's text, with characters mapped back to the tokens that produced them. Grading
(`jitter`) is fixed per (neuron, token id), so a token type always fires at the same strength, as real neurons
prefer some members of a class over others; noise is seeded by the suite seed, the neuron and a caller key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from neuron_explainer.eval.suite import FireOn, PlantedNeuron, PlantedSuite, Rule, RuleKind


@dataclass(frozen=True)
class _WindowText:
    """One window's text and where each token's characters are."""

    text: str
    starts: np.ndarray
    ends: np.ndarray

    def tokens_overlapping(self, start: int, end: int) -> range:
        """Indices of tokens with at least one character in [start, end)."""
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.starts, end, side="left"))
        return range(first, last)


def _window_texts(token_ids: np.ndarray, vocab: Sequence[str]) -> list[_WindowText]:
    texts = []
    for row in token_ids.tolist():
        pieces = [vocab[index] for index in row]
        lengths = np.fromiter((len(piece) for piece in pieces), dtype=np.int64, count=len(pieces))
        ends = np.cumsum(lengths)
        texts.append(_WindowText("".join(pieces), ends - lengths, ends))
    return texts


def _seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _token_table(rule_pattern: str, strings: Sequence[str], *, ignore_case: bool, strip: bool) -> np.ndarray:
    compiled = re.compile(rule_pattern, re.IGNORECASE if ignore_case else 0)
    return np.fromiter(((compiled.fullmatch(text.strip() if strip else text) is not None) for text in strings),
                       dtype=bool, count=len(strings))


class _Selector:
    """Computes, for one rule, a multiplier per token (0 where the neuron does not fire)."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        flags = re.IGNORECASE if rule.ignore_case else 0
        self.compiled: re.Pattern[str] | None = None
        self.word_weights: dict[str, float] = {}
        if rule.kind is RuleKind.WORDS:
            alternatives = "|".join(re.escape(word) for word in sorted(rule.words, key=len, reverse=True))
            self.compiled = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", flags)
            self.word_weights = {self._key(word): weight for word, weight in rule.weights}
        elif rule.kind is RuleKind.TEXT:
            self.compiled = re.compile(rule.pattern, flags)
        elif rule.kind is RuleKind.INSIDE and rule.open == rule.close:
            # A run of the delimiter toggles once, so reST ``literal`` reads like `literal`.
            self.compiled = re.compile(f"(?:{re.escape(rule.open)})+")
        elif rule.kind is RuleKind.INSIDE:
            pieces = {re.escape(rule.open), re.escape(rule.close)}
            self.compiled = re.compile("|".join(sorted(pieces, key=len, reverse=True)))

    def _key(self, word: str) -> str:
        return word.casefold() if self.rule.ignore_case else word

    def select(self, token_ids: np.ndarray, unique_ids: np.ndarray, inverse: np.ndarray,
               unique_strings: Sequence[str], texts: Sequence[_WindowText] | None) -> np.ndarray:
        rule = self.rule
        selected = np.zeros(token_ids.shape, dtype=np.float32)
        if rule.kind is RuleKind.TOKEN:
            table = _token_table(rule.pattern, unique_strings, ignore_case=rule.ignore_case, strip=rule.strip)
            return table[inverse].reshape(token_ids.shape).astype(np.float32)
        if rule.kind is RuleKind.AFTER:
            previous = _token_table(rule.after, unique_strings, ignore_case=rule.ignore_case,
                                    strip=rule.strip)[inverse].reshape(token_ids.shape)
            if rule.pattern:
                current = _token_table(rule.pattern, unique_strings, ignore_case=rule.ignore_case,
                                       strip=rule.strip)[inverse].reshape(token_ids.shape)
            else:
                visible = np.fromiter((bool(text.strip()) for text in unique_strings), dtype=bool,
                                      count=len(unique_strings))
                current = visible[inverse].reshape(token_ids.shape)
            selected[:, 1:] = previous[:, :-1] & current[:, 1:]
            return selected
        if rule.kind is RuleKind.POSITION:
            length = token_ids.shape[1]
            weights = rule.position_weights or (1.0,) * len(rule.positions)
            for position, weight in zip(rule.positions, weights):
                if -length <= position < length:
                    selected[:, position] = np.maximum(selected[:, position], weight)
            return selected
        assert texts is not None
        for row, window in enumerate(texts):
            if rule.kind is RuleKind.INSIDE:
                self._inside(window, selected[row])
                continue
            assert self.compiled is not None
            for match in self.compiled.finditer(window.text):
                if match.end() == match.start():
                    continue
                tokens = window.tokens_overlapping(match.start(), match.end())
                if not len(tokens):
                    continue
                if rule.kind is RuleKind.TEXT and rule.fire_on is FireOn.FIRST:
                    tokens = tokens[:1]
                elif rule.kind is RuleKind.TEXT and rule.fire_on is FireOn.LAST:
                    tokens = tokens[-1:]
                weight = self.word_weights.get(self._key(match.group()), 1.0) if rule.kind is RuleKind.WORDS else 1.0
                for token in tokens:
                    selected[row, token] = max(selected[row, token], weight)
        return selected

    def _inside(self, window: _WindowText, out: np.ndarray) -> None:
        """Mark tokens holding a visible character strictly between delimiters (delimiters excluded)."""
        rule = self.rule
        assert self.compiled is not None
        depth = 0
        opened_at = 0
        for match in self.compiled.finditer(window.text):
            piece = match.group()
            if rule.open == rule.close:
                # Quote-like delimiters pair up within a line: a stray one must not invert the rest of the text.
                if depth == 1 and "\n" in window.text[opened_at:match.start()]:
                    depth = 0
                if depth == 0:
                    depth, opened_at = 1, match.end()
                else:
                    self._mark(window, opened_at, match.start(), out)
                    depth = 0
            elif piece == rule.open:
                if depth == 0:
                    opened_at = match.end()
                depth += 1
            elif depth > 0:
                depth -= 1
                if depth == 0:
                    self._mark(window, opened_at, match.start(), out)
        if depth > 0:
            # Still open at the window's end (or, for quotes, the line's): the neuron cannot know it will close.
            end = len(window.text)
            if rule.open == rule.close:
                line_end = window.text.find("\n", opened_at)
                end = end if line_end < 0 else line_end
            self._mark(window, opened_at, end, out)

    def _mark(self, window: _WindowText, start: int, end: int, out: np.ndarray) -> None:
        for token in window.tokens_overlapping(start, end):
            low = max(start, int(window.starts[token]))
            high = min(end, int(window.ends[token]))
            segment = window.text[low:high]
            # A token that is only the delimiter's neighbouring space, or only delimiters, is outside.
            visible = segment.replace(self.rule.open, "").replace(self.rule.close, "").strip()
            if visible:
                out[token] = 1.0


def _needs_text(rule: Rule) -> bool:
    return rule.kind in (RuleKind.WORDS, RuleKind.TEXT, RuleKind.INSIDE)


def planted_activations(suite: PlantedSuite, token_ids: np.ndarray, vocab: Sequence[str], *,
                        noise_key: str = "store") -> np.ndarray:
    """Activations float32 [windows, length, neurons] of every neuron of the suite on the windows.

    `token_ids` int [windows, length]; `vocab` the display string of every token id. `noise_key` separates the
    noise draws of different inputs (the record store, each batch of synthetic texts) while keeping them seeded.
    """
    token_ids = np.asarray(token_ids, dtype=np.int64)
    if token_ids.ndim != 2:
        raise ValueError(f"expected token ids [windows, length], got shape {token_ids.shape}")
    unique_ids, inverse = np.unique(token_ids, return_inverse=True)
    inverse = inverse.reshape(-1)
    unique_strings = [vocab[index] for index in unique_ids.tolist()]
    texts = _window_texts(token_ids, vocab) if any(_needs_text(neuron.rule) for neuron in suite.neurons) else None
    result = np.zeros((*token_ids.shape, len(suite.neurons)), dtype=np.float32)
    for index, neuron in enumerate(suite.neurons):
        selected = _Selector(neuron.rule).select(token_ids, unique_ids, inverse, unique_strings, texts)
        result[:, :, index] = neuron.value * selected * _grades(suite, neuron, unique_ids, inverse, token_ids.shape)
        if neuron.noise > 0:
            generator = np.random.default_rng(_seed(suite.seed, neuron.name, "noise", noise_key))
            result[:, :, index] += generator.normal(0.0, neuron.noise * neuron.value,
                                                    size=token_ids.shape).astype(np.float32)
    return result


def _grades(suite: PlantedSuite, neuron: PlantedNeuron, unique_ids: np.ndarray, inverse: np.ndarray,
            shape: tuple[int, ...]) -> np.ndarray:
    if neuron.jitter == 0:
        return np.ones(shape, dtype=np.float32)
    # One uniform per token id from a stream keyed by the neuron: the same token always gets the same grade.
    draws = np.array([_seed(suite.seed, neuron.name, "grade", token_id) for token_id in unique_ids.tolist()],
                     dtype=np.uint64)
    uniform = (draws >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (1.0 - neuron.jitter * uniform).astype(np.float32)[inverse].reshape(shape)
