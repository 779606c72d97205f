"""explain stage: turn a neuron's record into a short natural-language explanation.

Public surface: the `Explainer` interface (`ExplainerSettings`, `ExplainResources`, `ExplainerIdentity`) and its
registry (`EXPLAINERS`, `register_explainer`, `explainer_class`); `explain_neuron(record, backend, config=, ranker=)`, `ExplainConfig`, the split (`SplitConfig`,
`split_neuron`, `NeuronSplit`, `oriented_record`) and the record types from `types` (`Failure`, shared by
every stage, lives in `neuron_explainer.core`).

SASC and the LLM-free n-gram explainer: `isolated_ngram_responses` (a layer's cached n-gram sweep) or
`in_context_ngram_responses` -> `NeuronNgrams`; `explain_sasc(ngrams, subject, backend, config=)`, `SascConfig`;
`explain_sasc_many` (several neurons in shared batches) and `SascBatcher` (batches concurrent requests);
`explain_ngram(ngrams)`; `NgramConfig`, `NgramMode`, `LayerNgramResponses`.
"""

from neuron_explainer.explain.api import CandidateRanker, ExplainConfig, explain_neuron
from neuron_explainer.explain.base import Explainer, ExplainerIdentity, ExplainerSettings, ExplainResources
from neuron_explainer.explain.formatting import printable_token, scale_activation, scale_activations
from neuron_explainer.explain.ngrams import (LayerNgramResponses, NeuronNgrams, NgramConfig, NgramMode, explain_ngram,
                                             in_context_ngram_responses, isolated_ngram_responses)
from neuron_explainer.explain.parsing import ParsedExplanation, clean_explanation
from neuron_explainer.explain.registry import EXPLAINERS, explainer_class, register_explainer
from neuron_explainer.explain.sasc import SascBatcher, SascConfig, explain_sasc, explain_sasc_many
from neuron_explainer.explain.splits import (NeuronSplit, SplitConfig, SplitGroups, check_no_leakage, check_split_groups,
                                             oriented_record, split_neuron)
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity

__all__ = ["CandidateRanker", "ExplainConfig", "ExplainerKind", "Explanation", "NeuronSplit",
           "ParsedExplanation", "Polarity", "SplitConfig", "SplitGroups", "check_no_leakage", "check_split_groups",
           "clean_explanation", "explain_neuron", "oriented_record", "printable_token",
           "scale_activation", "scale_activations", "split_neuron"]
__all__ += ["EXPLAINERS", "Explainer", "ExplainerIdentity", "ExplainerSettings", "ExplainResources", "explainer_class",
            "register_explainer"]
__all__ += ["LayerNgramResponses", "NeuronNgrams", "NgramConfig", "NgramMode", "SascBatcher", "SascConfig",
            "explain_ngram", "explain_sasc", "explain_sasc_many", "in_context_ngram_responses",
            "isolated_ngram_responses"]
