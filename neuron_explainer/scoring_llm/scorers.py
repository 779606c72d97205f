"""Detection and fuzzing as `Scorer`s in the scoring registry (`SCORERS`), so a run selects them by name."""

from __future__ import annotations

from typing import ClassVar

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.registry import Needs
from neuron_explainer.explain.types import Explanation
from neuron_explainer.scoring import SCORERS, ScoreConfig, Scorer, ScorerIdentity, ScoreResources
from neuron_explainer.scoring_llm.classifier import ClassifierScorer
from neuron_explainer.scoring_llm.types import ClassifierScore, ScorerKind


class _ClassifyingScorer(Scorer):
    """A scorer that asks the scoring LLM to classify passages; its scores are ClassifierScores."""

    kind: ClassVar[ScorerKind]
    needs = Needs(llm=True)

    def __init__(self, resources: ScoreResources) -> None:
        super().__init__(resources)
        self.classifier = ClassifierScorer(self.kind, resources.scoring_llm())

    def identity(self) -> ScorerIdentity:
        backend = self.classifier.backend
        return ScorerIdentity(kind=self.kind.value, parameters=self.classifier.parameters, backend=backend.name,
                              model=backend.model, prompt_hash=self.classifier.prompt_hash)

    async def score(self, record: NeuronRecord, explanation: Explanation | str, *,  # type: ignore[override]
                    config: ScoreConfig) -> ClassifierScore | Failure:
        return await self.classifier.score(record, explanation, split=config.split, polarity=config.polarity)


class DetectionScorer(_ClassifyingScorer):
    """Which held-out passages, firing or not, does the explanation predict to fire?"""

    name = ScorerKind.DETECTION.value
    kind = ScorerKind.DETECTION


class FuzzingScorer(_ClassifyingScorer):
    """Are the marked tokens of firing passages the ones the explanation predicts?"""

    name = ScorerKind.FUZZING.value
    kind = ScorerKind.FUZZING


SCORERS.register(DetectionScorer.name, DetectionScorer)
SCORERS.register(FuzzingScorer.name, FuzzingScorer)
