"""The record of a unit of work that produced no usable result, shared by every stage that can fail."""

from __future__ import annotations

from dataclasses import dataclass

from neuron_explainer.core.neurons import NeuronId


@dataclass(frozen=True)
class Failure:
    """A unit of work that produced no usable result; stored so it can be retried and audited."""

    neuron: NeuronId
    """The neuron concerned."""
    stage: str
    """`explain`, `simulate`, `score` or `record`."""
    reason: str
    """One line saying what went wrong."""
    raw_output: str = ""
    """The unusable model answer, if any (truncated to a few KB by the writer)."""
