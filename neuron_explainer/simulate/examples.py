"""The simulators' own few-shot examples (prompts/simulator/examples.json)."""

from __future__ import annotations

from dataclasses import dataclass

from neuron_explainer.core.prompts import PromptFiles

EXAMPLES_FILE = "simulator/examples.json"


@dataclass(frozen=True)
class SimulatorExample:
    """One example window: an explanation, tokens and the activations a good simulator predicts."""

    explanation: str
    """The example neuron's explanation."""
    tokens: tuple[str, ...]
    """Token strings."""
    values: tuple[int, ...]
    """0-10 activations."""


def load_simulator_examples(files: PromptFiles) -> tuple[SimulatorExample, ...]:
    """Every window of every example neuron, in file order."""
    examples = []
    for entry in files.json(EXAMPLES_FILE):
        for pairs in entry["windows"]:
            examples.append(SimulatorExample(entry["explanation"], tuple(token for token, _ in pairs),
                                             tuple(int(value) for _, value in pairs)))
    return tuple(examples)
