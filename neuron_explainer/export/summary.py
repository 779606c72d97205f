"""Per-layer summaries of best scores, with a bootstrap interval on the fraction of well-explained neurons."""

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
    neurons: int
    """Neurons with a best explanation."""
    scored: int
    """Of those, neurons whose score is defined."""
    mean: float
    """Mean best score over defined scores (NaN if none)."""
    median: float
    """Median best score over defined scores."""
    fraction_good: float
    """Fraction of defined scores >= GOOD_SCORE."""
    fraction_good_ci: tuple[float, float]
    """Bootstrap 95% interval of `fraction_good` (resampling neurons)."""


def _summarise(layer: int | None, scores: list[float], rng: np.random.Generator, resamples: int,
               threshold: float) -> LayerSummary:
    defined = np.array([score for score in scores if math.isfinite(score)], dtype=float)
    if defined.size == 0:
        nan = float("nan")
        return LayerSummary(layer, len(scores), 0, nan, nan, nan, (nan, nan))
    good = defined >= threshold
    # Resampling neurons with replacement and counting the good ones is a binomial draw, so draw that directly.
    draws = rng.binomial(defined.size, good.mean(), size=resamples) / defined.size
    low, high = np.percentile(draws, [2.5, 97.5])
    return LayerSummary(layer=layer, neurons=len(scores), scored=int(defined.size), mean=float(defined.mean()),
                        median=float(np.median(defined)), fraction_good=float(good.mean()),
                        fraction_good_ci=(float(low), float(high)))


def layer_summaries(rows: Iterable[ResultRow], *, threshold: float = GOOD_SCORE, resamples: int = 2000,
                    seed: int = 0) -> list[LayerSummary]:
    """One summary per layer (ascending) and a final total row, from best-per-neuron rows."""
    by_layer: dict[int, list[float]] = {}
    for row in rows:
        by_layer.setdefault(row.neuron.layer, []).append(row.score)
    rng = np.random.default_rng(seed)
    summaries = [_summarise(layer, scores, rng, resamples, threshold) for layer, scores in sorted(by_layer.items())]
    every = [score for scores in by_layer.values() for score in scores]
    summaries.append(_summarise(None, every, rng, resamples, threshold))
    return summaries
