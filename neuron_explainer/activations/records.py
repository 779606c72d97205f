"""What the recorder keeps for one neuron, as read back from the record store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from neuron_explainer.core.neurons import NeuronId


@dataclass(frozen=True)
class Window:
    """One recorded text window with one neuron's activation at every token."""

    window_id: int
    """Index of the window in the store's token array (stable across neurons: the same id is the same text)."""
    tokens: tuple[str, ...]
    """Decoded token strings, one per position."""
    activations: tuple[float, ...]
    """The neuron's activation at each position (true units, not scaled)."""

    @property
    def max_activation(self) -> float:
        """Largest activation in the window."""
        return max(self.activations) if self.activations else float("nan")


@dataclass(frozen=True)
class NeuronStats:
    """Summary statistics of a neuron's activation over every recorded token."""

    count: int
    """Number of tokens seen."""
    mean: float
    """Mean activation."""
    std: float
    """Standard deviation of the activation."""
    min: float
    """Smallest activation."""
    max: float
    """Largest activation."""
    fraction_positive: float
    """Fraction of tokens with activation > 0."""
    quantiles: tuple[tuple[float, float], ...]
    """(probability, value) pairs of the activation distribution, increasing in probability."""


@dataclass(frozen=True)
class NeuronRecord:
    """Everything recorded for one neuron: its top windows, the shared random windows, negative windows, stats."""

    neuron: NeuronId
    """Which neuron."""
    top_windows: tuple[Window, ...]
    """Windows with the largest max activation, descending."""
    random_windows: tuple[Window, ...]
    """The shared seeded random sample of windows (same window ids for every neuron of the recording)."""
    stats: NeuronStats
    """Summary statistics over every recorded token."""
    bottom_windows: tuple[Window, ...] = ()
    """Windows with the most negative min activation, ascending (empty unless recorded with polarity both)."""
    window_groups: Mapping[int, int] = field(default_factory=dict)
    """Split group of each window id (same document or near-duplicate text); a window missing here is a group
    of its own. Splits never put two windows of one group on different sides."""
