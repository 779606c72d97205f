"""Splits: deterministic, sized as configured, and never scoring a window the explainer saw."""

from __future__ import annotations

import pytest

from neuron_explainer.activations.records import NeuronRecord, NeuronStats, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain import Polarity, SplitConfig, check_no_leakage, oriented_record, split_neuron

STATS = NeuronStats(count=1, mean=0.0, std=1.0, min=-3.0, max=5.0, fraction_positive=0.5,
                    quantiles=((0.1, -1.0), (0.9, 2.0)))


def window(window_id: int, peak: float) -> Window:
    return Window(window_id=window_id, tokens=("a", "b", "c"), activations=(0.0, peak, peak / 2))


def record(*, top: int = 40, random_ids: range | list[int] = range(1000, 1040), neuron: NeuronId = NeuronId(2, 7),
           bottom: int = 0) -> NeuronRecord:
    top_windows = tuple(window(index, 10.0 - index * 0.1) for index in range(top))
    random_windows = tuple(window(index, 0.5) for index in random_ids)
    bottom_windows = tuple(window(500 + index, -5.0 + index * 0.1) for index in range(bottom))
    return NeuronRecord(neuron=neuron, top_windows=top_windows, random_windows=random_windows, stats=STATS,
                        bottom_windows=bottom_windows)


def ids(windows) -> list[int]:
    return [item.window_id for item in windows]


def test_default_sizes_and_disjoint_parts():
    split = split_neuron(record(), SplitConfig())
    assert (len(split.explain), len(split.score_top), len(split.score_random)) == (10, 10, 10)
    assert (len(split.calibrate_top), len(split.calibrate_random)) == (5, 5)
    parts = [ids(split.explain), ids(split.score_top), ids(split.calibrate_top)]
    assert len(set().union(*parts)) == sum(len(part) for part in parts)
    assert set(ids(split.score_random)).isdisjoint(ids(split.calibrate_random))
    # The explainer sees its windows strongest first.
    peaks = [item.max_activation for item in split.explain]
    assert peaks == sorted(peaks, reverse=True)


def test_split_is_deterministic_per_seed_and_neuron():
    first = split_neuron(record(), SplitConfig(seed=3))
    again = split_neuron(record(), SplitConfig(seed=3))
    assert ids(first.explain) == ids(again.explain) and ids(first.score_random) == ids(again.score_random)
    other_seed = split_neuron(record(), SplitConfig(seed=4))
    other_neuron = split_neuron(record(neuron=NeuronId(2, 8)), SplitConfig(seed=3))
    assert ids(first.explain) != ids(other_seed.explain)
    assert ids(first.explain) != ids(other_neuron.explain)


def test_random_windows_sharing_an_explain_id_are_never_scored():
    # Every top window id also appears among the random windows: the same text sampled twice.
    split = split_neuron(record(random_ids=list(range(40)) + list(range(1000, 1040))), SplitConfig(score_random=60))
    scored = set(ids(split.score_top) + ids(split.score_random) + ids(split.calibrate_top)
                 + ids(split.calibrate_random))
    assert scored.isdisjoint(ids(split.explain))
    # Held-out top windows are not scored a second time as random windows either.
    assert set(ids(split.score_random)).isdisjoint(ids(split.score_top))
    # Nor calibration top windows: the calibration set is disjoint from the scored set too.
    assert set(ids(split.score_random)).isdisjoint(ids(split.calibrate_top))
    assert len(split.score_random) == 80 - 10 - 10 - 5


def test_scored_windows_do_not_depend_on_how_explain_windows_are_picked():
    plain = split_neuron(record(), SplitConfig(seed=1))
    stratified = split_neuron(record(), SplitConfig(seed=1, stratified=True))
    assert ids(plain.score_top) == ids(stratified.score_top)
    assert ids(plain.score_random) == ids(stratified.score_random)
    assert ids(plain.calibrate_top) == ids(stratified.calibrate_top)


def test_stratified_explain_windows_span_the_activation_range():
    # 40 top windows: 10 scored, 5 calibrate, 25 left; 5 strata of 5 windows each.
    split = split_neuron(record(), SplitConfig(seed=0, stratified=True, explain_top=5))
    pool = sorted(set(range(40)) - set(ids(split.score_top)) - set(ids(split.calibrate_top)))
    ranked = sorted(pool, key=lambda index: -(10.0 - index * 0.1))
    picked = ids(split.explain)
    assert len(picked) == 5
    for band in range(5):
        assert sum(1 for index in picked if index in ranked[band * 5:(band + 1) * 5]) == 1


def test_calibrate_none_takes_the_remainder():
    split = split_neuron(record(), SplitConfig(calibrate_top=None, calibrate_random=None))
    assert len(split.calibrate_top) == 40 - 10 - 10
    assert len(split.calibrate_random) == 40 - 10


def test_small_records_give_smaller_parts_not_errors():
    split = split_neuron(record(top=12, random_ids=range(1000, 1003)), SplitConfig())
    # 12 top windows are dealt in proportion to the parts' sizes (10, 10, 5), so every part gets some.
    assert (len(split.score_top), len(split.explain), len(split.calibrate_top)) == (5, 5, 2)
    assert len(split.score_random) == 3 and split.calibrate_random == ()


def test_leakage_check_refuses_scoring_explained_windows():
    split = split_neuron(record(), SplitConfig(seed=0))
    check_no_leakage(split, explained_ids=ids(split.explain))
    with pytest.raises(UserError, match="shown to the explainer"):
        check_no_leakage(split, explained_ids=[split.score_top[0].window_id])
    other = split_neuron(record(), SplitConfig(seed=5))
    with pytest.raises(UserError):
        check_no_leakage(other, explained_ids=ids(split.explain))


def test_negative_polarity_uses_negated_bottom_windows():
    oriented = oriented_record(record(bottom=20), Polarity.NEGATIVE)
    assert ids(oriented.top_windows) == list(range(500, 520))
    assert oriented.top_windows[0].activations == (-0.0, 5.0, 2.5)
    assert oriented.random_windows[0].activations == (-0.0, -0.5, -0.25)
    assert (oriented.stats.min, oriented.stats.max, oriented.stats.mean) == (-5.0, 3.0, -0.0)
    assert oriented.stats.quantiles == ((0.09999999999999998, -2.0), (0.9, 1.0))
    with pytest.raises(UserError, match="polarity both"):
        oriented_record(record(), Polarity.NEGATIVE)
