"""subject stage: load a transformer, address its MLP neurons, and capture their activations.

Public surface: `load_model`, `Subject`, `HookPoint`, `resolve_hook_point`, `describe_model`, `ModelInfo`,
`NeuronId`, `parse_neuron_spec`, `parse_layers`, `SpecialTokens`, `token_strings`.
"""

from neuron_explainer.subject.hooks import HookPoint, capture_mlp_inputs, resolve_hook_point
from neuron_explainer.subject.info import ModelInfo, describe_model
from neuron_explainer.subject.loading import LoadedModel, load_model
from neuron_explainer.subject.neurons import NeuronId, parse_layers, parse_neuron_spec, parse_range
from neuron_explainer.subject.subject import SpecialTokens, Subject, special_tokens_for, token_strings

__all__ = [
    "HookPoint",
    "LoadedModel",
    "ModelInfo",
    "NeuronId",
    "SpecialTokens",
    "Subject",
    "capture_mlp_inputs",
    "describe_model",
    "load_model",
    "parse_layers",
    "parse_neuron_spec",
    "parse_range",
    "resolve_hook_point",
    "special_tokens_for",
    "token_strings",
]
