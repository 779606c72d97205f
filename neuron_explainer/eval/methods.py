"""Running one method (explainer x simulator x backend) over neurons of a record store, as the product does.

`run_method` sends the neurons through the nightly run itself (`pipeline.run_pipeline` on the given record store,
into a results database, with the planted stand-in subject lent to the run where SASC reads new text), then reads
the stored explanations and scores back, so the evaluation measures the product rather than a copy of it.
`explain_and_score` runs the same registered explainers and scorer in process, without a database.
`reference_scores` adds what only an evaluation needs: the simulator's score of the true concept (a reference point, not a bound),
of another neuron's explanation (shuffled, the floor) and of an empty explanation, with usage counted apart.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from neuron_explainer.core.event_loop import run_async
from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain.registry import explainer_class
from neuron_explainer.explain.splits import SplitConfig
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity
from neuron_explainer.simulate.registry import simulator_needs
from neuron_explainer.simulate.types import Score, SimulatorKind

logger = logging.getLogger(__name__)

NAN = float("nan")


@dataclass(frozen=True)
class Method:
    """One explainer x simulator x backend combination."""

    explainer: ExplainerKind
    """How explanations are written."""
    simulator: SimulatorKind | None
    """How they are scored; None = the best the backend allows (decided when the backend is built)."""
    llm: str | None = None
    """Backend spec for the LLM-based parts (None when neither explainer nor simulator needs one)."""

    @property
    def needs_llm(self) -> bool:
        """True when the explainer or the simulator calls an LLM (as each declares in its registry)."""
        return explainer_class(self.explainer).needs.llm or simulator_needs(self.simulator).llm

    @property
    def backend_label(self) -> str:
        """The backend as reported (`none` when no LLM is used)."""
        return self.llm if self.needs_llm and self.llm else "none"

    @property
    def simulator_label(self) -> str:
        """The simulator as reported (`default` until the backend decides it)."""
        return self.simulator.value if self.simulator is not None else "default"

    @property
    def label(self) -> str:
        """`explainer / simulator / backend`."""
        return f"{self.explainer.value} / {self.simulator_label} / {self.backend_label}"


def parse_methods(explainers: Sequence[str], simulators: Sequence[str | None],
                  llms: Sequence[str | None]) -> list[Method]:
    """Every combination of the given explainers, simulators and backends (a simulator of None = the best the
    backend allows, lexical without one); UserError for unknown names or a method that needs an LLM without one."""
    from neuron_explainer.llm.factory import parse_backend_spec

    methods: list[Method] = []
    for llm in llms:
        if llm is not None:
            parse_backend_spec(llm)
        for explainer_name in explainers:
            explainer = ExplainerKind(explainer_class(explainer_name).name)
            for simulator_name in simulators:
                simulator: SimulatorKind | None
                if simulator_name is None:
                    simulator = None if llm else SimulatorKind.LEXICAL
                else:
                    simulator_needs(simulator_name)
                    simulator = SimulatorKind(simulator_name)
                method = Method(explainer, simulator, llm)
                if method.needs_llm and not llm:
                    raise UserError(f"{method.explainer.value} / {method.simulator_label} needs an LLM backend "
                                    "(--llm, e.g. local:default or openai:gpt-4o-mini)")
                if method not in methods:
                    methods.append(method)
    return methods


@dataclass(frozen=True)
class Usage:
    """LLM usage of one phase."""

    prompt_tokens: int = 0
    """Prompt tokens."""
    completion_tokens: int = 0
    """Completion tokens."""
    cost_usd: float | None = 0.0
    """Estimated cost; None when some call's model has no price."""
    calls: int = 0
    """LLM calls, cache hits included (0 for results read back from a database, which keeps them per run)."""


def _snapshot(ledger: Any) -> Usage:
    if ledger is None:
        return Usage()
    totals = ledger.totals()
    return Usage(prompt_tokens=totals.prompt_tokens, completion_tokens=totals.completion_tokens,
                 cost_usd=None if totals.unpriced_calls else totals.cost_usd, calls=totals.calls)


@dataclass(frozen=True)
class MethodRun:
    """What one method produced on a set of neurons."""

    method: Method
    """The method."""
    explanations: dict[NeuronId, Explanation | Failure]
    """Per neuron, its explanation or why there is none."""
    scores: dict[NeuronId, Score | Failure]
    """Per explained neuron, its score or why there is none."""
    product_usage: Usage
    """LLM usage of explaining and scoring (what the product spends)."""
    reference_usage: Usage = field(default_factory=Usage)
    """LLM usage of the concept and baseline scores (what only the evaluation spends)."""
    concept_scores: dict[NeuronId, float] = field(default_factory=dict)
    """Pooled Pearson of the true concept description."""
    baselines: dict[NeuronId, dict[str, float]] = field(default_factory=dict)
    """`shuffled` and `empty` pooled Pearson per neuron."""
    seconds: float = 0.0
    """Wall time of the product part."""


class _Context:
    """What an in-process method run lends its explainer and scorer: the records, one backend, the simulator
    and the stand-in subject (an `ExplainResources` and a `ScoreResources`)."""

    def __init__(self, records: Mapping[NeuronId, NeuronRecord], backend: Any, ledger: Any, simulator: Any,
                 method: Method, subject: Any = None) -> None:
        self.records = records
        self.backend = backend
        self.ledger = ledger
        self._simulator = simulator
        self.method = method
        """The method with its simulator decided."""
        self._subject = subject

    def llm(self) -> Any:
        if self.backend is None:
            raise UserError(f"{self.method.label} needs an LLM backend (--llm)")
        return self.backend

    def scoring_llm(self) -> Any:
        return self.llm()

    def simulator(self) -> Any:
        return self._simulator

    def subject(self) -> Any:
        if self._subject is None:
            raise UserError(f"the {self.method.explainer.value} explainer needs a subject that can read synthetic "
                            "texts")
        return self._subject

    def ranker(self, record: NeuronRecord, polarity: Polarity) -> Any:
        from neuron_explainer.scoring import ScoreConfig, calibrate_ranker

        return calibrate_ranker(record, self._simulator, config=ScoreConfig(polarity=polarity))

    def ranker_identity(self) -> list[str]:
        simulator = self._simulator
        return [simulator.kind.value, simulator.backend_name, simulator.model, simulator.prompt_hash]

    async def isolated_ngrams(self, layer: int, config: Any) -> Any:
        raise UserError("in-process evaluation reads in-context n-grams only")

    def weight_view(self, neuron: NeuronId) -> Any:
        raise UserError("the planted suite's neurons have no model weights, so no weight views")

    def report_activity(self, activity: str) -> None:
        """The evaluation's own progress bar counts neurons; a step's activity is not shown."""


async def _with_context(method: Method, records: Mapping[NeuronId, NeuronRecord],
                        body: Callable[[_Context], Any], *, subject: Any = None) -> Any:
    from neuron_explainer.llm import UsageLedger, make_backend
    from neuron_explainer.simulate import make_simulator

    ledger = UsageLedger() if method.needs_llm else None
    backend = make_backend(method.llm, ledger=ledger) if method.needs_llm and method.llm else None
    try:
        simulator = make_simulator(method.simulator, backend)
        return await body(_Context(records, backend, ledger, simulator, replace(method, simulator=simulator.kind),
                                   subject))
    finally:
        if backend is not None:
            await backend.aclose()


async def _explain(context: _Context, method: Method, neurons: Sequence[NeuronId], *, split: SplitConfig,
                   concurrency: int, progress: bool) -> dict[NeuronId, Explanation | Failure]:
    from neuron_explainer.core.units import run_units
    from neuron_explainer.explain import ExplainerSettings

    explainer = explainer_class(method.explainer)(ExplainerSettings(split=split), context)
    results: dict[NeuronId, Explanation | Failure] = {}

    def collect(result: Explanation | Failure) -> None:
        results[result.neuron] = result

    def unit(neuron: NeuronId) -> Callable[[], Any]:
        async def run() -> Explanation | Failure:
            return await explainer.explain(context.records[neuron])
        return run

    await run_units([unit(neuron) for neuron in neurons], concurrency=concurrency, on_result=collect,
                    description=f"explain ({method.explainer.value})", progress=progress)
    return results


async def explain_and_score(method: Method, records: Mapping[NeuronId, NeuronRecord], *,
                            split: SplitConfig = SplitConfig(), subject: Any = None, concurrency: int = 8,
                            progress: bool = False) -> MethodRun:
    """Explain and score every neuron of `records` with `method` through the library calls the run makes.

    `subject` answers SASC's synthetic texts (a `Subject`, or a `PlantedSubject` for planted stores).
    """
    from neuron_explainer.scoring import ScoreConfig, score_explanations

    neurons = sorted(records)

    async def body(context: _Context) -> MethodRun:
        started = time.perf_counter()
        explanations = await _explain(context, method, neurons, split=split, concurrency=concurrency,
                                      progress=progress)
        scores: dict[NeuronId, Score | Failure] = {}

        def collect(result: Score | Failure) -> None:
            scores[result.neuron] = result

        explained = [result for result in explanations.values() if isinstance(result, Explanation)]
        await score_explanations(context.records.__getitem__, explained, context.simulator(),
                                 config=ScoreConfig(split=split), concurrency=concurrency, on_result=collect,
                                 progress=progress)
        return MethodRun(method=context.method, explanations=explanations, scores=scores,
                         product_usage=_snapshot(context.ledger), seconds=time.perf_counter() - started)

    return await _with_context(method, records, body, subject=subject)


def _run_config(method: Method, store: str, neurons: Sequence[NeuronId], *, split: SplitConfig, db: str,
                concurrency: int) -> Any:
    from neuron_explainer.pipeline import RunConfig

    if (split.calibrate_top, split.calibrate_random) != (SplitConfig.calibrate_top, SplitConfig.calibrate_random):
        raise UserError("the nightly run calibrates on the default number of windows; leave calibrate sizes unset")
    llm = {"llm": method.llm} if method.llm else {}
    return RunConfig(db=db, records=store, explainers=(method.explainer.value,),
                     simulator=method.simulator.value if method.simulator else None, seed=split.seed,
                     split_seed=split.seed,
                     explain_windows=split.explain_top, score_top_windows=split.score_top,
                     score_random_windows=split.score_random, neurons=",".join(str(neuron) for neuron in neurons),
                     concurrency=concurrency, **llm)


def _stored_results(db: str, *, model_id: str, neurons: Sequence[NeuronId], method: Method, seed: int
                    ) -> tuple[dict[NeuronId, Explanation | Failure], dict[NeuronId, Score | Failure]]:
    """The newest stored explanation of `method` per neuron (positive side, this split seed) and its newest
    score by the method's simulator (any simulator when it is left to the backend)."""
    from neuron_explainer.db import open_database

    explanations: dict[NeuronId, Explanation | Failure] = {}
    scores: dict[NeuronId, Score | Failure] = {}
    with open_database(db, create=False) as database:
        for neuron in neurons:
            stored = [item for detail in database.neuron_details(neuron, model=model_id)
                      for item in detail.explanations
                      if item.explanation.method is method.explainer and item.explanation.split_seed == seed
                      and item.explanation.polarity is Polarity.POSITIVE]
            if not stored:
                # The reason the run stored with the failure (databases made per method hold one run's results).
                reasons = database.failure_reasons(neuron)
                stage, reason = reasons[0] if reasons else ("explain", "the run stored no explanation")
                explanations[neuron] = Failure(neuron, stage, reason)
                continue
            newest = max(stored, key=lambda item: item.id)
            explanations[neuron] = newest.explanation
            matching = [item for item in newest.scores
                        if method.simulator is None or item.score.simulator is method.simulator]
            if matching:
                scores[neuron] = max(matching, key=lambda item: item.id).score
            else:
                reasons = [item for item in database.failure_reasons(neuron) if item[0] in ("score", "simulate")]
                stage, reason = reasons[0] if reasons else ("score", "the run stored no score")
                scores[neuron] = Failure(neuron, stage, reason)
    return explanations, scores


def _price_of(items: Sequence[Explanation | Score]) -> float | None:
    """Estimated USD of the calls that made these results (in-process and LLM-free ones are free); None when a
    model has no price."""
    from neuron_explainer.llm import PriceTable

    table = PriceTable.load()
    total = 0.0
    for item in items:
        backend, model = ((item.explainer_backend, item.explainer_model) if isinstance(item, Explanation)
                          else (item.simulator_backend, item.simulator_model))
        if backend == "none" or backend.startswith("local:") or item.prompt_tokens + item.completion_tokens == 0:
            continue
        price = table.price(model)
        if price is None:
            return None
        total += price.cost(item.prompt_tokens, item.completion_tokens, 0)
    return total


def _via_pipeline(method: Method, store: str, neurons: Sequence[NeuronId], *, model_id: str, split: SplitConfig,
                  db: str | None, concurrency: int, progress: bool, subject: Any = None) -> MethodRun:
    from neuron_explainer.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix="eval-run-") as scratch:
        url = db or f"sqlite:///{Path(scratch) / 'results.db'}"
        summary = run_pipeline(_run_config(method, store, neurons, split=split, db=url, concurrency=concurrency),
                               progress=progress, subject=subject)
        explanations, scores = _stored_results(url, model_id=model_id, neurons=neurons, method=method,
                                               seed=split.seed)
    made = [item for item in (*explanations.values(), *scores.values()) if isinstance(item, (Explanation, Score))]
    simulators = {item.simulator for item in scores.values() if isinstance(item, Score)}
    resolved = replace(method, simulator=simulators.pop()) if len(simulators) == 1 else method
    usage = Usage(prompt_tokens=sum(item.prompt_tokens for item in made),
                  completion_tokens=sum(item.completion_tokens for item in made), cost_usd=_price_of(made))
    return MethodRun(method=resolved, explanations=explanations, scores=scores, product_usage=usage,
                     seconds=summary.seconds)


async def reference_scores(method: Method, records: Mapping[NeuronId, NeuronRecord],
                           explanations: Mapping[NeuronId, Explanation | Failure], concept_texts: Mapping[NeuronId, str],
                           *, split: SplitConfig, concurrency: int = 8
                           ) -> tuple[dict[NeuronId, float], dict[NeuronId, dict[str, float]], Usage]:
    """Per neuron: the pooled Pearson of its true concept description and its `shuffled` / `empty` baselines, by
    `method`'s simulator on the same split; and the LLM usage these extra scores cost."""
    from neuron_explainer.scoring import ScoreConfig, SimulationScorer, shuffled_explanations

    neurons = sorted(records)
    texts = {neuron: result.text for neuron, result in explanations.items() if isinstance(result, Explanation)}
    shuffled = shuffled_explanations(texts, seed=split.seed)
    quick = ScoreConfig(split=split, bootstrap_samples=0)

    async def body(context: _Context) -> tuple[dict[NeuronId, float], dict[NeuronId, dict[str, float]], Usage]:
        from neuron_explainer.core.units import run_units

        scorer = SimulationScorer(context)
        concept_scores: dict[NeuronId, float] = {}
        baselines: dict[NeuronId, dict[str, float]] = {}

        def unit(neuron: NeuronId) -> Callable[[], Any]:
            async def run() -> tuple[NeuronId, float, dict[str, float]]:
                record = records[neuron]
                concept = await scorer.score(record, concept_texts[neuron], config=quick)
                references = await scorer.baselines(record, config=quick, shuffled_explanation=shuffled.get(neuron))
                return neuron, concept.metrics.pearson if isinstance(concept, Score) else NAN, references
            return run

        def collect(outcome: tuple[NeuronId, float, dict[str, float]]) -> None:
            neuron, concept_scores[neuron], baselines[neuron] = outcome

        await run_units([unit(neuron) for neuron in neurons], concurrency=concurrency, on_result=collect,
                        description="reference scores", progress=False)
        return ({neuron: concept_scores[neuron] for neuron in neurons}, {neuron: baselines[neuron] for neuron in neurons},
                _snapshot(context.ledger))

    return await _with_context(method, records, body)


def run_method(method: Method, store: str, neurons: Sequence[NeuronId], *, split: SplitConfig = SplitConfig(),
               subject: Any = None, concept_texts: Mapping[NeuronId, str] | None = None, db: str | None = None,
               concurrency: int = 8, progress: bool = False) -> MethodRun:
    """Evaluate `method` on `neurons` of the record store at `store`: the product's explanations and scores, and
    with `concept_texts` the concept and baseline scores. Results go to `db` (a temporary database when None)."""
    from neuron_explainer.activations import RecordStore

    opened = RecordStore.open(store)
    records = {neuron: opened.load_neuron(neuron.layer, neuron.neuron) for neuron in neurons}
    run = _via_pipeline(method, store, neurons, model_id=opened.manifest.model_id, split=split, db=db,
                        concurrency=concurrency, progress=progress, subject=subject)
    if concept_texts is None:
        return run
    concept_scores, baselines, usage = run_async(reference_scores(run.method, records, run.explanations, concept_texts,
                                                              split=split, concurrency=concurrency))
    return replace(run, concept_scores=concept_scores, baselines=baselines, reference_usage=usage)


def score_value(result: Score | Failure | None) -> float:
    """The pooled Pearson of a score, NaN for a failure or an undefined score."""
    if isinstance(result, Score) and not math.isnan(result.metrics.pearson):
        return result.metrics.pearson
    return NAN
