"""The `lexicon` explainer (no LLM): a weighted list of the tokens, contexts and token classes a neuron fires on,
read from its explain windows only, e.g. `fires on "def" (1.00), "(" after "def" (0.80), tokens after "import"
(0.55); also on digits (0.55); lower on "the" (0.30)`.

Candidates are every token of the explain windows (as the lexical simulator quotes it: surrounding whitespace
stripped, so punctuation and sub-word pieces count), every rule-based token class of `token_classes`, and context
items seen at least twice: a token right after a given token, and any token right after a given token. Each
candidate's level is its mean activation shrunk toward the neuron's mean over the explain windows (a token seen
once is not trusted as much as one seen ten times), measured from that mean: the simulator predicts 0 where nothing
matches, which stands for the neuron's usual level, and candidates below it become `lower on` items. Items are
chosen greedily: each step adds the candidate whose addition most raises the Pearson correlation, on the explain
windows, between the activations and the prediction the lexical simulator would make from the list so far; a
class is preferred over the members it covers when it explains nearly as well, since it also covers members the
explain windows never showed. Items whose removal costs almost nothing are pruned at the end.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from neuron_explainer.activations.records import NeuronRecord, Window
from neuron_explainer.explain.lexical_grammar import (CASE_INSENSITIVE_WEIGHT, EXACT_WEIGHT, ItemKind, LexicalItem,
                                                      format_items, quotable, whitespace_item_text)
from neuron_explainer.explain.splits import SplitConfig, oriented_record, split_neuron
from neuron_explainer.explain.token_classes import FIXED_CLASSES, candidate_classes, class_memberships
from neuron_explainer.core.failures import Failure
from neuron_explainer.explain.base import Explainer, ExplainerIdentity, ExplainerSettings, ExplainResources
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity


@dataclass(frozen=True)
class LexiconConfig:
    """How the `lexicon` explainer picks and weighs items (recorded in each explanation's parameters)."""

    max_items: int = 40
    """Most items listed."""
    candidate_pool: int = 200
    """Only the quoted and context candidates that carry most of the activations' variance on the explain windows
    (occurrences times squared level) enter the greedy choice, this many (classes always do): it keeps the
    choice fast without changing what it picks."""
    context_shrinkage: float = 3.0
    """Pseudo-count of a context item's token-alone level added to its mean activation."""
    context_margin: float = 0.01
    """Correlation a context item must add beyond the best plain item to be chosen instead."""
    context_min_count: int = 2
    """A context item is a candidate only when seen this often: once, it says no more than its token alone."""
    min_gain: float = 0.001
    """Stop adding items when the best one raises the explain-window correlation by less than this."""
    shrinkage: float = 0.5
    """Pseudo-count of the neuron's mean added to every candidate's mean activation."""
    class_bonus: float = 0.0
    """Correlation a class may fall short of the best token by and still be preferred (it generalises)."""
    class_min_members: int = 4
    """A class is tried only when this many of its distinct members fire above the neuron's mean in the explain
    windows (line breaks and spaces: one, as they cannot be quoted); fewer are better listed than generalised."""
    class_min_occurrences: int = 15
    """... and only when its members fire above the mean at least this often: a class read off a handful of
    occurrences (five colour names that happen to be in capitals) says more than the windows show."""
    prune_tolerance: float = 0.0005
    """An item is dropped at the end when the correlation without it is at most this much lower."""
    tie_tolerance: float = 0.002
    """Candidates this close to the best count as tied; the earliest (most frequent form) is chosen."""
    tail: bool = True
    """After the chosen items, list every other token of the explain windows at its own level (`other tokens`):
    the rest of the token -> activation table, so the list predicts what the lexical ceiling's lookup does."""
    tail_step: float = 0.02
    """The `other tokens` weights are rounded to multiples of this, so tokens share a few weights."""

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready parameters."""
        return asdict(self)


_WHITESPACE_CLASSES = frozenset({"line breaks", "spaces"})
_FIXED_NAMES = frozenset(token_class.name for token_class in FIXED_CLASSES)


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
        # The head only: the `other tokens` (a few hundred) are in the text, and parse_items reads them back.
        extra={"items": [{"kind": item.kind.value, "text": item.text, "weight": item.weight}
                         for item in items if not item.tail],
               "other_tokens": sum(item.tail for item in items)})


def fit_items(windows: Sequence[Window], *, config: LexiconConfig = LexiconConfig()) -> list[LexicalItem] | str:
    """The chosen items with weights normalised to the largest (1; `lower on` items negative), or why there are
    none."""
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
    in_window = np.array([position for window in windows for position in range(len(window.tokens))])
    previous = np.where(in_window > 0, np.roll(position_of, 1), -1)
    distinct = [str(token) for token in distinct]
    candidates, quality = _candidates(distinct, position_of, previous, config)
    if not candidates:
        return "no token of the explain windows can be quoted or classed"
    exact = quality >= 1.0
    counts = exact.sum(axis=1)
    neuron_mean = float(activations.mean())
    sums = exact @ activations
    levels = (sums + config.shrinkage * neuron_mean) / (counts + config.shrinkage) - neuron_mean
    # A context item is shrunk toward what its token alone says (a token after anything: the neuron's mean), with
    # more pseudo-counts: it must earn a level of its own.
    phrase_row = {item.text: index for index, item in enumerate(candidates)
                  if item.kind is ItemKind.TOKEN and item.after is None}
    for index, item in enumerate(candidates):
        if item.kind is ItemKind.AFTER or item.after is not None:
            prior = levels[phrase_row[item.text]] if item.after is not None else 0.0
            levels[index] = ((sums[index] - counts[index] * neuron_mean + config.context_shrinkage * prior)
                             / (counts[index] + config.context_shrinkage))
    firing = activations > neuron_mean
    # The fixed class (commas, underscores, ...) whose only member in the explain windows is a quoted token: named
    # instead of it, it predicts the same there, reads better and covers the members they did not show.
    named_alike: dict[str, LexicalItem] = {}
    for index, item in enumerate(candidates):
        if item.kind is ItemKind.CLASS and item.text in _FIXED_NAMES:
            seen = {stripped[token] for token in position_of[exact[index]]}
            if len(seen) == 1:
                named_alike.setdefault(seen.pop(), item)
    is_class = np.array([item.kind is ItemKind.CLASS for item in candidates])
    eligible = (counts > 0) & (levels != 0)
    for index, item in enumerate(candidates):
        if is_class[index]:
            # For a `lower on` class, "firing" means sitting below the mean.
            fired_positions = exact[index] & (firing if levels[index] > 0 else ~firing)
            fired = {stripped[token] for token in position_of[fired_positions]}
            needed = 1 if item.text in _WHITESPACE_CLASSES else config.class_min_members
            eligible[index] &= len(fired) >= needed and int(fired_positions.sum()) >= config.class_min_occurrences
    if not (eligible & (levels > 0)).any():
        return "no token or class fires above the neuron's mean"
    importance = np.where(is_class, np.inf, counts * levels ** 2)
    # Back in candidate order: where rows tie (case variants of one token), the most frequent form wins.
    useful = np.sort(np.array([index for index in np.argsort(-importance, kind="stable") if eligible[index]],
                              dtype=np.int64)[:config.candidate_pool + int(is_class.sum())])
    predictions = quality[useful] * levels[useful, None]
    is_context = np.array([item.kind is ItemKind.AFTER or item.after is not None for item in candidates])
    chosen = _prune(_greedy(predictions, activations, is_class[useful], is_context[useful], config), predictions,
                    activations, config)
    head = [int(useful[index]) for index in chosen]
    tail: list[int] = []
    if config.tail:
        tail = _tail(head, candidates, levels, _compose(predictions[chosen]), activations, distinct, position_of,
                     config)
    largest = max(abs(levels[row]) for row in head + tail)
    items = []
    for row in head:
        weight = round(float(levels[row] / largest), 2)
        if weight == 0:
            continue
        item = candidates[row]
        if weight > 0 and item.kind is ItemKind.TOKEN and item.after is None:
            item = named_alike.get(item.text, item)
        items.append(LexicalItem(item.kind, item.text, weight, item.token_class, item.after))
    for row in tail:
        weight = round(round(float(levels[row] / largest) / config.tail_step) * config.tail_step, 2)
        if weight != 0:
            items.append(LexicalItem(candidates[row].kind, candidates[row].text, weight, tail=True))
    return items


def _tail(head: list[int], candidates: Sequence[LexicalItem], levels: np.ndarray, head_prediction: np.ndarray,
          activations: np.ndarray, distinct: Sequence[str], position_of: np.ndarray,
          config: LexiconConfig) -> list[int]:
    """The `other tokens` rows: every quoted token (the most frequent form of each case-folded form) and whitespace
    token of the explain windows not chosen, at its own level, where the simulator would then predict that level
    wherever it matches (the chosen items never override it); none when together they raise the explain-window
    correlation by less than `min_gain` (a neuron the chosen items already explain)."""
    stripped = [token.strip() for token in distinct]
    folds: dict[str, int] = {}
    fold_of_token = np.array([folds.setdefault(form.casefold(), len(folds)) for form in stripped], dtype=np.int64)
    # What the chosen items predict, at its highest and lowest, over every token a tail item would match: a quoted
    # item matches its case-folded form (case variants at 0.8), a whitespace item its token.
    spans = {}
    for name, groups, size in (("fold", fold_of_token[position_of], len(folds)), ("token", position_of, len(distinct))):
        highest, lowest = np.full(size, -np.inf), np.full(size, np.inf)
        np.maximum.at(highest, groups, head_prediction)
        np.minimum.at(lowest, groups, head_prediction)
        spans[name] = (highest, lowest)
    token_index = {token: index for index, token in enumerate(distinct)}
    chosen = set(head)
    seen: set[str] = set()
    tail = []
    for row, item in enumerate(candidates):
        if item.after is not None or levels[row] == 0:
            continue
        if item.kind is ItemKind.TOKEN:
            # Case variants match each other (0.8): the first, most frequent, form speaks for its case-folded form.
            folded = item.text.casefold()
            if folded in seen:
                continue
            seen.add(folded)
            highest, lowest = (span[folds[folded]] for span in spans["fold"])
        elif item.kind is ItemKind.WHITESPACE:
            highest, lowest = (span[token_index[item.text]] for span in spans["token"])
        else:
            continue
        own = levels[row]
        # Raised: above every raised chosen item where it matches; lowered: where no chosen item raises the token and
        # below every lowered one.
        if row not in chosen and ((own > 0 and highest <= own) or (own < 0 and highest <= 0 and lowest >= own)):
            tail.append(row)
    if not tail:
        return []
    tokens_of_form: dict[str, list[int]] = {}
    for index, form in enumerate(stripped):
        tokens_of_form.setdefault(form, []).append(index)
    listed = np.zeros(len(distinct), dtype=bool)
    value = np.zeros(len(distinct))
    for row in tail:
        item = candidates[row]
        tokens = [token_index[item.text]] if item.kind is ItemKind.WHITESPACE else tokens_of_form[item.text]
        listed[tokens] = True
        value[tokens] = levels[row]
    with_tail = np.where(listed[position_of], value[position_of], head_prediction)
    target = activations - activations.mean()
    gain = _correlations(with_tail[None, :], target)[0] - _correlations(head_prediction[None, :], target)[0]
    return tail if gain >= config.min_gain else []


def _candidates(distinct: Sequence[str], position_of: np.ndarray, previous: np.ndarray,
                config: LexiconConfig) -> tuple[list[LexicalItem], np.ndarray]:
    """Quoted-token candidates (one per stripped form), context candidates and every class with a member among the
    tokens, and their match quality at every position, a row each (`previous`: the distinct index of the token
    before, -1 at a window's start)."""
    stripped = [token.strip() for token in distinct]
    counts = np.bincount(position_of, minlength=len(distinct))
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
    candidates = [LexicalItem(ItemKind.TOKEN, phrase) for phrase in phrases]
    context_items, context_cells = _context_candidates(stripped, position_of, previous, row_of, config)
    candidates += context_items
    blank = np.array([index for index, token in enumerate(distinct) if whitespace_item_text(token) is not None],
                     dtype=np.int64)
    candidates += [LexicalItem(ItemKind.WHITESPACE, distinct[index]) for index in blank]
    classes = candidate_classes()
    membership = np.array([class_memberships(token) for token in distinct], dtype=np.float64).reshape(
        len(distinct), len(classes))
    present = np.flatnonzero(membership.any(axis=0))
    candidates += [LexicalItem(ItemKind.CLASS, classes[index].name, token_class=classes[index]) for index in present]
    # One matrix, filled block by block (phrases, contexts, whitespace tokens, classes).
    rows = np.empty((len(candidates), len(position_of)))
    first, second, third = len(phrases), len(phrases) + len(context_items), len(phrases) + len(context_items) + len(blank)
    np.take(quality, position_of, axis=1, out=rows[:first])
    rows[first:second] = 0.0
    for row, (positions, phrase_row) in enumerate(context_cells, start=first):
        rows[row, positions] = 1.0 if phrase_row is None else rows[phrase_row, positions]
    rows[second:third] = position_of[None, :] == blank[:, None]
    np.take(np.ascontiguousarray(membership[:, present].T), position_of, axis=1, out=rows[third:])
    return candidates, rows


def _context_candidates(stripped: Sequence[str], position_of: np.ndarray, previous: np.ndarray,
                        row_of: dict[str, int],
                        config: LexiconConfig) -> tuple[list[LexicalItem], list[tuple[np.ndarray, int | None]]]:
    """`"x" after "y"` and `tokens after "y"` seen at least `context_min_count` times (the simulator matches the
    preceding token exactly, stripped), each with the positions right after "y" and the row of "x" (whose match
    quality it has there; None for `tokens after`)."""
    following: dict[str, list[int]] = {}
    for position, index in enumerate(previous.tolist()):
        if index >= 0 and stripped[index] in row_of:
            following.setdefault(stripped[index], []).append(position)
    candidates: list[LexicalItem] = []
    cells: list[tuple[np.ndarray, int | None]] = []
    for text in sorted(following):
        positions = following[text]
        if len(positions) < config.context_min_count:
            continue
        after = np.array(positions, dtype=np.int64)
        candidates.append(LexicalItem(ItemKind.AFTER, text))
        cells.append((after, None))
        pair_counts = Counter(position_of[positions].tolist())
        for token in sorted(pair_counts):
            form = stripped[token]
            if pair_counts[token] >= config.context_min_count and form in row_of:
                candidates.append(LexicalItem(ItemKind.TOKEN, form, after=text))
                cells.append((after, row_of[form]))
    return candidates, cells


def _correlations(predictions: np.ndarray, centred_target: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row with the target (-inf for constant rows)."""
    centred = predictions - predictions.mean(axis=1, keepdims=True)
    spread = np.sqrt(np.einsum("ij,ij->i", centred, centred)) * np.sqrt(centred_target @ centred_target)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (centred @ centred_target) / spread
    return np.where(spread > 0, values, -np.inf)


def _compose(predictions: np.ndarray) -> np.ndarray:
    """What the simulator predicts from some items' rows: the largest positive match, else the most negative
    match, else 0 (per column)."""
    raised = np.where(predictions > 0, predictions, -np.inf).max(axis=0)
    return np.where(raised > -np.inf, raised, np.minimum(predictions.min(axis=0), 0.0))


def _greedy(predictions: np.ndarray, activations: np.ndarray, is_class: np.ndarray, is_context: np.ndarray,
            config: LexiconConfig) -> list[int]:
    # Each step scores every candidate added to the list so far. Rows are sparse (a token occurs a few times in
    # the explain windows), so only the entries a candidate touches are updated: the Pearson correlation of each
    # trial prediction comes from running sums (sum, sum of squares, product with the centred target).
    target = activations - activations.mean()
    target_norm = float(np.sqrt(target @ target))
    size = activations.size
    rows, columns = np.nonzero(predictions)
    values = predictions[rows, columns]
    bounds = np.searchsorted(rows, np.arange(predictions.shape[0] + 1))
    positive = values > 0
    raises = np.zeros(predictions.shape[0], dtype=bool)
    raises[rows[positive]] = True
    raised = np.full(size, -np.inf)
    lowered = np.zeros(size)
    current = np.zeros(size)
    total = squares = product = 0.0
    current_r = 0.0
    chosen: list[int] = []
    while len(chosen) < config.max_items:
        before_raised, before = raised[columns], current[columns]
        after = np.where(positive, np.maximum(before_raised, values),
                         np.where(before_raised > -np.inf, before_raised, np.minimum(lowered[columns], values)))
        delta = after - before
        count = predictions.shape[0]
        sums = total + np.bincount(rows, delta, minlength=count)
        sums_of_squares = squares + np.bincount(rows, delta * (2 * before + delta), minlength=count)
        products = product + np.bincount(rows, delta * target[columns], minlength=count)
        spread = np.sqrt(np.maximum(sums_of_squares - sums * sums / size, 0.0)) * target_norm
        with np.errstate(invalid="ignore", divide="ignore"):
            trial = np.where(spread > 1e-12 * max(target_norm, 1e-300), products / spread, -np.inf)
        trial[chosen] = -np.inf
        # A context item must beat every plain item by a margin: on a tie the plain token generalises better.
        best_plain = float(np.max(np.where(is_context, -np.inf, trial)))
        trial[is_context & (trial < best_plain + config.context_margin)] = -np.inf
        if not chosen:
            # A list starts with what the neuron fires on; `lower on` items only refine it.
            trial[~raises] = -np.inf
        best_token = float(np.max(np.where(is_class, -np.inf, trial)))
        best_class = float(np.max(np.where(is_class, trial, -np.inf)))
        if best_class >= best_token - config.class_bonus and best_class > -np.inf:
            index = int(np.argmax(np.where(is_class, trial, -np.inf)))
        else:
            # Near-ties go to the earliest candidate: the most frequent form of a token (case variants tie).
            index = int(np.flatnonzero(trial >= np.max(trial) - config.tie_tolerance)[0])
        if not trial[index] - current_r >= config.min_gain:
            break
        chosen.append(index)
        touched = slice(bounds[index], bounds[index + 1])
        where = columns[touched]
        if raises[index]:
            raised[where] = np.maximum(raised[where], values[touched])
        else:
            lowered[where] = np.minimum(lowered[where], values[touched])
        current = np.where(raised > -np.inf, raised, lowered)
        total, squares, product = float(current.sum()), float(current @ current), float(current @ target)
        current_r = float(trial[index])
    return chosen


def _prune(chosen: list[int], predictions: np.ndarray, activations: np.ndarray, config: LexiconConfig) -> list[int]:
    target = activations - activations.mean()

    def correlation(indices: list[int]) -> float:
        if not indices:
            return -np.inf
        return float(_correlations(_compose(predictions[indices])[None, :], target)[0])

    raises = (predictions > 0).any(axis=1)
    kept = list(chosen)
    full = correlation(kept)
    for index in reversed(chosen):
        without = [other for other in kept if other != index]
        if raises[without].any() and correlation(without) >= full - config.prune_tolerance:
            kept = without
            full = correlation(kept)
    return kept
