"""All-at-once simulator: every token of a window gets a slot; the prediction is the expected value of the
backend's distribution over "0".."10" at that slot (Bills et al.'s logprob method)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.prompts import PromptFiles, load_prompt_files
from neuron_explainer.explain.formatting import printable_token
from neuron_explainer.llm.base import LLMBackend, SlotPrompt
from neuron_explainer.simulate.base import (ACTIVATION_CANDIDATES, SimulationResult, Simulator, WindowSimulation,
                                            expected_value)
from neuron_explainer.simulate.examples import EXAMPLES_FILE, load_simulator_examples
from neuron_explainer.simulate.types import SimulatorKind

PROMPT_FILES = ("simulator/all_at_once/preamble.md", "simulator/all_at_once/block.md", EXAMPLES_FILE)
PLACEHOLDER = "unknown"
"""Stands in the prompt where a predicted activation would go, so later slots do not see earlier guesses."""


def _block(files: PromptFiles, explanation: str) -> str:
    # The explanation is one line of the format; its own line breaks would read as structure.
    return files.render("simulator/all_at_once/block.md", explanation=" ".join(explanation.split()))


def build_preamble(files: PromptFiles) -> str:
    """Instructions plus the worked examples with their true values; identical for every neuron (cacheable)."""
    parts = [files.text("simulator/all_at_once/preamble.md").rstrip("\n") + "\n"]
    for example in load_simulator_examples(files):
        lines = "".join(f"{printable_token(token)}\t{value}\n" for token, value in zip(example.tokens, example.values))
        parts.append(_block(files, example.explanation) + lines + "<end>\n")
    return "".join(parts)


def build_slot_prompt(files: PromptFiles, preamble: str, explanation: str, tokens: Sequence[str]) -> SlotPrompt:
    """One window as slot pieces: the slot after piece i is where token i's activation would be written."""
    pieces = [_block(files, explanation) + printable_token(tokens[0]) + "\t"]
    pieces += [f"{PLACEHOLDER}\n{printable_token(token)}\t" for token in tokens[1:]]
    pieces.append(f"{PLACEHOLDER}\n<end>\n")
    return SlotPrompt(prefix=preamble, pieces=tuple(pieces))


class AllAtOnceSimulator(Simulator):
    """Reads slot distributions from a backend that exposes prompt probabilities (in-process, vLLM, SGLang)."""

    kind = SimulatorKind.ALL_AT_ONCE
    needs_fit = False

    def __init__(self, backend: LLMBackend) -> None:
        if not backend.capabilities.slot_distributions:
            raise UserError(f"{backend.name} cannot give slot distributions; use --simulator generated")
        self.backend = backend
        self.backend_name = backend.name
        self.model = backend.model
        self._files = load_prompt_files(PROMPT_FILES)
        self.prompt_hash = self._files.hash
        self._preamble = build_preamble(self._files)

    @property
    def parameters(self) -> dict[str, Any]:
        # Without exact multi-token scoring a server that splits "10" into "1","0" gives "10" no mass, so such
        # scores top out near 9; recorded so they are not compared blindly with exact ones.
        return {"placeholder": PLACEHOLDER, "candidates": list(ACTIVATION_CANDIDATES), "renormalised": True,
                "multitoken_exact": self.backend.capabilities.slot_multitoken_exact}

    async def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> SimulationResult:
        indices = [index for index, tokens in enumerate(windows) if tokens]
        prompts = [build_slot_prompt(self._files, self._preamble, explanation, windows[index]) for index in indices]
        # One call for all of a neuron's windows: in-process backends batch them and reuse the shared prefix.
        distributions = await self.backend.slot_distributions(prompts, ACTIVATION_CANDIDATES) if prompts else []
        results: list[WindowSimulation] = [WindowSimulation(values=()) for _ in windows]
        for index, slots in zip(indices, distributions, strict=True):
            if len(slots) != len(windows[index]):
                results[index] = WindowSimulation(None, f"backend returned {len(slots)} slots for "
                                                        f"{len(windows[index])} tokens")
                continue
            values = [expected_value(slot) for slot in slots]
            missing = [position for position, value in enumerate(values) if value is None]
            if missing:
                results[index] = WindowSimulation(None, f"no probability on any of 0-10 at token(s) {missing[:5]}")
            else:
                results[index] = WindowSimulation(tuple(float(value) for value in values if value is not None))
        return SimulationResult(tuple(results))
