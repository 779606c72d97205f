"""Explaining many neurons concurrently, with a progress bar; results are handed to a callback as they finish."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.explain.api import CandidateRanker, ExplainConfig, explain_neuron
from neuron_explainer.explain.types import Explanation, Failure, Polarity
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.subject.neurons import NeuronId

ResultT = TypeVar("ResultT")

RankerFactory = Callable[[NeuronRecord, Polarity], CandidateRanker]
"""Builds the best-of-n ranker of one neuron and polarity (see `neuron_explainer.scoring.calibrate_ranker`)."""


@dataclass(frozen=True)
class BatchSummary:
    """Counts of a batch run."""

    succeeded: int
    """Units that produced a result."""
    failed: int
    """Units that produced a Failure."""
    prompt_tokens: int
    """Prompt tokens spent."""
    completion_tokens: int
    """Completion tokens spent."""


async def run_units(units: Sequence[Callable[[], Awaitable[ResultT]]], *, concurrency: int,
                    on_result: Callable[[ResultT], None], description: str, progress: bool = True) -> BatchSummary:
    """Await every unit with at most `concurrency` in flight, calling `on_result` as each finishes (in the
    event loop thread, so the callback may write a file without locking); returns the counts (a Failure is a
    failed unit, anything else a success whose `prompt_tokens` / `completion_tokens` are added up)."""
    from tqdm import tqdm

    semaphore = asyncio.Semaphore(max(1, concurrency))
    counts = {"succeeded": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}

    async def guarded(unit: Callable[[], Awaitable[ResultT]]) -> ResultT:
        async with semaphore:
            return await unit()

    with tqdm(total=len(units), desc=description, unit="neuron", disable=not progress) as bar:
        for finished in asyncio.as_completed([guarded(unit) for unit in units]):
            result = await finished
            if isinstance(result, Failure):
                counts["failed"] += 1
            else:
                counts["succeeded"] += 1
                counts["prompt_tokens"] += getattr(result, "prompt_tokens", 0)
                counts["completion_tokens"] += getattr(result, "completion_tokens", 0)
            on_result(result)
            bar.update(1)
    return BatchSummary(**counts)


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
