"""`eval planted`: how well each method recovers neurons whose concept is known.

Build (or reuse) the planted record store, run every requested explainer x simulator x backend on it through the
nightly run, and report per method: recovery rate (the checker passes), mean and median
score, the concept score (the true concept description's score: a reference, not a bound), the floors (shuffled and empty explanations), tokens and cost per
neuron, and the same per category, so it shows where cheap methods fail.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.eval.methods import Method, MethodRun, Usage, run_method, score_value
from neuron_explainer.eval.store import PLANTED_LAYER, PlantedRecordingConfig, PlantedSubject, build_planted_store
from neuron_explainer.eval.suite import PlantedSuite, load_suite
from neuron_explainer.eval.tables import clip, json_ready, number, percent, table
from neuron_explainer.explain.splits import SplitConfig
from neuron_explainer.explain.types import Explanation
from neuron_explainer.simulate.types import Score

NAN = float("nan")
GOOD_SCORE = 0.7
"""A recovered neuron counts as well explained above this pooled Pearson score."""


@dataclass(frozen=True)
class PlantedEvalConfig:
    """Everything `eval planted` needs."""

    methods: tuple[Method, ...]
    """Explainer x simulator x backend combinations to evaluate."""
    planted: str | None = None
    """Suite file (None: the built-in suite)."""
    recording: PlantedRecordingConfig = field(default_factory=PlantedRecordingConfig)
    """How the planted store is made."""
    store: str | None = None
    """Where the planted store is written (None: under the cache, named by its identity)."""
    limit: int | None = None
    """Evaluate only the first N (selected) neurons."""
    only: tuple[str, ...] = ()
    """Evaluate only these neurons or categories (all when empty)."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """Window split (explain / score; calibration sizes stay at the nightly run's defaults)."""
    db: str | None = None
    """Results database the run writes (None: a temporary one per method)."""
    concurrency: int = 8
    """Neurons processed at once."""
    good_score: float = GOOD_SCORE
    """Score above which a recovered neuron counts as well explained."""


@dataclass(frozen=True)
class NeuronResult:
    """One planted neuron under one method."""

    name: str
    """Planted neuron name."""
    category: str
    """Its category."""
    neuron: str
    """`layer:index` in the planted store."""
    concept: str
    """The true concept."""
    explanation: str | None
    """The method's explanation (None on failure)."""
    failure: str | None
    """Why there is no explanation or score."""
    recovered: bool
    """The checker passes the explanation."""
    matched: tuple[str, ...]
    """What in the explanation made the checker pass."""
    score: float
    """Pooled Pearson of the explanation (NaN when undefined)."""
    score_top: float
    """Pearson over held-out top windows."""
    score_random: float
    """Pearson over random windows."""
    concept_score: float
    """Pooled Pearson of the true concept description with the same simulator: a reference point, not a bound
    (an explanation that describes the activations better than the planted wording can score above it)."""
    shuffled: float
    """Pooled Pearson of another planted neuron's explanation."""
    empty: float
    """Pooled Pearson of an empty explanation."""
    prompt_tokens: int
    """Tokens spent explaining and scoring this neuron (prompt)."""
    completion_tokens: int
    """Tokens spent explaining and scoring this neuron (completion)."""


@dataclass(frozen=True)
class GroupSummary:
    """Aggregates over a set of neuron results (a method's, or one category's)."""

    neurons: int
    """Neurons evaluated."""
    explained: int
    """Neurons with an explanation."""
    undefined: int
    """Explained neurons whose score is undefined (e.g. the simulator predicted a constant)."""
    recovered: int
    """Neurons whose explanation passes the checker."""
    recovery_rate: float
    """recovered / neurons."""
    good: int
    """Recovered neurons scoring above the good-score threshold."""
    good_rate: float
    """good / neurons."""
    mean_score: float
    """Mean pooled Pearson over defined scores."""
    median_score: float
    """Median pooled Pearson over defined scores."""
    concept_mean: float
    """Mean score of the true concept descriptions (a reference, not a bound)."""
    concept_median: float
    """Median score of the true concept descriptions."""
    above_concept: int
    """Explained neurons whose explanation scores above their true concept description."""
    failures: dict[str, int]
    """Neurons without a score, counted by failure reason."""
    shuffled_mean: float
    """Mean score of shuffled explanations."""
    empty_mean: float
    """Mean score of empty explanations."""


@dataclass(frozen=True)
class MethodReport:
    """One method's results."""

    explainer: str
    """Explainer."""
    simulator: str
    """Simulator."""
    backend: str
    """LLM backend (`none` without one)."""
    summary: GroupSummary
    """Over all neurons."""
    categories: dict[str, GroupSummary]
    """Per category, in suite order."""
    prompt_tokens_per_neuron: float
    """Mean prompt tokens of explaining + scoring one neuron."""
    completion_tokens_per_neuron: float
    """Mean completion tokens of explaining + scoring one neuron."""
    cost_per_neuron_usd: float | None
    """Mean estimated cost per neuron (None when the model has no price)."""
    seconds_per_neuron: float
    """Wall time of explaining + scoring, per neuron."""
    reference_tokens: int
    """Tokens the evaluation itself spent (concept and baseline scores), not counted above."""
    neurons: tuple[NeuronResult, ...]
    """Per neuron."""


@dataclass(frozen=True)
class PlantedReport:
    """The whole evaluation."""

    suite: str
    """Suite name."""
    suite_source: str
    """Suite file."""
    suite_hash: str
    """Content hash of the suite."""
    store: str
    """The planted record store used."""
    windows: int
    """Windows in the store."""
    tokenizer: str
    """Tokenizer that cut the windows."""
    corpus: str
    """Corpus."""
    good_score: float
    """The good-score threshold."""
    methods: tuple[MethodReport, ...]
    """One per method."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""
        return json_ready(asdict(self))


def _mean(values: Sequence[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.fmean(finite) if finite else NAN


def _median(values: Sequence[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    return statistics.median(finite) if finite else NAN


def summarise(results: Sequence[NeuronResult], *, good_score: float = GOOD_SCORE) -> GroupSummary:
    """Aggregates over neuron results."""
    count = len(results)
    recovered = sum(result.recovered for result in results)
    good = sum(result.recovered and result.score > good_score for result in results)
    return GroupSummary(
        neurons=count, explained=sum(result.explanation is not None for result in results),
        undefined=sum(result.explanation is not None and not math.isfinite(result.score) for result in results),
        recovered=recovered,
        recovery_rate=recovered / count if count else NAN, good=good, good_rate=good / count if count else NAN,
        mean_score=_mean([result.score for result in results]),
        median_score=_median([result.score for result in results]),
        concept_mean=_mean([result.concept_score for result in results]),
        concept_median=_median([result.concept_score for result in results]),
        above_concept=sum(math.isfinite(result.score) and math.isfinite(result.concept_score)
                          and result.score > result.concept_score for result in results),
        failures=dict(Counter(result.failure for result in results if result.failure is not None)),
        shuffled_mean=_mean([result.shuffled for result in results]),
        empty_mean=_mean([result.empty for result in results]))


def method_report(run: MethodRun, suite: PlantedSuite, indices: Sequence[int], *,
                  good_score: float = GOOD_SCORE) -> MethodReport:
    """Turn one method's run on the planted neurons at `indices` of the suite into its report."""
    results = []
    for index in indices:
        planted = suite.neurons[index]
        neuron = NeuronId(PLANTED_LAYER, index)
        explained = run.explanations.get(neuron)
        scored = run.scores.get(neuron)
        text = explained.text if isinstance(explained, Explanation) else None
        failure = None
        if isinstance(explained, Failure):
            failure = f"explain: {explained.reason}"
        elif isinstance(scored, Failure):
            failure = f"score: {scored.reason}"
        elif explained is None:
            failure = "not run"
        matched = tuple(planted.checker.matched(text)) if text is not None else ()
        metrics = scored.metrics if isinstance(scored, Score) else None
        baselines = run.baselines.get(neuron, {})
        tokens = [item for item in (explained, scored) if isinstance(item, (Explanation, Score))]
        results.append(NeuronResult(
            name=planted.name, category=planted.category, neuron=str(neuron), concept=planted.concept,
            explanation=text, failure=failure, recovered=bool(matched), matched=matched, score=score_value(scored),
            score_top=metrics.pearson_top if metrics else NAN, score_random=metrics.pearson_random if metrics else NAN,
            concept_score=run.concept_scores.get(neuron, NAN), shuffled=baselines.get("shuffled", NAN),
            empty=baselines.get("empty", NAN), prompt_tokens=sum(item.prompt_tokens for item in tokens),
            completion_tokens=sum(item.completion_tokens for item in tokens)))
    categories: dict[str, list[NeuronResult]] = {}
    for result in results:
        categories.setdefault(result.category, []).append(result)
    count = max(len(results), 1)
    usage: Usage = run.product_usage
    return MethodReport(
        explainer=run.method.explainer.value, simulator=run.method.simulator_label,
        backend=run.method.backend_label, summary=summarise(results, good_score=good_score),
        categories={name: summarise(items, good_score=good_score) for name, items in categories.items()},
        prompt_tokens_per_neuron=usage.prompt_tokens / count,
        completion_tokens_per_neuron=usage.completion_tokens / count,
        cost_per_neuron_usd=None if usage.cost_usd is None else usage.cost_usd / count,
        seconds_per_neuron=run.seconds / count,
        reference_tokens=run.reference_usage.prompt_tokens + run.reference_usage.completion_tokens,
        neurons=tuple(results))


def run_planted_eval(config: PlantedEvalConfig, *, progress: bool = False) -> PlantedReport:
    """Build the planted store and evaluate every method on it."""
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.eval.store import load_tokenizer

    suite = load_suite(config.planted)
    indices = suite.select(limit=config.limit, only=config.only)
    tokenizer = load_tokenizer(config.recording.tokenizer)
    # The store always holds the whole suite, so a selection reuses the same recording.
    planted = build_planted_store(suite, config.recording, out_dir=config.store, tokenizer=tokenizer,
                                  progress=progress)
    store = RecordStore.open(planted.path)
    neurons = [NeuronId(PLANTED_LAYER, index) for index in indices]
    concepts = {neuron: suite.neurons[neuron.neuron].concept for neuron in neurons}
    subject = PlantedSubject(suite, tokenizer)
    reports = []
    for method in config.methods:
        run = run_method(method, str(planted.path), neurons, split=config.split, subject=subject,
                         concept_texts=concepts, db=config.db, concurrency=config.concurrency, progress=progress)
        reports.append(method_report(run, suite, indices, good_score=config.good_score))
    return PlantedReport(
        suite=suite.name, suite_source=suite.source, suite_hash=suite.content_hash[:16], store=str(planted.path),
        windows=store.num_windows, tokenizer=config.recording.tokenizer, corpus=config.recording.corpus,
        good_score=config.good_score, methods=tuple(reports))


# --- text output -------------------------------------------------------------------------------------------


def format_planted_report(report: PlantedReport, *, neurons: bool = False) -> str:
    """The report as text tables: one row per method, then recovery and score per category (and per neuron)."""
    lines = [f"planted suite {report.suite} ({report.suite_source}), store {report.store}: {report.windows} "
             f"windows of {report.corpus} cut by the {report.tokenizer} tokenizer", ""]
    header = ["explainer", "simulator", "backend", "neurons", "explained", "recovered",
              f"good(>{report.good_score:g})", "mean", "median", "undefined", "concept", ">concept", "shuffled",
              "empty", "tokens/neuron", "usd/neuron", "s/neuron"]
    rows = []
    for method in report.methods:
        summary = method.summary
        cost = "-" if method.cost_per_neuron_usd is None else f"{method.cost_per_neuron_usd:.5f}"
        rows.append([method.explainer, method.simulator, method.backend, str(summary.neurons),
                     str(summary.explained), percent(summary.recovery_rate), percent(summary.good_rate),
                     number(summary.mean_score), number(summary.median_score), str(summary.undefined),
                     number(summary.concept_mean), str(summary.above_concept),
                     number(summary.shuffled_mean),
                     number(summary.empty_mean),
                     f"{method.prompt_tokens_per_neuron + method.completion_tokens_per_neuron:.0f}", cost,
                     number(method.seconds_per_neuron)])
    lines += table(header, rows)
    lines += ["", "concept: the same simulator's score of the true concept description, a reference point and not "
              "a bound (>concept counts explanations scoring above it)"]
    for method in report.methods:
        for reason, count in sorted(method.summary.failures.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"not scored ({method.explainer} / {method.simulator}): {count} x {reason}")
    for method in report.methods:
        lines += ["", f"by category: {method.explainer} / {method.simulator} / {method.backend}"]
        category_rows = [[name, str(group.neurons), str(group.explained), percent(group.recovery_rate),
                          percent(group.good_rate), number(group.mean_score), number(group.concept_mean),
                          number(group.shuffled_mean)]
                         for name, group in method.categories.items()]
        lines += table(["category", "neurons", "explained", "recovered", "good", "mean", "concept", "shuffled"],
                       category_rows)
        if neurons:
            neuron_rows = [[result.name, result.category, "yes" if result.recovered else "no",
                            number(result.score), number(result.concept_score),
                            clip(result.explanation if result.explanation is not None else f"({result.failure})")]
                           for result in method.neurons]
            lines += [""] + table(["neuron", "category", "recovered", "score", "concept", "explanation"],
                                   neuron_rows)
    return "\n".join(lines)
