"""Every simulator by name with what it needs, and choosing one from a name (or from what the backend can do)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.registry import Needs, Registry
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.simulate.base import Simulator
from neuron_explainer.simulate.types import SimulatorKind


@dataclass(frozen=True)
class SimulatorEntry:
    """How to build one simulator and what it needs."""

    build: Callable[[LLMBackend | None], Simulator]
    """Builds it on a backend (None for simulators that need no LLM); imports its module only then."""
    needs: Needs
    """What it needs from the run."""


def _all_at_once(backend: LLMBackend | None) -> Simulator:
    from neuron_explainer.simulate.all_at_once import AllAtOnceSimulator

    return AllAtOnceSimulator(backend)  # type: ignore[arg-type]


def _generated(backend: LLMBackend | None) -> Simulator:
    from neuron_explainer.simulate.generated import GeneratedSimulator

    return GeneratedSimulator(backend)  # type: ignore[arg-type]


def _lexical(backend: LLMBackend | None) -> Simulator:
    from neuron_explainer.simulate.lexical import LexicalSimulator

    return LexicalSimulator()


def _embedding(backend: LLMBackend | None) -> Simulator:
    from neuron_explainer.simulate.embedding import EmbeddingSimulator

    return EmbeddingSimulator()


SIMULATORS: Registry[SimulatorEntry] = Registry("simulator")
"""Simulators by name; a new one is a `Simulator` subclass in its own module plus one line here."""

SIMULATORS.register(SimulatorKind.ALL_AT_ONCE, SimulatorEntry(_all_at_once, Needs(llm=True, slot_distributions=True)))
SIMULATORS.register(SimulatorKind.GENERATED, SimulatorEntry(_generated, Needs(llm=True)))
SIMULATORS.register(SimulatorKind.LEXICAL, SimulatorEntry(_lexical, Needs()))
SIMULATORS.register(SimulatorKind.EMBEDDING, SimulatorEntry(_embedding, Needs()))


def simulator_needs(kind: str | None) -> Needs:
    """What a simulator name needs; None (the best the backend allows) needs an LLM unless none is given."""
    return Needs(llm=True) if kind is None else SIMULATORS.get(kind).needs


def default_simulator_kind(backend: LLMBackend | None) -> SimulatorKind:
    """The best simulator the backend allows: the registered LLM simulators in order, the first whose needs the
    backend meets (all-at-once with slot distributions, else generated); lexical without an LLM."""
    if backend is None:
        return SimulatorKind.LEXICAL
    for name in SIMULATORS:
        needs = SIMULATORS.get(name).needs
        if needs.llm and (backend.capabilities.slot_distributions or not needs.slot_distributions):
            return SimulatorKind(name)
    return SimulatorKind.LEXICAL


def make_simulator(kind: SimulatorKind | str | None, backend: LLMBackend | None) -> Simulator:
    """Build a simulator; `kind` None picks the default for `backend`. LLM simulators need a backend."""
    chosen = default_simulator_kind(backend) if kind is None else SimulatorKind(kind)
    entry = SIMULATORS.get(chosen)
    if entry.needs.llm and backend is None:
        raise UserError(f"the {chosen.value} simulator needs an LLM backend (--llm)")
    return entry.build(backend)
