"""The scorer interface and its registry: an explanation and a neuron's record in, a Score (or a Failure) out."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.registry import Needs, Registry
from neuron_explainer.explain.types import Explanation
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.scoring.baselines import compute_baselines
from neuron_explainer.scoring.correlation import ScoreConfig, score_explanation
from neuron_explainer.simulate.base import Simulator
from neuron_explainer.simulate.types import Score


class ScoreResources(Protocol):
    """What the code running a scorer lends it; a scorer asks only for what its `needs` declare."""

    def simulator(self) -> Simulator:
        """The run's simulator (built on first use)."""

    def llm(self) -> LLMBackend:
        """The run's explainer LLM backend."""

    def scoring_llm(self) -> LLMBackend:
        """The scoring LLM backend (for scorers that ask an LLM directly, such as detection or fuzzing)."""


@dataclass(frozen=True)
class ScorerIdentity:
    """Everything about a scorer that changes its scores: equal identities mean the same scoring work."""

    kind: str
    """What produced the predictions (the simulator's kind for the simulation scorer)."""
    parameters: dict[str, Any]
    """Settings, JSON-serialisable."""
    backend: str = "none"
    """Backend spec of the LLM used (`none` without one); never a key."""
    model: str = "none"
    """Model name as the backend reports it."""
    prompt_hash: str = "none"
    """Content hash of the prompt files used."""


class Scorer(abc.ABC):
    """Measures how well an explanation predicts a neuron's held-out activations.

    A new scorer (detection, fuzzing, ...) is a subclass in its own module plus one `SCORERS.register` line."""

    name: ClassVar[str]
    """The name users pick it by."""
    needs: ClassVar[Needs] = Needs()
    """What it needs from the run besides a simulator (an LLM, slot distributions)."""

    def __init__(self, resources: ScoreResources) -> None:
        self.resources = resources

    @abc.abstractmethod
    def identity(self) -> ScorerIdentity:
        """What makes its scores (part of the key that lets a run skip finished work)."""

    @abc.abstractmethod
    async def score(self, record: NeuronRecord, explanation: Explanation | str, *,
                    config: ScoreConfig) -> Score | Failure:
        """Score one explanation (an Explanation, or bare text such as a planted concept) on one neuron."""

    async def baselines(self, record: NeuronRecord, *, shuffled_explanation: str | None,
                        config: ScoreConfig) -> dict[str, float]:
        """Reference scores of the same neuron (`shuffled`: another neuron's explanation, `empty`: no text)."""
        return {}


class SimulationScorer(Scorer):
    """Simulates the scored and calibrate windows from the explanation and correlates with the true activations."""

    name = "simulation"

    def __init__(self, resources: ScoreResources) -> None:
        super().__init__(resources)
        self.simulator = resources.simulator()

    def identity(self) -> ScorerIdentity:
        simulator = self.simulator
        return ScorerIdentity(kind=simulator.kind.value, parameters=dict(simulator.parameters),
                              backend=simulator.backend_name, model=simulator.model, prompt_hash=simulator.prompt_hash)

    async def score(self, record: NeuronRecord, explanation: Explanation | str, *,
                    config: ScoreConfig) -> Score | Failure:
        return await score_explanation(record, explanation, self.simulator, config=config)

    async def baselines(self, record: NeuronRecord, *, shuffled_explanation: str | None,
                        config: ScoreConfig) -> dict[str, float]:
        return await compute_baselines(record, self.simulator, shuffled_explanation=shuffled_explanation,
                                       config=config)


SCORERS: Registry[type[Scorer]] = Registry("scorer")
"""Scorer classes by name."""

SCORERS.register(SimulationScorer.name, SimulationScorer)
