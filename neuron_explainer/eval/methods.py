"""Running one method (explainer x simulator x backend) over neurons of a record store, as the product does.

`explain_and_score` is the product path: the same explain and score library calls the `explain` / `score`
commands and the nightly run make, on the same record store format, so the evaluation measures the product
rather than a copy of it. `reference_scores` adds what only an evaluation needs: the simulator's score of the
true concept (the ceiling), of another neuron's explanation (shuffled, the floor) and of an empty explanation.
Token counts and cost come from the backend's usage ledger, measured separately for the product's calls and for
the evaluation's extra calls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.errors import UserError
from neuron_explainer.explain.splits import SplitConfig
from neuron_explainer.explain.types import ExplainerKind, Explanation, Failure
from neuron_explainer.simulate.types import Score, SimulatorKind
from neuron_explainer.subject.neurons import NeuronId

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
        """True when the explainer or the simulator calls an LLM."""
        return (self.explainer in (ExplainerKind.TOKEN_PAIRS, ExplainerKind.SASC)
                or self.simulator in (None, SimulatorKind.ALL_AT_ONCE, SimulatorKind.GENERATED))

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
            try:
                explainer = ExplainerKind(explainer_name)
            except ValueError:
                names = ", ".join(kind.value for kind in ExplainerKind)
                raise UserError(f"unknown explainer {explainer_name!r}: choose one of {names}") from None
            for simulator_name in simulators:
                simulator: SimulatorKind | None
                if simulator_name is None:
                    simulator = None if llm else SimulatorKind.LEXICAL
                else:
                    try:
                        simulator = SimulatorKind(simulator_name)
                    except ValueError:
                        names = ", ".join(kind.value for kind in SimulatorKind)
                        raise UserError(f"unknown simulator {simulator_name!r}: choose one of {names}") from None
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
    """LLM calls (cache hits included)."""

    def minus(self, other: "Usage") -> "Usage":
        """This cumulative usage less an earlier snapshot."""
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd - other.cost_usd
        return Usage(self.prompt_tokens - other.prompt_tokens, self.completion_tokens - other.completion_tokens,
                     cost, self.calls - other.calls)


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
    """LLM usage of the ceiling and baseline scores (what only the evaluation spends)."""
    ceilings: dict[NeuronId, float] = field(default_factory=dict)
    """Pooled Pearson of the true concept description."""
    baselines: dict[NeuronId, dict[str, float]] = field(default_factory=dict)
    """`shuffled` and `empty` pooled Pearson per neuron."""
    seconds: float = 0.0
    """Wall time of the product part."""


@dataclass
class _Context:
    """What a method run shares: records, backend, simulator."""

    records: Mapping[NeuronId, NeuronRecord]
    backend: Any
    ledger: Any
    simulator: Any
    method: Method
    """The method with its simulator decided."""


async def _with_context(method: Method, records: Mapping[NeuronId, NeuronRecord],
                        body: Callable[[_Context], Any]) -> Any:
    from neuron_explainer.llm import UsageLedger, make_backend
    from neuron_explainer.simulate import make_simulator

    ledger = UsageLedger() if method.needs_llm else None
    backend = make_backend(method.llm, ledger=ledger) if method.needs_llm and method.llm else None
    try:
        simulator = make_simulator(method.simulator, backend)
        return await body(_Context(records=records, backend=backend, ledger=ledger, simulator=simulator,
                                   method=replace(method, simulator=simulator.kind)))
    finally:
        if backend is not None:
            await backend.aclose()


async def _explain(context: _Context, method: Method, neurons: Sequence[NeuronId], *, split: SplitConfig,
                   subject: Any, concurrency: int, progress: bool) -> dict[NeuronId, Explanation | Failure]:
    from neuron_explainer.explain import ExplainConfig, explain_ngram, explain_sasc
    from neuron_explainer.explain.batch import explain_neurons, run_units
    from neuron_explainer.explain.ngrams import in_context_ngrams_for_record

    results: dict[NeuronId, Explanation | Failure] = {}

    def collect(result: Explanation | Failure) -> None:
        results[result.neuron] = result

    if method.explainer is ExplainerKind.TOKEN_PAIRS:
        await explain_neurons(context.records.__getitem__, neurons, context.backend,
                              config=ExplainConfig(split=split), concurrency=concurrency, on_result=collect,
                              progress=progress)
    elif method.explainer is ExplainerKind.NGRAM:
        for neuron in neurons:
            collect(explain_ngram(in_context_ngrams_for_record(context.records[neuron], split=split),
                                  split_seed=split.seed))
    else:
        if subject is None:
            raise UserError("the sasc explainer needs a subject that can read synthetic texts")

        def unit(neuron: NeuronId) -> Callable[[], Any]:
            async def run() -> Explanation | Failure:
                ngrams = in_context_ngrams_for_record(context.records[neuron], split=split)
                return await explain_sasc(ngrams, subject, context.backend, split_seed=split.seed)
            return run

        await run_units([unit(neuron) for neuron in neurons], concurrency=concurrency, on_result=collect,
                        description="explain (sasc)", progress=progress)
    return results


async def explain_and_score(method: Method, records: Mapping[NeuronId, NeuronRecord], *,
                            split: SplitConfig = SplitConfig(), subject: Any = None, concept_texts:
                            Mapping[NeuronId, str] | None = None, concurrency: int = 8,
                            progress: bool = False) -> MethodRun:
    """Explain and score every neuron of `records` with `method`; with `concept_texts`, also score each neuron's
    true concept (ceiling), another neuron's explanation (shuffled) and an empty explanation.

    `subject` answers SASC's synthetic texts (a `Subject`, or a `PlantedSubject` for planted stores).
    """
    from neuron_explainer.scoring import (ScoreConfig, compute_baselines, score_explanation, score_explanations,
                                          shuffled_explanations)

    neurons = sorted(records)
    score_config = ScoreConfig(split=split)

    async def body(context: _Context) -> MethodRun:
        started = time.perf_counter()
        explanations = await _explain(context, method, neurons, split=split, subject=subject,
                                      concurrency=concurrency, progress=progress)
        scores: dict[NeuronId, Score | Failure] = {}

        def collect(result: Score | Failure) -> None:
            scores[result.neuron] = result

        explained = [result for result in explanations.values() if isinstance(result, Explanation)]
        await score_explanations(context.records.__getitem__, explained, context.simulator, config=score_config,
                                 concurrency=concurrency, on_result=collect, progress=progress)
        seconds = time.perf_counter() - started
        product = _snapshot(context.ledger)
        if concept_texts is None:
            return MethodRun(method=context.method, explanations=explanations, scores=scores,
                             product_usage=product, seconds=seconds)

        shuffled = shuffled_explanations({result.neuron: result.text for result in explained}, seed=split.seed)
        quick = replace(score_config, bootstrap_samples=0)
        semaphore = asyncio.Semaphore(max(1, concurrency))

        async def references(neuron: NeuronId) -> tuple[NeuronId, float, dict[str, float]]:
            async with semaphore:
                record = context.records[neuron]
                ceiling = await score_explanation(record, concept_texts[neuron], context.simulator, config=quick)
                baselines = await compute_baselines(record, context.simulator, config=quick,
                                                    shuffled_explanation=shuffled.get(neuron))
                return neuron, ceiling.metrics.pearson if isinstance(ceiling, Score) else NAN, baselines

        outcomes = await asyncio.gather(*(references(neuron) for neuron in neurons))
        return MethodRun(method=context.method, explanations=explanations, scores=scores, product_usage=product,
                         reference_usage=_snapshot(context.ledger).minus(product),
                         ceilings={neuron: ceiling for neuron, ceiling, _ in outcomes},
                         baselines={neuron: baselines for neuron, _, baselines in outcomes}, seconds=seconds)

    return await _with_context(method, records, body)


def score_value(result: Score | Failure | None) -> float:
    """The pooled Pearson of a score, NaN for a failure or an undefined score."""
    if isinstance(result, Score) and not math.isnan(result.metrics.pearson):
        return result.metrics.pearson
    return NAN
