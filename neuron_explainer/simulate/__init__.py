"""simulate stage: predict a neuron's activations from an explanation.

Public surface: `make_simulator(kind | None, backend)`, `default_simulator_kind`, the registry (`SIMULATORS`,
`simulator_needs`), the `Simulator` interface and its
result types, and the record types from `types`.
"""

from neuron_explainer.simulate.base import (ACTIVATION_CANDIDATES, SimulationResult, Simulator, WindowSimulation,
                                            expected_value)
from neuron_explainer.simulate.registry import (SIMULATORS, SimulatorEntry, default_simulator_kind, make_simulator,
                                               simulator_needs)
from neuron_explainer.simulate.types import Metrics, Score, ScoredWindow, SimulatorKind, WindowSplit

__all__ = ["ACTIVATION_CANDIDATES", "SIMULATORS", "SimulatorEntry", "simulator_needs", "Metrics", "Score", "ScoredWindow", "SimulationResult", "Simulator",
           "SimulatorKind", "WindowSimulation", "WindowSplit", "default_simulator_kind", "expected_value",
           "make_simulator"]
