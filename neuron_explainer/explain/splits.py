"""Per-neuron seeded split of the recorded windows into explain / calibrate / score parts, without leakage.

Splits draw whole window groups (a document, or a run of adjacent windows of a long one, joined with
near-duplicate windows; see activations/groups.py): the explain, calibrate and score sets never share a group, so
no text is explained on one side and scored on another. docs/method.md describes the procedure.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from neuron_explainer.activations.records import NeuronRecord, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain.types import Polarity


class SplitGroups(str, Enum):
    """What a split keeps together."""

    AUTO = "auto"
    """Whole documents when the store knows them, else runs of adjacent window ids (said once per store)."""
    DOCUMENTS = "documents"
    """Whole documents; a store without document ids is refused."""


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
    groups: SplitGroups = SplitGroups.AUTO
    """What is kept on one side (`documents` refuses a store without document ids)."""

    def as_dict(self) -> dict[str, object]:
        """JSON-ready parameters (`split_groups` names the group-aware split, so results of the old per-window
        split never count as the same work)."""
        return {"split_seed": self.seed, "explain_top": self.explain_top, "score_top": self.score_top,
                "score_random": self.score_random, "calibrate_top": self.calibrate_top,
                "calibrate_random": self.calibrate_random, "stratified": self.stratified,
                "split_groups": "groups-v1"}


def check_split_groups(config: SplitConfig, *, has_document_ids: bool, store: object) -> None:
    """UserError when document groups are asked for explicitly and the store has no document ids."""
    if SplitGroups(config.groups) is SplitGroups.DOCUMENTS and not has_document_ids:
        raise UserError(f"--split-groups documents: the record store {store} has no document ids (recorded before "
                        "they existed); record it again or use --split-groups auto")


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
    window_groups: Mapping[int, int] = field(default_factory=dict)
    """Split group of each window id (a window not listed is a group of its own)."""

    @property
    def calibrate(self) -> tuple[Window, ...]:
        """Calibration windows, top first."""
        return self.calibrate_top + self.calibrate_random

    @property
    def scored(self) -> tuple[Window, ...]:
        """Scored windows, top first."""
        return self.score_top + self.score_random

    def group_of(self, window_id: int) -> int:
        """The split group of a window id (negative keys for windows that are groups of their own)."""
        return self.window_groups.get(window_id, -1 - window_id)

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


def _allocate(groups: Sequence[list[Window]], targets: Sequence[int | None], *, fair: bool = True
              ) -> tuple[list[list[Window]], list[Window]]:
    """Deal whole groups, in order, to parts with window targets (None: no limit, served only once every limited
    part is full). `fair`: each group goes to the open part missing the largest share of its target (ties: the
    earlier part), so one large group cannot starve the others; otherwise to the first open part. Returns each
    part's windows and the windows of groups left once every part was full (an overfull part keeps its whole last
    group; callers trim, and trimmed windows are used nowhere else)."""
    parts: list[list[Window]] = [[] for _ in targets]
    left: list[Window] = []
    for group in groups:
        open_parts = [index for index, target in enumerate(targets)
                      if target is not None and len(parts[index]) < target]
        unlimited = [index for index, target in enumerate(targets) if target is None]
        if open_parts and not fair:
            chosen = open_parts[0]
        elif open_parts:
            chosen = max(open_parts, key=lambda index: ((targets[index] - len(parts[index])) / targets[index], -index))
        elif unlimited:
            chosen = unlimited[0]
        else:
            left.extend(group)
            continue
        parts[chosen].extend(group)
    return parts, left


def _grouped(windows: Sequence[Window], group_of: Callable[[int], int]) -> list[list[Window]]:
    """Windows bucketed by group, groups in order of their first window, each window once."""
    buckets: dict[int, list[Window]] = {}
    seen: set[int] = set()
    for window in windows:
        if window.window_id not in seen:
            seen.add(window.window_id)
            buckets.setdefault(group_of(window.window_id), []).append(window)
    return list(buckets.values())


def split_neuron(record: NeuronRecord, config: SplitConfig) -> NeuronSplit:
    """Split one (already oriented) record into group-disjoint parts.

    Top windows are bucketed by group and the groups shuffled (seeded by split seed and neuron), then dealt whole
    to the held-out top windows, the explain pool and calibration (`_allocate`: each group to the part missing the
    largest share of its size; groups left once all are full widen the explain pool). The explain windows are drawn
    from the pool (at random, or one per activation band when stratified), so the scored set does not depend on how
    explain windows are picked and methods are compared on the same windows. Random windows whose group holds any
    explained, scored or calibration top window are dropped; the rest are bucketed by group, shuffled with the
    neuron's own seed and dealt whole, first to the scored random windows, then to calibration. A group never spans two
    parts.
    """
    groups = record.window_groups

    def group_of(window_id: int) -> int:
        return groups.get(window_id, -1 - window_id)

    top_groups = _grouped(record.top_windows, group_of)
    _neuron_rng(record, config.seed, "top").shuffle(top_groups)
    if config.calibrate_top is None:
        (score_top, explain_pool), _ = _allocate(top_groups, [config.score_top, None])
    else:
        (score_top, explain_pool, calibrate_top), left = _allocate(
            top_groups, [config.score_top, config.explain_top, config.calibrate_top])
        # Groups left once every part is full widen the explain pool (more choice; never scored).
        explain_pool += left
        calibrate_top = calibrate_top[:config.calibrate_top]
    score_top = score_top[:config.score_top]
    if config.stratified:
        explain = _stratified_pick(explain_pool, config.explain_top, _neuron_rng(record, config.seed, "strata"))
    else:
        shuffled_pool = explain_pool[:]
        _neuron_rng(record, config.seed, "explain").shuffle(shuffled_pool)
        explain = shuffled_pool[:config.explain_top]
    explain_group_ids = {group_of(window.window_id) for window in explain}
    if config.calibrate_top is None:
        calibrate_top = [window for window in explain_pool if group_of(window.window_id) not in explain_group_ids]
    taken = {group_of(window.window_id) for window in (*score_top, *calibrate_top, *explain)}

    random_groups = _grouped([window for window in record.random_windows if group_of(window.window_id) not in taken],
                             group_of)
    _neuron_rng(record, config.seed, "random").shuffle(random_groups)
    (score_random, calibrate_random), _ = _allocate(random_groups, [config.score_random, config.calibrate_random],
                                                    fair=False)
    score_random = score_random[:config.score_random]
    if config.calibrate_random is not None:
        calibrate_random = calibrate_random[:config.calibrate_random]

    split = NeuronSplit(
        explain=tuple(sorted(explain, key=lambda window: window.max_activation, reverse=True)),
        calibrate_top=tuple(calibrate_top), calibrate_random=tuple(calibrate_random),
        score_top=tuple(score_top), score_random=tuple(score_random), window_groups=groups)
    check_no_leakage(split)
    return split


def check_no_leakage(split: NeuronSplit, *, explained_ids: Sequence[int] = ()) -> None:
    """Raise unless the explain, calibrate and score sets are pairwise group-disjoint, no window is used twice,
    and no window an explanation recorded (`explained_ids`) shares a group with a scored or calibration window.
    Not an `assert`: it must hold under `python -O` too."""
    parts = {"explain": split.explain, "calibrate": split.calibrate, "score": split.scored}
    owner: dict[int, str] = {}
    for name, windows in parts.items():
        for window in windows:
            group = split.group_of(window.window_id)
            if owner.setdefault(group, name) != name:
                raise UserError(f"window {window.window_id} of the {name} set shares its document group with the "
                                f"{owner[group]} set; the split must keep groups apart")
    used = [window.window_id for window in split.scored + split.calibrate]
    if len(set(used)) != len(used):
        raise UserError("a window is used twice in the scored and calibration sets")
    forbidden = {split.group_of(window_id) for window_id in (*split.explain_ids, *explained_ids)}
    leaked = sorted(window_id for window_id in used if split.group_of(window_id) in forbidden)
    if leaked:
        raise UserError(f"window(s) {leaked[:5]} share a document group with windows shown to the explainer and "
                        "would be scored; explain and score with the same split settings and seed")
