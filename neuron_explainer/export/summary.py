"""Per-layer summaries of best scores, per polarity, with a bootstrap interval on the fraction of well-explained
neurons; undefined scores are counted and also averaged in as 0."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from neuron_explainer.db import ResultRow

GOOD_SCORE = 0.8
"""A neuron counts as well explained when its best score reaches this."""


@dataclass(frozen=True)
class LayerSummary:
    """Score statistics of one layer (or of all layers when `layer` is None)."""

    layer: int | None
    """The layer, or None for the total row."""
    polarity: str
    """`positive` or `negative` (best rows of one side only; `any` when rows were picked across sides)."""
    neurons: int
    """Neurons with a best explanation."""
    scored: int
    """Of those, neurons whose score is defined."""
    mean: float
    """Mean best score over defined scores (NaN if none)."""
    mean_undefined_as_zero: float
    """Mean best score with an undefined score counted as 0 (NaN without neurons)."""
    median: float
    """Median best score over defined scores."""
    fraction_good: float
    """Fraction of defined scores >= GOOD_SCORE."""
    fraction_good_ci: tuple[float, float]
    """Bootstrap 95% interval of `fraction_good` (resampling neurons)."""


def _summarise(layer: int | None, polarity: str, scores: list[float], rng: np.random.Generator, resamples: int,
               threshold: float) -> LayerSummary:
    defined = np.array([score for score in scores if math.isfinite(score)], dtype=float)
    nan = float("nan")
    zeroed = float(defined.sum() / len(scores)) if scores else nan
    if defined.size == 0:
        return LayerSummary(layer, polarity, len(scores), 0, nan, zeroed, nan, nan, (nan, nan))
    good = defined >= threshold
    # Resampling neurons with replacement and counting the good ones is a binomial draw, so draw that directly.
    draws = rng.binomial(defined.size, good.mean(), size=resamples) / defined.size
    low, high = np.percentile(draws, [2.5, 97.5])
    return LayerSummary(layer=layer, polarity=polarity, neurons=len(scores), scored=int(defined.size),
                        mean=float(defined.mean()), mean_undefined_as_zero=zeroed, median=float(np.median(defined)), fraction_good=float(good.mean()),
                        fraction_good_ci=(float(low), float(high)))


def layer_summaries(rows: Iterable[ResultRow], *, threshold: float = GOOD_SCORE, resamples: int = 2000,
                    seed: int = 0, polarity_any: bool = False) -> list[LayerSummary]:
    """Per polarity (positive first): one summary per layer (ascending) and a total row, from best-per-neuron
    rows; with `polarity_any` the rows were picked across sides and are summarised together as `any`."""
    by_side: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        side = "any" if polarity_any else row.polarity
        by_side.setdefault(side, {}).setdefault(row.neuron.layer, []).append(row.score)
    rng = np.random.default_rng(seed)
    summaries: list[LayerSummary] = []
    for side in sorted(by_side, key=lambda name: (name != "positive", name)):
        by_layer = by_side[side]
        summaries += [_summarise(layer, side, scores, rng, resamples, threshold)
                      for layer, scores in sorted(by_layer.items())]
        every = [score for scores in by_layer.values() for score in scores]
        summaries.append(_summarise(None, side, every, rng, resamples, threshold))
    if not summaries:
        summaries.append(_summarise(None, "positive", [], rng, resamples, threshold))
    return summaries
