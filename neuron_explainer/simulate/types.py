"""What a simulator returns and what scoring produces from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.registry import Name


class SimulatorKind(Name):
    """How predicted activations are produced from an explanation: the name of a simulator (see `simulate.registry`)."""

    __slots__ = ()
    ALL_AT_ONCE: ClassVar[SimulatorKind]
    GENERATED: ClassVar[SimulatorKind]
    LEXICAL: ClassVar[SimulatorKind]
    EMBEDDING: ClassVar[SimulatorKind]


SimulatorKind.ALL_AT_ONCE = SimulatorKind("all-at-once")
SimulatorKind.GENERATED = SimulatorKind("generated")
SimulatorKind.LEXICAL = SimulatorKind("lexical")
SimulatorKind.EMBEDDING = SimulatorKind("embedding")


class WindowSplit(str, Enum):
    """Which part of a neuron's records a window belongs to."""

    EXPLAIN = "explain"
    CALIBRATE_TOP = "calibrate-top"
    CALIBRATE_RANDOM = "calibrate-random"
    SCORE_TOP = "score-top"
    SCORE_RANDOM = "score-random"


@dataclass(frozen=True)
class ScoredWindow:
    """One scored window: true and simulated activations side by side, enough to recompute every metric."""

    window_id: int
    """Record-store window id."""
    split: WindowSplit
    """`score-top` / `score-random` windows are scored; `calibrate-*` windows only fit the calibration."""
    tokens: tuple[str, ...]
    """Token strings."""
    true_activations: tuple[float, ...]
    """The neuron's recorded activations (true units)."""
    simulated_activations: tuple[float, ...]
    """The simulator's predictions (0-10 scale before calibration)."""
    error: str | None = None
    """Why this window has no simulation (alignment failure etc.); such windows are excluded from metrics."""


@dataclass(frozen=True)
class Metrics:
    """Agreement between simulated and true activations; NaN with a reason where a metric is undefined."""

    pearson: float
    """Primary score: Pearson correlation over all scored tokens, top and random pooled."""
    pearson_top: float
    """Pearson over the held-out top windows only."""
    pearson_random: float
    """Pearson over the random windows only."""
    rsquared: float
    """1 - mean((t-p)^2)/mean(t^2) after linear calibration on the calibrate split."""
    absolute_dev_explained: float
    """1 - mean|t-p|/mean|t| after linear calibration on the calibrate split."""
    ci_low: float
    """Lower end of the bootstrap 95% interval of `pearson` (resampling windows)."""
    ci_high: float
    """Upper end of that interval."""
    scored_tokens: int
    """Number of tokens the metrics are computed over."""
    undefined_reason: str | None = None
    """Why `pearson` is NaN (constant or empty vector), else None."""


@dataclass(frozen=True)
class Score:
    """The score of one explanation of one neuron by one simulator, with provenance and per-window details."""

    neuron: NeuronId
    """The neuron."""
    explanation_text: str
    """The explanation that was simulated."""
    simulator: SimulatorKind
    """How activations were predicted."""
    simulator_backend: str
    """Backend spec (`none` for the offline simulators that use no LLM)."""
    simulator_model: str
    """Model name (or the embedding model for `embedding`)."""
    prompt_hash: str
    """Content hash of the simulator prompt files (`none` when no prompt)."""
    split_seed: int
    """Seed of the split."""
    metrics: Metrics
    """All metrics."""
    windows: tuple[ScoredWindow, ...]
    """Per-window true vs simulated activations: the scored windows, then the calibration windows."""
    parameters: dict[str, Any]
    """Every setting that affects the score, JSON-serialisable."""
    created_at: str
    """ISO-8601 UTC timestamp."""
    prompt_tokens: int = 0
    """Prompt tokens spent."""
    completion_tokens: int = 0
    """Completion tokens spent."""
    baselines: dict[str, float] = field(default_factory=dict)
    """Optional baseline scores (`shuffled`, `empty`) computed on request."""
