"""What the detection and fuzzing scorers produce: per-passage verdicts and classification metrics."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from neuron_explainer.core.neurons import NeuronId


class ScorerKind(str, Enum):
    """How an explanation is scored."""

    SIMULATION = "simulation"
    """Predict every token's activation and correlate (the simulate stage)."""
    DETECTION = "detection"
    """Say which passages, activating or not, the explanation predicts to fire."""
    FUZZING = "fuzzing"
    """Say whether the marked tokens of activating passages are the ones the explanation predicts."""


CLASSIFIER_KINDS = (ScorerKind.DETECTION, ScorerKind.FUZZING)
"""The scorers that classify passages (this package); simulation lives in simulate/ and scoring.py."""


@dataclass(frozen=True)
class ClassifiedPassage:
    """One passage shown to the scorer model, its true label and the model's verdict."""

    window_id: int
    """Record-store window id."""
    label: bool
    """The truth: detection, the neuron fires in the window; fuzzing, the marks sit on firing tokens."""
    marked: tuple[int, ...]
    """Token positions marked in the passage (fuzzing; empty for detection)."""
    prediction: int | None
    """The model's 1 or 0; None when the answer could not be read."""
    probability: float | None
    """The model's probability of 1 from generated-token logprobs, when the backend returns them."""
    error: str | None = None
    """Why there is no verdict."""


@dataclass(frozen=True)
class ClassifierMetrics:
    """Agreement of the verdicts with the labels; NaN where a metric is undefined."""

    accuracy: float
    """Share of answered passages judged right."""
    balanced_accuracy: float
    """Mean of the true-positive and true-negative rates (NaN without both classes)."""
    auroc: float
    """Area under the ROC curve of the probability of 1 (the 0/1 verdict without logprobs); NaN without both
    classes."""
    passages: int
    """Passages shown."""
    answered: int
    """Passages with a readable verdict (the metrics are over these)."""
    positives: int
    """Answered passages whose label is true."""
    auroc_from: str
    """`logprobs` or `verdicts`: what the AUROC ranks by."""
    undefined_reason: str | None = None
    """Why balanced accuracy and AUROC are NaN, else None."""


@dataclass(frozen=True)
class ClassifierScore:
    """A detection or fuzzing score of one explanation of one neuron, with provenance and per-passage verdicts."""

    neuron: NeuronId
    """The neuron."""
    explanation_text: str
    """The explanation tested."""
    scorer: ScorerKind
    """Detection or fuzzing."""
    backend: str
    """Backend spec of the scorer model."""
    model: str
    """Scorer model name."""
    prompt_hash: str
    """Content hash of the scorer's prompt files."""
    split_seed: int
    """Seed of the split whose held-out windows were shown."""
    metrics: ClassifierMetrics
    """All metrics."""
    passages: tuple[ClassifiedPassage, ...]
    """Per-passage labels and verdicts."""
    parameters: dict[str, Any]
    """Every setting that affects the score, JSON-serialisable."""
    created_at: str
    """ISO-8601 UTC timestamp."""
    prompt_tokens: int = 0
    """Prompt tokens spent."""
    completion_tokens: int = 0
    """Completion tokens spent."""
    requests: int = 0
    """LLM requests made (cache hits included)."""
