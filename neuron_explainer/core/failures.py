"""The record of a unit of work that produced no usable result, shared by every stage that can fail."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from neuron_explainer.core.neurons import NeuronId


class FailureKind(str, Enum):
    """Whether a failed unit of work is worth trying again on its own."""

    TRANSIENT = "transient"
    """Not the neuron's fault (connection, timeout, 429/5xx after every retry, cancelled): the next run retries it."""
    PERMANENT = "permanent"
    """The neuron or the model's answer is the problem (unparseable answer, nothing to explain): retried only
    with `--retry-failed`."""


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
    kind: FailureKind = FailureKind.PERMANENT
    """Transient failures are retried by the next run; permanent ones only with `--retry-failed`."""
