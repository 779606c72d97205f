"""Baselines of a score, the one implementation `run`, `score` and `eval` share.

`shuffled`: the neuron scored with another neuron's explanation, the donor given by a seeded derangement over
the neurons being scored together (every neuron gets a donor, no donor serves twice; none with fewer than two
neurons). `empty`: the neuron scored with an empty explanation. Both on the same windows and split as the
neuron's own score. An undefined baseline is NaN and is counted, never dropped (`BaselineGap`). Other baselines
(e.g. a lexical ceiling) belong next to these, as more keys of `Score.baselines`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.scoring.ceiling import LEXICAL_CEILING, lexical_ceiling
from neuron_explainer.scoring.correlation import ScoreConfig, score_explanation
from neuron_explainer.simulate.base import Simulator
from neuron_explainer.simulate.types import Score
from neuron_explainer.core.neurons import NeuronId

NAN = float("nan")
SHUFFLED = "shuffled"
EMPTY = "empty"


def donor_assignment(neurons: Iterable[NeuronId], *, seed: int = 0) -> dict[NeuronId, NeuronId]:
    """A seeded derangement: neuron -> the neuron whose explanation it borrows (never itself, each donor once);
    empty with fewer than two neurons."""
    ordered = sorted(set(neurons))
    if len(ordered) < 2:
        return {}
    cycle = ordered[:]
    random.Random(f"shuffle:{seed}").shuffle(cycle)
    # One shuffled cycle: each neuron takes the next one's explanation, so every neuron is a donor exactly once.
    return {cycle[index]: cycle[(index + 1) % len(cycle)] for index in range(len(cycle))}


def shuffled_explanations(explanations: Mapping[NeuronId, str], *, seed: int = 0) -> dict[NeuronId, str]:
    """Every neuron's borrowed explanation text under `donor_assignment` (empty with fewer than two neurons)."""
    return {neuron: explanations[donor] for neuron, donor in donor_assignment(explanations, seed=seed).items()}


async def compute_baselines(record: NeuronRecord, simulator: Simulator, *, shuffled_explanation: str | None,
                            config: ScoreConfig = ScoreConfig()) -> dict[str, float]:
    """Pooled Pearson of another neuron's explanation (`shuffled`), of an empty explanation (`empty`) and of the
    token lookup (`lexical_ceiling`, scoring/ceiling.py) on this neuron's split; NaN where undefined or failed."""
    async def pooled_score(text: str) -> float:
        outcome = await score_explanation(record, text, simulator, config=replace(config, bootstrap_samples=0))
        return outcome.metrics.pearson if isinstance(outcome, Score) else NAN

    baselines = {EMPTY: await pooled_score(""), LEXICAL_CEILING: lexical_ceiling(record, config=config)}
    if shuffled_explanation is not None:
        baselines[SHUFFLED] = await pooled_score(shuffled_explanation)
    return baselines


@dataclass(frozen=True)
class BaselineGap:
    """The loop's health metric: matched explanations should beat another neuron's explanation by a margin."""

    matched_mean: float
    """Mean pooled Pearson of the neurons' own explanations, over the pairs where both are defined."""
    shuffled_mean: float
    """Mean pooled Pearson of the shuffled explanations on the same neurons."""
    gap: float
    """matched_mean - shuffled_mean."""
    neurons: int
    """Pairs where both are defined."""
    undefined_matched: int
    """Scores carrying a shuffled baseline whose own Pearson is undefined."""
    undefined_shuffled: int
    """Scores whose shuffled baseline is undefined."""
    without_baseline: int
    """Scores that carry no shuffled baseline at all."""
    gap_undefined_as_zero: float
    """The gap over every score carrying a shuffled baseline, an undefined value counted as 0."""


def matched_minus_shuffled(scores: Sequence[Score]) -> BaselineGap:
    """Mean matched-minus-shuffled Pearson; undefined values are counted, and also averaged in as 0."""
    with_baseline = [(score.metrics.pearson, score.baselines[SHUFFLED]) for score in scores
                     if SHUFFLED in score.baselines]
    pairs = [(matched, shuffled) for matched, shuffled in with_baseline
             if not math.isnan(matched) and not math.isnan(shuffled)]
    zeroed = [(0.0 if math.isnan(matched) else matched) - (0.0 if math.isnan(shuffled) else shuffled)
              for matched, shuffled in with_baseline]
    undefined_matched = sum(1 for matched, _ in with_baseline if math.isnan(matched))
    undefined_shuffled = sum(1 for _, shuffled in with_baseline if math.isnan(shuffled))
    gap_zero = float(np.mean(zeroed)) if zeroed else NAN
    if not pairs:
        return BaselineGap(NAN, NAN, NAN, 0, undefined_matched, undefined_shuffled,
                           len(scores) - len(with_baseline), gap_zero)
    matched = float(np.mean([value for value, _ in pairs]))
    shuffled = float(np.mean([value for _, value in pairs]))
    return BaselineGap(matched, shuffled, matched - shuffled, len(pairs), undefined_matched, undefined_shuffled,
                       len(scores) - len(with_baseline), gap_zero)


@dataclass(frozen=True)
class ScoreMean:
    """A mean of scores that says how many were undefined instead of hiding them."""

    mean: float | None
    """Mean over the defined values (None when none is defined)."""
    mean_undefined_as_zero: float | None
    """Mean over every value, an undefined one counted as 0 (None when there are no values)."""
    defined: int
    """Defined values."""
    undefined: int
    """Undefined (NaN or None) values."""

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready."""
        return {"mean": self.mean, "mean_undefined_as_zero": self.mean_undefined_as_zero, "defined": self.defined,
                "undefined": self.undefined}


def score_mean(values: Iterable[float | None]) -> ScoreMean:
    """The mean of defined values, the mean with undefined = 0, and the counts."""
    every = [None if value is None or math.isnan(value) else float(value) for value in values]
    defined = [value for value in every if value is not None]
    return ScoreMean(mean=float(np.mean(defined)) if defined else None,
                     mean_undefined_as_zero=float(np.mean([value or 0.0 for value in every])) if every else None,
                     defined=len(defined), undefined=len(every) - len(defined))
