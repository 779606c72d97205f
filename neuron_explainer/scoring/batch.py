"""Scoring many explanations at once with any registered scorer, each with its baselines when asked (the `score`
command and eval)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.units import BatchSummary, run_units
from neuron_explainer.explain.types import Explanation
from neuron_explainer.scoring.base import Scorer, SimulationScorer
from neuron_explainer.scoring.baselines import shuffled_explanations
from neuron_explainer.scoring.ceiling import LEXICAL_CEILING, lexical_ceiling
from neuron_explainer.scoring.correlation import ScoreConfig
from neuron_explainer.simulate.base import Simulator
from neuron_explainer.simulate.types import Score


async def score_explanations(load_record: Callable[[NeuronId], NeuronRecord], explanations: Sequence[Explanation],
                             simulator: Simulator, *, config: ScoreConfig = ScoreConfig(), baselines: bool = False,
                             concurrency: int = 8, on_result: Callable[[Score | Failure], None],
                             donor_pool: Sequence[Explanation] | None = None,
                             progress: bool = True) -> BatchSummary:
    """`run_scorer` with the simulation scorer over `simulator`."""
    return await run_scorer(load_record, explanations, SimulationScorer(_LentSimulator(simulator)), config=config,
                            baselines=baselines, concurrency=concurrency, on_result=on_result,
                            donor_pool=donor_pool, progress=progress)


async def run_scorer(load_record: Callable[[NeuronId], NeuronRecord], explanations: Sequence[Explanation],
                     scorer: Scorer, *, config: ScoreConfig = ScoreConfig(), baselines: bool = False,
                     concurrency: int = 8, on_result: Callable[[Any], None],
                     donor_pool: Sequence[Explanation] | None = None, progress: bool = True) -> BatchSummary:
    """Score every explanation (each with its own polarity) with `scorer`, one unit of work each; with `baselines`,
    also the shuffled explanation and the empty one, stored in `Score.baselines` (scorers with baselines only). The
    shuffled donor comes from a seeded derangement (per method and polarity) over the neurons of `donor_pool`
    (default: `explanations`), e.g. every explanation of the file the `score` command read, so scoring a selection
    still gives each neuron a donor of its own."""
    shuffled: dict[tuple[str, str, NeuronId], str] = {}
    if baselines:
        groups: dict[tuple[str, str], dict[NeuronId, str]] = {}
        for explanation in (explanations if donor_pool is None else donor_pool):
            groups.setdefault((explanation.method.value, explanation.polarity.value), {}).setdefault(
                explanation.neuron, explanation.text)
        for (method, polarity), texts in groups.items():
            for neuron, text in shuffled_explanations(texts, seed=config.split.seed).items():
                shuffled[(method, polarity, neuron)] = text

    def unit(explanation: Explanation) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            record = load_record(explanation.neuron)
            outcome = await scorer.score(record, explanation, config=config)
            if baselines and isinstance(outcome, Score):
                values = await scorer.baselines(
                    record, config=replace(config, polarity=explanation.polarity),
                    shuffled_explanation=shuffled.get((explanation.method.value, explanation.polarity.value,
                                                       explanation.neuron)))
                outcome = replace(outcome, baselines=values)
            elif isinstance(outcome, Score) and isinstance(scorer, SimulationScorer):
                # A lookup on the explain windows: cheap enough for every simulation score, baselines or not.
                ceiling = lexical_ceiling(record, config=replace(config, polarity=explanation.polarity))
                outcome = replace(outcome, baselines={**outcome.baselines, LEXICAL_CEILING: ceiling})
            return outcome
        return run

    return await run_units([unit(explanation) for explanation in explanations], concurrency=concurrency,
                           on_result=on_result, description="score", progress=progress)


class _LentSimulator:
    """Scorer resources holding only a simulator the caller built."""

    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator

    def simulator(self) -> Simulator:
        return self._simulator

    def llm(self) -> Any:
        raise NotImplementedError("the simulation scorer asks for its simulator only")

    scoring_llm = llm
