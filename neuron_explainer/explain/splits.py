"""Per-neuron seeded split of the recorded windows into explain / calibrate / score parts, without leakage."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from neuron_explainer.activations.records import NeuronRecord, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain.types import Polarity


@dataclass(frozen=True)
class SplitConfig:
    """How many windows go to each part of a neuron's split, and the seed that picks them."""

    seed: int = 0
    """Split seed; with the neuron id it fixes every part."""
    explain_top: int = 10
    """Top windows the explainer sees."""
    score_top: int = 10
    """Held-out top windows scored."""
    score_random: int = 10
    """Random windows scored."""
    calibrate_top: int | None = 5
    """Top windows for calibration and best-of-n; None = every top window not explained or scored."""
    calibrate_random: int | None = 5
    """Random windows for calibration and best-of-n; None = every random window not scored."""
    stratified: bool = False
    """Pick explain windows spread over the activation range of the remaining top windows, not at random."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready parameters."""
        return {"split_seed": self.seed, "explain_top": self.explain_top, "score_top": self.score_top,
                "score_random": self.score_random, "calibrate_top": self.calibrate_top,
                "calibrate_random": self.calibrate_random, "stratified": self.stratified}


@dataclass(frozen=True)
class NeuronSplit:
    """A neuron's windows by part; the explain part never shares a window id with a scored or calibration part."""

    explain: tuple[Window, ...]
    """Top windows shown to the explainer, strongest first."""
    calibrate_top: tuple[Window, ...]
    """Top windows for calibration."""
    calibrate_random: tuple[Window, ...]
    """Random windows for calibration."""
    score_top: tuple[Window, ...]
    """Held-out top windows scored."""
    score_random: tuple[Window, ...]
    """Random windows scored."""

    @property
    def calibrate(self) -> tuple[Window, ...]:
        """Calibration windows, top first."""
        return self.calibrate_top + self.calibrate_random

    @property
    def scored(self) -> tuple[Window, ...]:
        """Scored windows, top first."""
        return self.score_top + self.score_random

    @property
    def explain_ids(self) -> frozenset[int]:
        """Window ids the explainer may see."""
        return frozenset(window.window_id for window in self.explain)


def oriented_record(record: NeuronRecord, polarity: Polarity) -> NeuronRecord:
    """The record as seen for one polarity: for negative, the bottom windows become the top windows and every
    activation is negated, so the rest of the method is the same for both sides."""
    if polarity == Polarity.POSITIVE:
        return record
    if not record.bottom_windows:
        raise UserError(f"neuron {record.neuron} has no negative windows; record with polarity both to explain them")

    def negate(window: Window) -> Window:
        return replace(window, activations=tuple(-value for value in window.activations))

    stats = record.stats
    negated_stats = replace(
        stats, mean=-stats.mean, min=-stats.max, max=-stats.min,
        fraction_positive=float("nan"),  # the fraction of negative tokens is not recorded
        quantiles=tuple((1.0 - probability, -value) for probability, value in reversed(stats.quantiles)))
    return replace(record, top_windows=tuple(negate(window) for window in record.bottom_windows),
                   random_windows=tuple(negate(window) for window in record.random_windows),
                   stats=negated_stats, bottom_windows=())


def _neuron_rng(record: NeuronRecord, seed: int, purpose: str) -> random.Random:
    # String seeds hash with sha512 inside random.Random, so the split is the same in every process.
    return random.Random(f"{seed}:{record.neuron.layer}:{record.neuron.neuron}:{purpose}")


def _stratified_pick(windows: Sequence[Window], count: int, rng: random.Random) -> list[Window]:
    """One window from each of `count` equal-size bands of the windows ranked by max activation."""
    ranked = sorted(windows, key=lambda window: window.max_activation, reverse=True)
    picked: list[Window] = []
    for band in range(count):
        start = band * len(ranked) // count
        end = (band + 1) * len(ranked) // count
        if end > start:
            picked.append(ranked[rng.randrange(start, end)])
    return picked


def split_neuron(record: NeuronRecord, config: SplitConfig) -> NeuronSplit:
    """Split one (already oriented) record.

    Score windows are drawn first and calibration windows next, so the scored set does not depend on how the
    explain windows are picked (random or stratified) and methods are compared on the same windows.
    Random windows that share an id with an explain window, or with a held-out top window, are dropped from the
    random parts: the same text must never be both explained and scored, nor scored twice.
    """
    top_rng = _neuron_rng(record, config.seed, "top")
    top_order = list(record.top_windows)
    top_rng.shuffle(top_order)
    score_top = top_order[:config.score_top]
    remaining = top_order[config.score_top:]
    if config.calibrate_top is None:
        explain_pool, calibrate_top = remaining, None
    else:
        calibrate_top = remaining[:config.calibrate_top]
        explain_pool = remaining[config.calibrate_top:]
    if config.stratified:
        explain = _stratified_pick(explain_pool, config.explain_top, _neuron_rng(record, config.seed, "strata"))
    else:
        explain = explain_pool[:config.explain_top]
    if calibrate_top is None:
        chosen = {id(window) for window in explain}
        calibrate_top = [window for window in explain_pool if id(window) not in chosen]
    explain_ids = {window.window_id for window in explain}
    score_top_ids = {window.window_id for window in score_top}

    eligible_random = [window for window in record.random_windows
                       if window.window_id not in explain_ids and window.window_id not in score_top_ids]
    random_rng = _neuron_rng(record, config.seed, "random")
    random_rng.shuffle(eligible_random)
    score_random = eligible_random[:config.score_random]
    rest = eligible_random[config.score_random:]
    calibrate_random = rest if config.calibrate_random is None else rest[:config.calibrate_random]

    split = NeuronSplit(
        explain=tuple(sorted(explain, key=lambda window: window.max_activation, reverse=True)),
        calibrate_top=tuple(calibrate_top), calibrate_random=tuple(calibrate_random),
        score_top=tuple(score_top), score_random=tuple(score_random))
    check_no_leakage(split)
    return split


def check_no_leakage(split: NeuronSplit, *, explained_ids: Sequence[int] = ()) -> None:
    """Raise if an explained window (from the split, or `explained_ids` an explanation recorded) is scored or
    used for calibration. Not an `assert`: it must hold under `python -O` too."""
    forbidden = split.explain_ids | set(explained_ids)
    used = {window.window_id for window in split.scored + split.calibrate}
    leaked = sorted(forbidden & used)
    if leaked:
        raise UserError(f"window(s) {leaked[:5]} were shown to the explainer and would be scored; "
                        "explain and score with the same split settings and seed")
