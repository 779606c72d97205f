"""The `lexicon` explainer (no LLM): a weighted list of the tokens and token classes a neuron fires on, read from
its explain windows only, e.g. `fires on "def" (1.00), "class" (0.62); also on digits (0.55)`.

Candidates are every token of the explain windows (as the lexical simulator quotes it: surrounding whitespace
stripped, so punctuation and sub-word pieces count) and every rule-based token class of `token_classes`. Each
candidate's weight is its mean activation shrunk toward the neuron's mean over the explain windows (a token seen
once is not trusted as much as one seen ten times). Items are chosen greedily: each step adds the candidate whose
addition most raises the Pearson correlation, on the explain windows, between the activations and the prediction
the lexical simulator would make from the list so far; a class is preferred over the members it covers when it
explains nearly as well, since it also covers members the explain windows never showed. Items whose removal costs
almost nothing are pruned at the end, so the list stays short.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from neuron_explainer.activations.records import NeuronRecord, Window
from neuron_explainer.explain.lexical_grammar import (CASE_INSENSITIVE_WEIGHT, EXACT_WEIGHT, ItemKind, LexicalItem,
                                                      format_items, quotable)
from neuron_explainer.explain.splits import SplitConfig, oriented_record, split_neuron
from neuron_explainer.explain.token_classes import FIXED_CLASSES, candidate_classes, class_memberships
from neuron_explainer.core.failures import Failure
from neuron_explainer.explain.base import Explainer, ExplainerIdentity, ExplainerSettings, ExplainResources
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity


@dataclass(frozen=True)
class LexiconConfig:
    """How the `lexicon` explainer picks and weighs items (recorded in each explanation's parameters)."""

    max_items: int = 12
    """Most items listed."""
    min_gain: float = 0.005
    """Stop adding items when the best one raises the explain-window correlation by less than this."""
    shrinkage: float = 1.0
    """Pseudo-count of the neuron's mean added to every candidate's mean activation."""
    class_bonus: float = 0.02
    """Correlation a class may fall short of the best token by and still be preferred (it generalises)."""
    class_min_members: int = 4
    """A class is tried only when this many of its distinct members fire above the neuron's mean in the explain
    windows (line breaks and spaces: one, as they cannot be quoted); fewer are better listed than generalised."""
    class_min_occurrences: int = 15
    """... and only when its members fire above the mean at least this often: a class read off a handful of
    occurrences (five colour names that happen to be in capitals) says more than the windows show."""
    prune_tolerance: float = 0.002
    """An item is dropped at the end when the correlation without it is at most this much lower."""

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready parameters."""
        return asdict(self)


_WHITESPACE_CLASSES = frozenset({"line breaks", "spaces"})
_FIXED_NAMES = frozenset(token_class.name for token_class in FIXED_CLASSES)


@dataclass(frozen=True)
class _Candidate:
    item: LexicalItem
    quality: np.ndarray
    """Match quality (0-1) of every distinct token of the explain windows."""


class LexiconExplainer(Explainer):
    """The LLM-free weighted token and class list."""

    name = "lexicon"

    def __init__(self, settings: ExplainerSettings, resources: ExplainResources) -> None:
        super().__init__(settings, resources)
        self.config = LexiconConfig()

    def identity(self) -> ExplainerIdentity:
        return ExplainerIdentity(parameters={**self.settings.split.as_dict(), **self.config.as_dict()})

    async def explain(self, record: NeuronRecord) -> Explanation | Failure:
        return explain_lexicon(record, split=self.settings.split, polarity=self.settings.polarity,
                               config=self.config)


def explain_lexicon(record: NeuronRecord, *, split: SplitConfig = SplitConfig(),
                    polarity: Polarity = Polarity.POSITIVE,
                    config: LexiconConfig = LexiconConfig()) -> Explanation | Failure:
    """The neuron's weighted token/class list from its explain windows; a Failure when they never fire."""
    windows = split_neuron(oriented_record(record, polarity), split).explain
    items = fit_items(windows, config=config)
    if isinstance(items, str):
        return Failure(record.neuron, "explain", items)
    return Explanation(
        neuron=record.neuron, text=format_items(items), method=ExplainerKind.LEXICON, polarity=polarity,
        explainer_backend="none", explainer_model="none", prompt_hash="none",
        parameters={**split.as_dict(), **config.as_dict()},
        source_window_ids=tuple(window.window_id for window in windows), split_seed=split.seed,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"items": [{"kind": item.kind.value, "text": item.text, "weight": item.weight} for item in items]})


def fit_items(windows: Sequence[Window], *, config: LexiconConfig = LexiconConfig()) -> list[LexicalItem] | str:
    """The chosen items with weights normalised to the strongest (1), or why there are none."""
    tokens = [token for window in windows for token in window.tokens]
    activations = np.array([value for window in windows for value in window.activations], dtype=np.float64)
    if activations.size == 0:
        return "no explain windows"
    if not activations.max() > 0:
        return "no positive activation in the explain windows"
    if np.ptp(activations) == 0:
        return "the activations are constant in the explain windows"
    distinct, position_of = np.unique(np.array(tokens, dtype=object), return_inverse=True)
    stripped = [str(token).strip() for token in distinct]
    candidates = _candidates([str(token) for token in distinct], np.bincount(position_of, minlength=len(distinct)))
    if not candidates:
        return "no token of the explain windows can be quoted or classed"
    quality = np.stack([candidate.quality for candidate in candidates])[:, position_of]
    exact = quality >= 1.0
    counts = exact.sum(axis=1)
    neuron_mean = float(activations.mean())
    weights = (exact @ activations + config.shrinkage * neuron_mean) / (counts + config.shrinkage)
    firing = activations > neuron_mean
    members = [{stripped[index] for index in np.flatnonzero(candidate.quality >= 1.0)} for candidate in candidates]
    is_class = np.array([candidate.item.kind is ItemKind.CLASS for candidate in candidates])
    eligible = (counts > 0) & (weights > neuron_mean) & (weights > 0)
    for index, candidate in enumerate(candidates):
        if is_class[index]:
            fired_positions = exact[index] & firing
            fired = {stripped[token] for token in position_of[fired_positions]}
            needed = 1 if candidate.item.text in _WHITESPACE_CLASSES else config.class_min_members
            eligible[index] &= len(fired) >= needed and int(fired_positions.sum()) >= config.class_min_occurrences
    if not eligible.any():
        return "no token or class fires above the neuron's mean"
    useful = np.flatnonzero(eligible)
    predictions = quality[useful] * weights[useful, None]
    chosen = _prune(_greedy(predictions, activations, is_class[useful], config), predictions, activations, config)
    strongest = max(weights[useful[index]] for index in chosen)
    items = []
    for index in chosen:
        candidate = candidates[useful[index]]
        item = _class_named_alike(candidate.item, candidates, members) or candidate.item
        items.append(LexicalItem(item.kind, item.text, round(float(weights[useful[index]] / strongest), 2),
                                 item.token_class))
    return items


def _class_named_alike(item: LexicalItem, candidates: Sequence[_Candidate],
                       members: Sequence[set[str]]) -> LexicalItem | None:
    """The fixed class (commas, underscores, ...) whose members in the explain windows are exactly this quoted
    token: it predicts the same there, reads better and covers the members they did not show."""
    if item.kind is not ItemKind.PHRASE:
        return None
    for candidate, seen in zip(candidates, members):
        if candidate.item.kind is ItemKind.CLASS and candidate.item.text in _FIXED_NAMES and seen == {item.text}:
            return candidate.item
    return None


def _candidates(distinct: Sequence[str], counts: Sequence[int]) -> list[_Candidate]:
    """Quoted-token candidates (one per stripped form) and every class with a member among the tokens."""
    stripped = [token.strip() for token in distinct]
    # Most frequent form first: where forms tie (case variants of a token), the list quotes the common one.
    frequency: dict[str, int] = {}
    for form, count in zip(stripped, counts):
        if quotable(form):
            frequency[form] = frequency.get(form, 0) + int(count)
    phrases = sorted(frequency, key=lambda phrase: (-frequency[phrase], phrase))
    row_of = {phrase: row for row, phrase in enumerate(phrases)}
    rows_by_fold: dict[str, list[int]] = {}
    for row, phrase in enumerate(phrases):
        rows_by_fold.setdefault(phrase.casefold(), []).append(row)
    # The same qualities as `phrase_match`, built per token rather than per (phrase, token) pair.
    quality = np.zeros((len(phrases), len(distinct)))
    for column, form in enumerate(stripped):
        for row in rows_by_fold.get(form.casefold(), ()):
            quality[row, column] = CASE_INSENSITIVE_WEIGHT
        if form in row_of:
            quality[row_of[form], column] = EXACT_WEIGHT
    candidates = [_Candidate(LexicalItem(ItemKind.PHRASE, phrase), quality[row]) for row, phrase in enumerate(phrases)]
    classes = candidate_classes()
    membership = np.array([class_memberships(token) for token in distinct], dtype=np.float64).reshape(
        len(distinct), len(classes))
    for index, token_class in enumerate(classes):
        if membership[:, index].any():
            candidates.append(_Candidate(LexicalItem(ItemKind.CLASS, token_class.name, token_class=token_class),
                                         membership[:, index]))
    return candidates


def _correlations(predictions: np.ndarray, centred_target: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row with the target (-inf for constant rows)."""
    centred = predictions - predictions.mean(axis=1, keepdims=True)
    spread = np.sqrt(np.einsum("ij,ij->i", centred, centred)) * np.sqrt(centred_target @ centred_target)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (centred @ centred_target) / spread
    return np.where(spread > 0, values, -np.inf)


def _greedy(predictions: np.ndarray, activations: np.ndarray, is_class: np.ndarray,
            config: LexiconConfig) -> list[int]:
    target = activations - activations.mean()
    current = np.zeros(activations.size)
    current_r = 0.0
    chosen: list[int] = []
    while len(chosen) < config.max_items:
        trial = _correlations(np.maximum(current[None, :], predictions), target)
        trial[chosen] = -np.inf
        best_token = float(np.max(np.where(is_class, -np.inf, trial)))
        best_class = float(np.max(np.where(is_class, trial, -np.inf)))
        if best_class >= best_token - config.class_bonus and best_class > -np.inf:
            index = int(np.argmax(np.where(is_class, trial, -np.inf)))
        else:
            index = int(np.argmax(trial))
        if not trial[index] - current_r >= config.min_gain:
            break
        chosen.append(index)
        current = np.maximum(current, predictions[index])
        current_r = float(trial[index])
    return chosen


def _prune(chosen: list[int], predictions: np.ndarray, activations: np.ndarray, config: LexiconConfig) -> list[int]:
    target = activations - activations.mean()

    def correlation(indices: list[int]) -> float:
        if not indices:
            return -np.inf
        return float(_correlations(predictions[indices].max(axis=0, keepdims=True), target)[0])

    kept = list(chosen)
    full = correlation(kept)
    for index in reversed(chosen):
        without = [other for other in kept if other != index]
        if without and correlation(without) >= full - config.prune_tolerance:
            kept = without
            full = correlation(kept)
    return kept
