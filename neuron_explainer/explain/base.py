"""The explainer interface: what an explainer declares, what a run lends it, and what it must answer."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.activations.weight_views import NeuronWeightView
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.registry import Needs
from neuron_explainer.explain.api import CandidateRanker
from neuron_explainer.explain.ngrams import LayerNgramResponses, NgramConfig, NgramMode
from neuron_explainer.explain.splits import SplitConfig
from neuron_explainer.explain.types import Explanation, Polarity
from neuron_explainer.llm.base import LLMBackend

class ExplainResources(Protocol):
    """What the code running an explainer lends it; an explainer asks only for what its `needs` declare."""

    def llm(self) -> LLMBackend:
        """The explainer LLM backend (built on first use, shared with the rest of the run)."""

    def subject(self) -> Any:
        """The subject model (or an in-process stand-in, such as the planted evaluation's) that reads new text."""

    def ranker(self, record: NeuronRecord, polarity: Polarity) -> CandidateRanker:
        """Ranks best-of-n candidates of one neuron (by simulation on its calibrate windows)."""

    def ranker_identity(self) -> list[str]:
        """What the ranker is (kind, backend, model, prompt hash), part of best-of-n work's identity."""

    async def isolated_ngrams(self, layer: int, config: NgramConfig) -> LayerNgramResponses:
        """Every neuron of `layer`'s response to each corpus n-gram read alone (one cached sweep)."""

    def weight_view(self, neuron: NeuronId) -> NeuronWeightView | None:
        """The neuron's weight view from the record store (None when its layer has none)."""

    def report_activity(self, activity: str) -> None:
        """Tell whoever watches the run what a long step is doing now (shown by the CLI's progress bar)."""


@dataclass(frozen=True)
class ExplainerSettings:
    """The settings every explainer is built with (each uses those that apply to it)."""

    split: SplitConfig = field(default_factory=SplitConfig)
    """Which windows are explained (and, by exclusion, scored)."""
    polarity: Polarity = Polarity.POSITIVE
    """The side of the neuron explained."""
    candidates: int = 1
    """Explanations drawn per neuron (best-of-n on the calibrate split, where the explainer supports it)."""
    ngram_mode: NgramMode = NgramMode.IN_CONTEXT
    """Where n-gram based explainers read n-gram responses."""
    with_weights: bool = False
    """Also show the neuron's weight views to the explainer (token-pairs)."""


@dataclass(frozen=True)
class ExplainerIdentity:
    """Everything about an explainer that changes its text: equal identities mean the same explanation work."""

    parameters: dict[str, Any]
    """Settings, JSON-serialisable."""
    backend: str = "none"
    """Backend spec of the LLM used (`none` for LLM-free explainers); never a key."""
    model: str = "none"
    """Model name as the backend reports it."""
    prompt_hash: str = "none"
    """Content hash of the prompt files used."""


class Explainer(abc.ABC):
    """Turns one neuron's record into an Explanation, or a Failure saying why not.

    A new explainer is a subclass in its own module plus one line in `explain.registry`."""

    name: ClassVar[str]
    """The name users pick it by (`--explainer NAME`) and results store as their method."""
    needs: ClassVar[Needs] = Needs()
    """What it needs from the run (an LLM, the subject model)."""

    def __init__(self, settings: ExplainerSettings, resources: ExplainResources) -> None:
        self.settings = settings
        self.resources = resources

    @abc.abstractmethod
    def identity(self) -> ExplainerIdentity:
        """What makes its explanations (stored with them, and the key that lets a run skip finished work)."""

    @abc.abstractmethod
    async def explain(self, record: NeuronRecord) -> Explanation | Failure:
        """Explain one neuron."""
