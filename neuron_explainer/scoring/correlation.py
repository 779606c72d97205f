"""Scoring one explanation: simulate held-out windows, compare with the true activations, calibrate, bootstrap.

Metrics never raise and never invent a 0: an undefined value is NaN with a reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from neuron_explainer.activations.records import NeuronRecord, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure, FailureKind
from neuron_explainer.explain.api import CandidateRanker
from neuron_explainer.explain.formatting import MAX_SCALED
from neuron_explainer.explain.splits import SplitConfig, check_no_leakage, oriented_record, split_neuron
from neuron_explainer.explain.types import Explanation, Polarity
from neuron_explainer.llm.errors import LLMError, backend_failure
from neuron_explainer.simulate.base import Simulator, WindowSimulation
from neuron_explainer.simulate.types import Metrics, Score, ScoredWindow, WindowSplit

logger = logging.getLogger(__name__)

NAN = float("nan")
SCORE_SPLITS = (WindowSplit.SCORE_TOP, WindowSplit.SCORE_RANDOM)
CALIBRATE_SPLITS = (WindowSplit.CALIBRATE_TOP, WindowSplit.CALIBRATE_RANDOM)


# --- metrics ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correlation:
    """A Pearson correlation, or NaN and why."""

    value: float
    """The correlation, NaN when undefined."""
    undefined_reason: str | None = None
    """Why it is undefined."""


def pearson(true_values: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> Correlation:
    """Pearson correlation; NaN with a reason for empty, single-token or constant inputs."""
    true_array = np.asarray(true_values, dtype=np.float64)
    predicted_array = np.asarray(predicted, dtype=np.float64)
    if true_array.size == 0:
        return Correlation(NAN, "no scored tokens")
    if true_array.size < 2:
        return Correlation(NAN, "fewer than two scored tokens")
    if np.ptp(true_array) == 0:
        return Correlation(NAN, "true activations are constant")
    if np.ptp(predicted_array) == 0:
        return Correlation(NAN, "simulated activations are constant")
    true_centred = true_array - true_array.mean()
    predicted_centred = predicted_array - predicted_array.mean()
    value = float(true_centred @ predicted_centred
                  / math.sqrt(float(true_centred @ true_centred) * float(predicted_centred @ predicted_centred)))
    return Correlation(max(-1.0, min(1.0, value)))


@dataclass(frozen=True)
class LinearMap:
    """`y = slope * x + intercept`."""

    slope: float
    """Multiplier (never negative: a calibration must not turn a wrong explanation into a right one)."""
    intercept: float
    """Offset."""

    def apply(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Map values."""
        return self.slope * np.asarray(values, dtype=np.float64) + self.intercept


def fit_linear(inputs: Sequence[float] | np.ndarray, targets: Sequence[float] | np.ndarray) -> LinearMap | None:
    """Least-squares line from inputs to targets with the slope clamped at 0 (then the target mean);
    None without data."""
    x = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.size == 0:
        return None
    x_centred = x - x.mean()
    variance = float(x_centred @ x_centred)
    slope = float(x_centred @ (y - y.mean())) / variance if variance > 0 else 0.0
    slope = max(slope, 0.0)
    return LinearMap(slope=slope, intercept=float(y.mean() - slope * x.mean()))


def rsquared(true_values: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> float:
    """`1 - mean((t-p)^2) / mean(t^2)`; NaN when empty or every true value is 0."""
    t = np.asarray(true_values, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    denominator = float(np.mean(t * t)) if t.size else 0.0
    if not denominator > 0:
        return NAN
    return 1.0 - float(np.mean((t - p) ** 2)) / denominator


def absolute_dev_explained(true_values: Sequence[float] | np.ndarray,
                           predicted: Sequence[float] | np.ndarray) -> float:
    """`1 - mean|t-p| / mean|t|`; NaN when empty or every true value is 0."""
    t = np.asarray(true_values, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    denominator = float(np.mean(np.abs(t))) if t.size else 0.0
    if not denominator > 0:
        return NAN
    return 1.0 - float(np.mean(np.abs(t - p))) / denominator


def bootstrap_interval(windows: Sequence[tuple[Sequence[float], Sequence[float]]], *, samples: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the pooled Pearson correlation, resampling whole windows with replacement.

    `windows` holds (true, predicted) pairs. Resamples where the correlation is undefined are dropped; NaN when
    there are no windows or every resample is undefined.
    """
    if not windows or samples < 1:
        return NAN, NAN
    all_true = np.concatenate([np.asarray(true, dtype=np.float64) for true, _ in windows])
    all_predicted = np.concatenate([np.asarray(predicted, dtype=np.float64) for _, predicted in windows])
    if all_true.size == 0:
        return NAN, NAN
    true_mean, predicted_mean = all_true.mean(), all_predicted.mean()
    # Per-window sums of centred values: a resample's sums are then a matrix product, not a concatenation.
    sums = np.empty((len(windows), 6))
    for index, (true, predicted) in enumerate(windows):
        t = np.asarray(true, dtype=np.float64) - true_mean
        p = np.asarray(predicted, dtype=np.float64) - predicted_mean
        sums[index] = (t.size, t.sum(), p.sum(), t @ t, p @ p, t @ p)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(windows), np.full(len(windows), 1.0 / len(windows)), size=samples)
    totals = counts @ sums
    n, sum_t, sum_p, sum_tt, sum_pp, sum_tp = totals.T
    with np.errstate(invalid="ignore", divide="ignore"):
        covariance = n * sum_tp - sum_t * sum_p
        true_spread = n * sum_tt - sum_t ** 2
        predicted_spread = n * sum_pp - sum_p ** 2
        # Relative thresholds: a resample of constant windows leaves only rounding noise in the spreads.
        defined = (true_spread > 1e-12 * n * sum_tt) & (predicted_spread > 1e-12 * n * sum_pp)
        correlations = np.where(defined, covariance / np.sqrt(np.where(defined, true_spread * predicted_spread, 1.0)),
                                np.nan)
    finite = correlations[np.isfinite(correlations)]
    if finite.size == 0:
        return NAN, NAN
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(np.clip(finite, -1.0, 1.0), [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class MetricsReport:
    """Metrics plus what is needed to explain them."""

    metrics: Metrics
    """All metrics."""
    calibration: LinearMap | None
    """Simulated (0-10) -> true units, fitted on the calibrate windows; None without calibrate windows."""
    undefined: dict[str, str]
    """Reason per metric that is NaN."""


def compute_metrics(windows: Sequence[ScoredWindow], *, bootstrap_samples: int = 1000,
                    bootstrap_seed: int = 0) -> MetricsReport:
    """Every metric from scored windows (score-* windows are scored, calibrate-* windows fit the calibration;
    windows with an error are left out)."""
    usable = [window for window in windows if window.error is None]
    scored = [window for window in usable if window.split in SCORE_SPLITS]
    calibrate = [window for window in usable if window.split in CALIBRATE_SPLITS]

    def pooled(selected: Sequence[ScoredWindow]) -> tuple[np.ndarray, np.ndarray]:
        true = np.array([value for window in selected for value in window.true_activations], dtype=np.float64)
        predicted = np.array([value for window in selected for value in window.simulated_activations],
                             dtype=np.float64)
        return true, predicted

    undefined: dict[str, str] = {}
    true, predicted = pooled(scored)
    primary = pearson(true, predicted)
    if primary.undefined_reason:
        undefined["pearson"] = primary.undefined_reason
    parts = {}
    for name, split in (("pearson_top", WindowSplit.SCORE_TOP), ("pearson_random", WindowSplit.SCORE_RANDOM)):
        correlation = pearson(*pooled([window for window in scored if window.split == split]))
        parts[name] = correlation.value
        if correlation.undefined_reason:
            undefined[name] = correlation.undefined_reason

    calibrate_true, calibrate_predicted = pooled(calibrate)
    calibration = fit_linear(calibrate_predicted, calibrate_true) if calibrate else None
    if calibration is None:
        calibrated_r2 = calibrated_ade = NAN
        undefined["rsquared"] = undefined["absolute_dev_explained"] = "no calibrate windows"
    else:
        calibrated = calibration.apply(predicted)
        calibrated_r2 = rsquared(true, calibrated)
        calibrated_ade = absolute_dev_explained(true, calibrated)
        for name, value in (("rsquared", calibrated_r2), ("absolute_dev_explained", calibrated_ade)):
            if math.isnan(value):
                undefined[name] = "no scored tokens" if true.size == 0 else "every true activation is 0"

    low, high = bootstrap_interval([(window.true_activations, window.simulated_activations) for window in scored],
                                   samples=bootstrap_samples, seed=bootstrap_seed)
    metrics = Metrics(pearson=primary.value, pearson_top=parts["pearson_top"], pearson_random=parts["pearson_random"],
                      rsquared=calibrated_r2, absolute_dev_explained=calibrated_ade, ci_low=low, ci_high=high,
                      scored_tokens=int(true.size), undefined_reason=primary.undefined_reason)
    return MetricsReport(metrics=metrics, calibration=calibration, undefined=undefined)


# --- scoring an explanation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of scoring; recorded with every score."""

    split: SplitConfig = field(default_factory=SplitConfig)
    """Must match the split the explanation was made with (same seed and score/calibrate sizes)."""
    polarity: Polarity = Polarity.POSITIVE
    """Which side is scored when the explanation is given as text (an Explanation brings its own)."""
    bootstrap_samples: int = 1000
    """Resamples for the 95% interval."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _scale_reference(record: NeuronRecord) -> float:
    """The activation that maps to 10 when fitting raw simulator features: the largest in the top windows."""
    largest = max((value for window in record.top_windows for value in window.activations), default=0.0)
    return largest if largest > 0 else 1.0


def _fit_raw_features(simulated: Sequence[WindowSimulation], windows: Sequence[Window],
                      calibrate_mask: Sequence[bool], reference: float) -> LinearMap:
    """Map a fitted simulator's raw features onto the 0-10 scale using the calibrate windows; with no usable
    fit (no data, no spread, non-positive slope) fall back to `10 * raw`, which keeps the ranking."""
    inputs: list[float] = []
    targets: list[float] = []
    for simulation, window, is_calibrate in zip(simulated, windows, calibrate_mask):
        if is_calibrate and simulation.values is not None:
            inputs.extend(simulation.values)
            targets.extend(MAX_SCALED * max(value, 0.0) / reference for value in window.activations)
    fitted = fit_linear(inputs, targets)
    if fitted is None or not fitted.slope > 0:
        return LinearMap(slope=float(MAX_SCALED), intercept=0.0)
    return fitted


async def score_explanation(record: NeuronRecord, explanation: Explanation | str, simulator: Simulator, *,
                            config: ScoreConfig = ScoreConfig()) -> Score | Failure:
    """Simulate the scored and calibrate windows of one neuron from `explanation` and compute every metric.

    Given an Explanation, its polarity is used and its source windows are checked never to be scored.
    A Failure comes back when there is nothing to score or the simulation failed on every scored window.
    """
    if isinstance(explanation, Explanation):
        text, polarity, explained_ids = explanation.text, explanation.polarity, explanation.source_window_ids
    else:
        text, polarity, explained_ids = explanation, config.polarity, ()
    oriented = oriented_record(record, polarity)
    split = split_neuron(oriented, config.split)
    check_no_leakage(split, explained_ids=explained_ids)
    labelled = ([(window, WindowSplit.SCORE_TOP) for window in split.score_top]
                + [(window, WindowSplit.SCORE_RANDOM) for window in split.score_random]
                + [(window, WindowSplit.CALIBRATE_TOP) for window in split.calibrate_top]
                + [(window, WindowSplit.CALIBRATE_RANDOM) for window in split.calibrate_random])
    if not split.scored:
        return Failure(record.neuron, "score", "the record has no windows left to score")
    windows = [window for window, _ in labelled]
    try:
        result = await simulator.simulate(text, [window.tokens for window in windows])
    except LLMError as exc:
        if exc.stops_run:
            raise
        logger.warning("simulating %s failed: %s", record.neuron, exc)
        return backend_failure(record.neuron, "simulate", "simulator error", exc)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - one neuron's backend failure must not end a night's run
        logger.warning("simulating %s failed: %s", record.neuron, exc)
        return backend_failure(record.neuron, "simulate", "simulator error", exc)
    simulations = list(result.windows)
    for index, (simulation, window) in enumerate(zip(simulations, windows, strict=True)):
        if simulation.values is not None and len(simulation.values) != len(window.tokens):
            simulations[index] = WindowSimulation(None, f"simulator returned {len(simulation.values)} values for "
                                                        f"{len(window.tokens)} tokens")
    feature_map = None
    if simulator.needs_fit:
        feature_map = _fit_raw_features(simulations, windows, [split_name in CALIBRATE_SPLITS
                                                               for _, split_name in labelled],
                                        _scale_reference(oriented))
    scored_windows = []
    for (window, split_name), simulation in zip(labelled, simulations):
        values: tuple[float, ...] = ()
        if simulation.values is not None:
            values = tuple(float(value) for value in (feature_map.apply(simulation.values) if feature_map
                                                      else simulation.values))
        scored_windows.append(ScoredWindow(window_id=window.window_id, split=split_name, tokens=window.tokens,
                                           true_activations=window.activations, simulated_activations=values,
                                           error=simulation.error if simulation.values is None else None))
    failed = [window for window in scored_windows if window.error is not None and window.split in SCORE_SPLITS]
    if len(failed) == len(split.scored):
        # Every window lost to the backend (not to the answers) is the backend's fault: worth a retry next night.
        transient = all(simulation.transient for simulation in simulations if simulation.error is not None)
        return Failure(record.neuron, "simulate", f"simulation failed on every scored window: {failed[0].error}",
                       kind=FailureKind.TRANSIENT if transient else FailureKind.PERMANENT)
    report = compute_metrics(scored_windows, bootstrap_samples=config.bootstrap_samples,
                             bootstrap_seed=config.split.seed)
    parameters: dict[str, object] = {
        **config.split.as_dict(), **simulator.parameters, "polarity": polarity.value,
        "bootstrap_samples": config.bootstrap_samples, "failed_windows": len(failed),
        "failed_calibrate_windows": sum(1 for window in scored_windows
                                        if window.error is not None and window.split in CALIBRATE_SPLITS),
        "undefined": report.undefined}
    if report.calibration is not None:
        parameters["calibration"] = {"slope": report.calibration.slope, "intercept": report.calibration.intercept}
    if feature_map is not None:
        parameters["feature_map"] = {"slope": feature_map.slope, "intercept": feature_map.intercept}
    return Score(neuron=record.neuron, explanation_text=text, simulator=simulator.kind,
                 simulator_backend=simulator.backend_name, simulator_model=simulator.model,
                 prompt_hash=simulator.prompt_hash, split_seed=config.split.seed, metrics=report.metrics,
                 windows=tuple(scored_windows), parameters=parameters, created_at=_now(),
                 prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)


def calibrate_ranker(record: NeuronRecord, simulator: Simulator, *, config: ScoreConfig = ScoreConfig()
                     ) -> CandidateRanker:
    """A ranker for best-of-n explanation: pooled Pearson of each candidate on the calibrate windows only
    (never the scored ones, so picking the best does not inflate the score)."""
    split = split_neuron(oriented_record(record, config.polarity), config.split)
    windows = split.calibrate

    async def rank(texts: Sequence[str]) -> list[float]:
        if not windows:
            return [NAN] * len(texts)

        async def one(text: str) -> float:
            result = await simulator.simulate(text, [window.tokens for window in windows])
            true: list[float] = []
            predicted: list[float] = []
            for simulation, window in zip(result.windows, windows):
                if simulation.values is not None and len(simulation.values) == len(window.tokens):
                    true.extend(window.activations)
                    predicted.extend(simulation.values)
            return pearson(true, predicted).value

        return list(await asyncio.gather(*(one(text) for text in texts)))

    return rank
