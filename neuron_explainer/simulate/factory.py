"""Choosing a simulator from a name (or from what the backend can do)."""

from __future__ import annotations

from neuron_explainer.core.errors import UserError
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.simulate.base import Simulator
from neuron_explainer.simulate.types import SimulatorKind


def default_simulator_kind(backend: LLMBackend | None) -> SimulatorKind:
    """The best simulator the backend allows: all-at-once with slot distributions, else generated; lexical
    without an LLM."""
    if backend is None:
        return SimulatorKind.LEXICAL
    if backend.capabilities.slot_distributions:
        return SimulatorKind.ALL_AT_ONCE
    return SimulatorKind.GENERATED


def make_simulator(kind: SimulatorKind | str | None, backend: LLMBackend | None) -> Simulator:
    """Build a simulator; `kind` None picks the default for `backend`. LLM simulators need a backend."""
    if kind is None:
        chosen = default_simulator_kind(backend)
    else:
        try:
            chosen = SimulatorKind(kind)
        except ValueError:
            names = ", ".join(member.value for member in SimulatorKind)
            raise UserError(f"unknown simulator {kind!r}: choose one of {names}") from None
    if chosen in (SimulatorKind.ALL_AT_ONCE, SimulatorKind.GENERATED) and backend is None:
        raise UserError(f"the {chosen.value} simulator needs an LLM backend (--llm)")
    if chosen == SimulatorKind.ALL_AT_ONCE:
        from neuron_explainer.simulate.all_at_once import AllAtOnceSimulator

        return AllAtOnceSimulator(backend)  # type: ignore[arg-type]
    if chosen == SimulatorKind.GENERATED:
        from neuron_explainer.simulate.generated import GeneratedSimulator

        return GeneratedSimulator(backend)  # type: ignore[arg-type]
    if chosen == SimulatorKind.LEXICAL:
        from neuron_explainer.simulate.lexical import LexicalSimulator

        return LexicalSimulator()
    from neuron_explainer.simulate.embedding import EmbeddingSimulator

    return EmbeddingSimulator()
