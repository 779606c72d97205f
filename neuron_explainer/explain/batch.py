"""Explaining many neurons concurrently through the shared unit-of-work runner (`core.units.run_units`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.units import BatchSummary, run_units
from neuron_explainer.explain.api import CandidateRanker, ExplainConfig, explain_neuron
from neuron_explainer.explain.types import Explanation, Polarity
from neuron_explainer.llm.base import LLMBackend

RankerFactory = Callable[[NeuronRecord, Polarity], CandidateRanker]
"""Builds the best-of-n ranker of one neuron and polarity (see `neuron_explainer.scoring.calibrate_ranker`)."""


async def explain_neurons(load_record: Callable[[NeuronId], NeuronRecord], neurons: Sequence[NeuronId],
                          backend: LLMBackend, *, config: ExplainConfig = ExplainConfig(),
                          polarities: Sequence[Polarity] = (Polarity.POSITIVE,),
                          ranker_factory: RankerFactory | None = None, concurrency: int = 8,
                          on_result: Callable[[Explanation | Failure], None], progress: bool = True) -> BatchSummary:
    """Explain every neuron for every polarity; `ranker_factory` is required when `config.candidates > 1`."""
    def unit(neuron: NeuronId, polarity: Polarity) -> Callable[[], Awaitable[Explanation | Failure]]:
        async def run() -> Explanation | Failure:
            record = load_record(neuron)
            unit_config = replace(config, polarity=polarity)
            ranker = ranker_factory(record, polarity) if ranker_factory and config.candidates > 1 else None
            return await explain_neuron(record, backend, config=unit_config, ranker=ranker)
        return run

    units = [unit(neuron, polarity) for neuron in neurons for polarity in polarities]
    return await run_units(units, concurrency=concurrency, on_result=on_result, description="explain",
                           progress=progress)
