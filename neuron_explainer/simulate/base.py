"""The simulator interface: an explanation and token windows in, predicted activations per window out."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuron_explainer.simulate.types import SimulatorKind

ACTIVATION_CANDIDATES = tuple(str(value) for value in range(11))
"""The strings "0".."10" a simulator may answer at each token."""


@dataclass(frozen=True)
class WindowSimulation:
    """Predictions for one window, or why there are none."""

    values: tuple[float, ...] | None
    """One prediction per token (0-10 scale, or the raw feature for simulators that are fitted); None on error."""
    error: str | None = None
    """Why the window could not be simulated (alignment failure, backend error)."""
    transient: bool = False
    """The error says nothing about the window (connection, timeout, server error after retries)."""


@dataclass(frozen=True)
class SimulationResult:
    """Predictions for every window of one call and what they cost."""

    windows: tuple[WindowSimulation, ...]
    """One entry per input window, in order."""
    prompt_tokens: int = 0
    """Prompt tokens billed (0 for in-process backends that do not report them)."""
    completion_tokens: int = 0
    """Completion tokens billed."""


class Simulator(abc.ABC):
    """Predicts a neuron's activation at every token of some windows from an explanation alone."""

    kind: SimulatorKind
    """Which method."""
    backend_name: str
    """Backend spec, or `none` for simulators that use no LLM."""
    model: str
    """The LLM or embedding model used."""
    prompt_hash: str
    """Content hash of the prompt files used, or `none`."""
    needs_fit: bool = False
    """True when outputs are raw features that scoring maps to the 0-10 scale with a fit on the calibrate split."""

    @property
    def parameters(self) -> dict[str, Any]:
        """Settings that affect predictions, JSON-serialisable."""
        return {}

    @abc.abstractmethod
    async def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> SimulationResult:
        """Predict activations for each window (given as its token strings); never sees true activations."""


def expected_value(probabilities: Mapping[str, float]) -> float | None:
    """Expected activation over the candidates "0".."10", renormalised over the candidates only
    (small models put most of their mass elsewhere); None when no candidate has any probability."""
    total = 0.0
    weighted = 0.0
    for candidate in ACTIVATION_CANDIDATES:
        probability = probabilities.get(candidate, 0.0)
        total += probability
        weighted += probability * int(candidate)
    if not total > 0:
        return None
    return weighted / total
