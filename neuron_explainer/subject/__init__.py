"""subject stage: load a transformer and capture the activations of its MLP neurons.

Public surface: `load_model`, `Subject`, `HookPoint`, `resolve_hook_point`, `describe_model`, `ModelInfo`,
`SpecialTokens`, `token_strings`.
"""

from neuron_explainer.subject.hooks import HookPoint, capture_mlp_inputs, resolve_hook_point
from neuron_explainer.subject.info import ModelInfo, describe_model
from neuron_explainer.subject.loading import LoadedModel, load_model
from neuron_explainer.subject.subject import SpecialTokens, Subject, special_tokens_for, token_strings

__all__ = [
    "HookPoint",
    "LoadedModel",
    "ModelInfo",
    "SpecialTokens",
    "Subject",
    "capture_mlp_inputs",
    "describe_model",
    "load_model",
    "resolve_hook_point",
    "special_tokens_for",
    "token_strings",
]
