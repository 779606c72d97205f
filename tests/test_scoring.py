"""Metrics, calibration, bootstrap and baselines, with hand-computed numbers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import numpy as np
import pytest

from neuron_explainer.activations.records import NeuronRecord, NeuronStats, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain import ExplainerKind, Explanation, Polarity, SplitConfig, split_neuron
from neuron_explainer.scoring import (ScoreConfig, absolute_dev_explained, bootstrap_interval, calibrate_ranker,
                                      compute_baselines, compute_metrics, fit_linear, matched_minus_shuffled,
                                      pearson, rsquared, score_explanation, shuffled_explanations)
from neuron_explainer.simulate import (Score, ScoredWindow, SimulationResult, Simulator, SimulatorKind,
                                       WindowSimulation, WindowSplit)


def test_pearson_hand_computed():
    # t - mean = (-1, 0, 1); p - mean = (-4/3, -1/3, 5/3); cov sum = 3; |t|^2 = 2; |p|^2 = 42/9.
    assert pearson([1, 2, 3], [1, 2, 4]).value == pytest.approx(3 / math.sqrt(2 * 42 / 9))
    assert pearson([1, 2, 3], [3, 2, 1]).value == pytest.approx(-1.0)


@pytest.mark.parametrize(("true", "predicted", "reason"), [
    ([], [], "no scored tokens"),
    ([1.0], [2.0], "fewer than two scored tokens"),
    ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], "true activations are constant"),
    ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "simulated activations are constant"),
])
def test_pearson_undefined_is_nan_with_reason(true, predicted, reason):
    result = pearson(true, predicted)
    assert math.isnan(result.value) and result.undefined_reason == reason


def test_rsquared_and_absolute_dev_explained_hand_computed():
    # t = (0, 2), p = (1, 1): mean squared error 1, mean t^2 2 -> 0.5; mean |error| 1, mean |t| 1 -> 0.
    assert rsquared([0, 2], [1, 1]) == pytest.approx(0.5)
    assert absolute_dev_explained([0, 2], [1, 1]) == pytest.approx(0.0)
    assert rsquared([0, 4], [0, 3]) == pytest.approx(1 - (1 / 2) / (16 / 2))
    assert absolute_dev_explained([0, 4], [0, 3]) == pytest.approx(1 - 0.5 / 2)
    assert math.isnan(rsquared([0, 0], [1, 2])) and math.isnan(absolute_dev_explained([], []))


def test_linear_fit_and_its_clamped_slope():
    fitted = fit_linear([0, 1, 2], [1, 3, 5])
    assert (fitted.slope, fitted.intercept) == pytest.approx((2.0, 1.0))
    anti = fit_linear([0, 1, 2], [5, 3, 1])
    assert (anti.slope, anti.intercept) == pytest.approx((0.0, 3.0))
    flat = fit_linear([4, 4], [1, 3])
    assert (flat.slope, flat.intercept) == pytest.approx((0.0, 2.0))
    assert fit_linear([], []) is None


def scored(window_id: int, split: WindowSplit, true: Sequence[float], predicted: Sequence[float],
           error: str | None = None) -> ScoredWindow:
    return ScoredWindow(window_id=window_id, split=split, tokens=tuple("t" * len(true)),
                        true_activations=tuple(true), simulated_activations=tuple(predicted), error=error)


def test_metrics_calibrate_on_calibration_windows_only():
    windows = [
        # Calibration says true = 0.2 * simulated.
        scored(1, WindowSplit.CALIBRATE_TOP, [0.0, 2.0], [0.0, 10.0]),
        scored(2, WindowSplit.SCORE_TOP, [0.0, 1.0, 2.0], [0.0, 5.0, 10.0]),
        scored(3, WindowSplit.SCORE_RANDOM, [0.0, 0.4], [0.0, 1.0]),
        # Failed windows are left out (their empty values would otherwise misalign everything).
        scored(4, WindowSplit.SCORE_RANDOM, [3.0, 0.0], [], error="misaligned answer"),
    ]
    report = compute_metrics(windows, bootstrap_samples=200)
    metrics = report.metrics
    assert (report.calibration.slope, report.calibration.intercept) == pytest.approx((0.2, 0.0))
    assert metrics.scored_tokens == 5
    # Predictions after calibration: 0, 1, 2, 0, 0.2 against truth 0, 1, 2, 0, 0.4.
    assert metrics.rsquared == pytest.approx(1 - (0.2 ** 2 / 5) / ((1 + 4 + 0.16) / 5))
    assert metrics.absolute_dev_explained == pytest.approx(1 - (0.2 / 5) / (3.4 / 5))
    assert metrics.pearson_top == pytest.approx(1.0)
    assert metrics.pearson_random == pytest.approx(1.0)
    assert metrics.pearson == pytest.approx(pearson([0, 1, 2, 0, 0.4], [0, 5, 10, 0, 1]).value)
    assert metrics.ci_low <= metrics.pearson <= metrics.ci_high
    assert metrics.undefined_reason is None and report.undefined == {}


def test_metrics_without_calibration_or_variation_are_nan_with_reasons():
    windows = [scored(1, WindowSplit.SCORE_TOP, [1.0, 2.0], [3.0, 3.0]),
               scored(2, WindowSplit.SCORE_RANDOM, [0.0, 0.0], [0.0, 1.0])]
    report = compute_metrics(windows)
    assert math.isnan(report.metrics.rsquared) and report.undefined["rsquared"] == "no calibrate windows"
    assert report.undefined["pearson_top"] == "simulated activations are constant"
    assert report.undefined["pearson_random"] == "true activations are constant"
    assert not math.isnan(report.metrics.pearson)
    empty = compute_metrics([])
    assert math.isnan(empty.metrics.pearson) and empty.metrics.undefined_reason == "no scored tokens"
    assert math.isnan(empty.metrics.ci_low) and empty.metrics.scored_tokens == 0


def test_bootstrap_matches_naive_resampling_and_is_seeded():
    rng = np.random.default_rng(1)
    windows = [(rng.normal(size=8), rng.normal(size=8)) for _ in range(12)]
    windows = [(true, true + rng.normal(size=8)) for true, _ in windows]
    low, high = bootstrap_interval(windows, samples=500, seed=7)
    assert (low, high) == bootstrap_interval(windows, samples=500, seed=7)
    # The same resamples done the slow way: concatenate the drawn windows and correlate.
    counts = np.random.default_rng(7).multinomial(12, np.full(12, 1 / 12), size=500)
    naive = []
    for row in counts:
        chosen = [index for index, count in enumerate(row) for _ in range(count)]
        naive.append(pearson(np.concatenate([windows[i][0] for i in chosen]),
                             np.concatenate([windows[i][1] for i in chosen])).value)
    assert (low, high) == pytest.approx(tuple(np.percentile(naive, [2.5, 97.5])))
    point = pearson(np.concatenate([w[0] for w in windows]), np.concatenate([w[1] for w in windows])).value
    assert low < point < high


def test_bootstrap_of_one_window_is_the_point_and_of_nothing_is_nan():
    low, high = bootstrap_interval([([0.0, 1.0, 2.0], [0.0, 1.0, 4.0])], samples=50)
    assert low == pytest.approx(high) == pytest.approx(pearson([0, 1, 2], [0, 1, 4]).value)
    assert all(math.isnan(value) for value in bootstrap_interval([], samples=50))
    assert all(math.isnan(value) for value in bootstrap_interval([([1.0, 1.0], [0.0, 1.0])], samples=50))


# --- score_explanation with an in-test simulator -------------------------------------------------------------

STATS = NeuronStats(count=1, mean=0.0, std=1.0, min=0.0, max=1.0, fraction_positive=0.5, quantiles=())


def make_record(neuron: NeuronId = NeuronId(1, 2)) -> NeuronRecord:
    """Neuron firing 1.0 on the token "x": top windows contain x, random windows mostly do not."""
    top = tuple(Window(index, ("a", "x", "b", "x"), (0.0, 1.0, 0.1, 0.8)) for index in range(30))
    random_windows = tuple(Window(100 + index, ("a", "b", "x" if index % 4 == 0 else "c"),
                                  (0.0, 0.1, 1.0 if index % 4 == 0 else 0.0)) for index in range(30))
    return NeuronRecord(neuron=neuron, top_windows=top, random_windows=random_windows, stats=STATS)


class KeywordSimulator(Simulator):
    """Predicts 10 on tokens the explanation names, 0 elsewhere; can fail chosen windows."""

    kind = SimulatorKind.LEXICAL
    backend_name = "none"
    model = "keyword"
    prompt_hash = "none"

    def __init__(self, *, fail_windows_with: str | None = None, needs_fit: bool = False) -> None:
        self.fail_windows_with = fail_windows_with
        self.needs_fit = needs_fit
        self.calls: list[int] = []

    async def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> SimulationResult:
        self.calls.append(len(windows))
        results = []
        for tokens in windows:
            if self.fail_windows_with and self.fail_windows_with in tokens:
                results.append(WindowSimulation(None, "misaligned answer: missing index(es) 2"))
            else:
                values = tuple(1.0 if token in explanation.split() else 0.0 for token in tokens)
                results.append(WindowSimulation(values if self.needs_fit else tuple(10 * v for v in values)))
        return SimulationResult(tuple(results), prompt_tokens=3 * len(windows))


def explanation_for(record: NeuronRecord, text: str, config: SplitConfig = SplitConfig()) -> Explanation:
    split = split_neuron(record, config)
    return Explanation(neuron=record.neuron, text=text, method=ExplainerKind.TOKEN_PAIRS,
                       polarity=Polarity.POSITIVE, explainer_backend="test", explainer_model="test",
                       prompt_hash="p", parameters={}, source_window_ids=tuple(w.window_id for w in split.explain),
                       split_seed=config.seed, created_at="2024-01-01T00:00:00+00:00")


def test_score_explanation_records_every_window_and_metric():
    record = make_record()
    simulator = KeywordSimulator()
    score = asyncio.run(score_explanation(record, explanation_for(record, "x"), simulator))
    assert isinstance(score, Score)
    assert simulator.calls == [30]  # 10 + 10 scored and 5 + 5 calibrate windows in one call
    splits = [window.split for window in score.windows]
    assert splits.count(WindowSplit.SCORE_TOP) == 10 and splits.count(WindowSplit.SCORE_RANDOM) == 10
    assert splits.count(WindowSplit.CALIBRATE_TOP) == 5 and splits.count(WindowSplit.CALIBRATE_RANDOM) == 5
    explained = set(explanation_for(record, "x").source_window_ids)
    assert explained.isdisjoint(window.window_id for window in score.windows)
    # Recompute the primary metric from the stored windows alone.
    stored = [window for window in score.windows if window.split in (WindowSplit.SCORE_TOP, WindowSplit.SCORE_RANDOM)]
    recomputed = pearson([v for w in stored for v in w.true_activations], [v for w in stored for v in w.simulated_activations])
    assert score.metrics.pearson == pytest.approx(recomputed.value) and score.metrics.pearson > 0.9
    assert score.parameters["calibration"]["slope"] > 0 and score.prompt_tokens == 90
    assert score.simulator == SimulatorKind.LEXICAL and score.split_seed == 0


def test_failed_windows_are_reported_and_excluded():
    record = make_record()
    score = asyncio.run(score_explanation(record, "x", KeywordSimulator(fail_windows_with="c")))
    failed = [window for window in score.windows if window.error]
    assert failed and all(window.simulated_activations == () for window in failed)
    assert score.parameters["failed_windows"] == sum(1 for w in failed if w.split == WindowSplit.SCORE_RANDOM)
    assert score.metrics.scored_tokens == 10 * 4 + (10 - score.parameters["failed_windows"]) * 3
    everything_fails = asyncio.run(score_explanation(record, "x", KeywordSimulator(fail_windows_with="a")))
    assert isinstance(everything_fails, Failure) and "every scored window" in everything_fails.reason


def test_scoring_an_explanation_on_its_own_windows_is_refused():
    record = make_record()
    leaked = explanation_for(record, "x", SplitConfig(seed=9))
    with pytest.raises(UserError, match="shown to the explainer"):
        asyncio.run(score_explanation(record, leaked, KeywordSimulator(), config=ScoreConfig(split=SplitConfig(seed=0))))


def test_fitted_simulators_are_mapped_to_the_scale_on_calibrate_windows():
    record = make_record()
    score = asyncio.run(score_explanation(record, "x", KeywordSimulator(needs_fit=True)))
    # Raw feature 1 on "x" where the truth is 1.0 (= 10 on the scale) or 0.8 (= 8); 0 where truth is 0 or 0.1.
    feature_map = score.parameters["feature_map"]
    assert feature_map["slope"] > 5 and -1 < feature_map["intercept"] < 1
    assert max(value for w in score.windows for value in w.simulated_activations) == pytest.approx(
        feature_map["slope"] + feature_map["intercept"])


def test_unrelated_and_empty_explanations_give_nan_not_zero():
    record = make_record()
    score = asyncio.run(score_explanation(record, "nothing here", KeywordSimulator()))
    assert math.isnan(score.metrics.pearson)
    assert score.metrics.undefined_reason == "simulated activations are constant"
    baselines = asyncio.run(compute_baselines(record, KeywordSimulator(), shuffled_explanation="a"))
    assert math.isnan(baselines["empty"]) and baselines["shuffled"] < 0


def test_best_of_n_ranker_uses_calibrate_windows_only():
    record = make_record()
    simulator = KeywordSimulator()
    ranks = asyncio.run(calibrate_ranker(record, simulator)(["x", "a", "zzz"]))
    assert simulator.calls == [10, 10, 10]
    assert ranks[0] > 0.9 and ranks[1] < 0 and math.isnan(ranks[2])


def test_shuffled_explanations_never_keep_their_own():
    explanations = {NeuronId(0, index): f"text {index}" for index in range(7)}
    shuffled = shuffled_explanations(explanations, seed=3)
    assert shuffled == shuffled_explanations(explanations, seed=3)
    assert set(shuffled) == set(explanations)
    assert all(shuffled[neuron] != explanations[neuron] for neuron in explanations)
    assert sorted(shuffled.values()) == sorted(explanations.values())
    assert shuffled_explanations({NeuronId(0, 0): "only"}) == {}


def test_matched_minus_shuffled_gap():
    def score_with(pearson_value: float, shuffled: float | None) -> Score:
        score = asyncio.run(score_explanation(make_record(), "x", KeywordSimulator()))
        metrics = type(score.metrics)(**{**score.metrics.__dict__, "pearson": pearson_value})
        baselines = {} if shuffled is None else {"shuffled": shuffled}
        return type(score)(**{**score.__dict__, "metrics": metrics, "baselines": baselines})

    gap = matched_minus_shuffled([score_with(0.8, 0.1), score_with(0.6, -0.1), score_with(0.9, None),
                                  score_with(float("nan"), 0.0)])
    assert gap.neurons == 2
    assert (gap.matched_mean, gap.shuffled_mean, gap.gap) == pytest.approx((0.7, 0.0, 0.7))
    assert math.isnan(matched_minus_shuffled([]).gap)


def test_score_json_round_trip_keeps_nan_as_null():
    import json

    from neuron_explainer.simulate.serialize import score_from_dict, score_to_dict

    record = make_record()
    score = asyncio.run(score_explanation(record, "nothing", KeywordSimulator()))
    score = type(score)(**{**score.__dict__, "baselines": {"shuffled": float("nan"), "empty": 0.1}})
    text = json.dumps(score_to_dict(score), allow_nan=False)
    data = json.loads(text)
    assert data["type"] == "score" and data["metrics"]["pearson"] is None and data["neuron"] == "1:2"
    back = score_from_dict(data)
    assert math.isnan(back.metrics.pearson) and back.metrics.undefined_reason == score.metrics.undefined_reason
    assert back.windows == score.windows and back.neuron == score.neuron and back.parameters == data["parameters"]
    assert math.isnan(back.baselines["shuffled"]) and back.baselines["empty"] == 0.1


def test_score_explanations_batch_attaches_baselines():
    from neuron_explainer.scoring import score_explanations

    records = {NeuronId(1, index): make_record(NeuronId(1, index)) for index in range(3)}
    texts = {NeuronId(1, 0): "x", NeuronId(1, 1): "a", NeuronId(1, 2): "b"}
    explanations = [explanation_for(records[neuron], text) for neuron, text in texts.items()]
    results: list = []
    summary = asyncio.run(score_explanations(records.__getitem__, explanations, KeywordSimulator(), baselines=True,
                                             concurrency=2, on_result=results.append, progress=False))
    assert (summary.succeeded, summary.failed) == (3, 0) and len(results) == 3
    by_neuron = {result.neuron: result for result in results}
    assert by_neuron[NeuronId(1, 0)].metrics.pearson > 0.9
    assert set(by_neuron[NeuronId(1, 0)].baselines) == {"shuffled", "empty", "lexical_ceiling"}
    # Neuron 1:0's shuffled explanation is "a" or "b": neither names the firing token.
    assert not by_neuron[NeuronId(1, 0)].baselines["shuffled"] > 0.2
