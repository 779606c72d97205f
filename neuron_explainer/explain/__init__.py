"""explain stage: turn a neuron's record into a short natural-language explanation.

Public surface: `explain_neuron(record, backend, config=, ranker=)`, `ExplainConfig`, the split (`SplitConfig`,
`split_neuron`, `NeuronSplit`, `oriented_record`), prompt files (`load_prompt_files`, `PromptFiles`), and the
record types from `types`.
"""

from neuron_explainer.explain.api import CandidateRanker, ExplainConfig, explain_neuron
from neuron_explainer.explain.formatting import printable_token, scale_activation, scale_activations
from neuron_explainer.explain.parsing import ParsedExplanation, clean_explanation
from neuron_explainer.explain.prompt_files import PromptFiles, content_hash, load_prompt_files
from neuron_explainer.explain.splits import NeuronSplit, SplitConfig, check_no_leakage, oriented_record, split_neuron
from neuron_explainer.explain.types import ExplainerKind, Explanation, Failure, Polarity

__all__ = ["CandidateRanker", "ExplainConfig", "ExplainerKind", "Explanation", "Failure", "NeuronSplit",
           "ParsedExplanation", "Polarity", "PromptFiles", "SplitConfig", "check_no_leakage", "clean_explanation",
           "content_hash", "explain_neuron", "load_prompt_files", "oriented_record", "printable_token",
           "scale_activation", "scale_activations", "split_neuron"]
