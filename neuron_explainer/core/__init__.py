"""Types and helpers every stage shares: neuron addressing, failures, the unit-of-work runner, prompt files, errors.

Public surface: `NeuronId`, `parse_neuron_spec`, `parse_layers`, `parse_range`, `Failure`, `FailureKind`, `run_units`,
`BatchSummary`, `PromptFiles`, `load_prompt_files`, `content_hash`, `UserError`.
"""

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure, FailureKind
from neuron_explainer.core.neurons import NeuronId, parse_layers, parse_neuron_spec, parse_range
from neuron_explainer.core.prompts import PromptFiles, content_hash, load_prompt_files
from neuron_explainer.core.units import BatchSummary, run_units

__all__ = ["BatchSummary", "Failure", "FailureKind", "NeuronId", "PromptFiles", "UserError", "content_hash", "load_prompt_files",
           "parse_layers", "parse_neuron_spec", "parse_range", "run_units"]
