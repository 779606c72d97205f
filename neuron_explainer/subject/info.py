"""`describe_model`: a model's architecture and MLP neuron layout, read without loading its weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.subject.hooks import resolve_hook_point
from neuron_explainer.subject.loading import is_encoder_config, load_config, model_directory


@dataclass(frozen=True)
class ModelInfo:
    """What `neuron-explainer info` prints about a model."""

    model_id: str
    """The name results are stored under."""
    architecture: str
    """The architecture class named in the config (e.g. LlamaForCausalLM)."""
    model_type: str
    """The config's model_type (e.g. llama, gpt2, bert)."""
    is_encoder: bool
    """True for encoder-only models."""
    num_layers: int
    """Blocks with an MLP."""
    neurons_per_layer: int
    """MLP neurons per block."""
    total_neurons: int
    """num_layers x neurons_per_layer."""
    hidden_size: int
    """Width of the residual stream."""
    vocab_size: int
    """Vocabulary size from the config."""
    parameters: int
    """Parameter count of the backbone (no LM head)."""
    hook_point: str
    """Module path whose input is a layer's MLP neurons, relative to the backbone."""
    hook_family: str
    """Which resolution rule matched."""
    max_positions: int | None = None
    """Most token positions per sequence the config allows (None: no fixed limit)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict in field order."""
        return asdict(self)


def describe_model(spec: str, hook_template: str | None = None) -> ModelInfo:
    """Describe a model by spec; builds the module tree on the meta device, so no weights are read."""
    import torch
    from transformers import AutoModel

    source, location = model_directory(spec)
    config = load_config(location)
    try:
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot build model {spec!r} from its config: {exc}") from None
    hook_point = resolve_hook_point(model, hook_template=hook_template)
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return ModelInfo(
        model_id=source.model_id,
        architecture=str(architectures[0]),
        model_type=str(config.model_type),
        is_encoder=is_encoder_config(config),
        num_layers=hook_point.num_layers,
        neurons_per_layer=hook_point.neurons_per_layer,
        total_neurons=hook_point.num_layers * hook_point.neurons_per_layer,
        hidden_size=int(_text_config(config).hidden_size),
        vocab_size=int(_text_config(config).vocab_size),
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        hook_point=hook_point.template,
        hook_family=hook_point.family,
        max_positions=max_positions(config),
    )


_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def max_positions(config: Any) -> int | None:
    """The most token positions a transformers config (or its text sub-config) allows; None when it names none."""
    config = _text_config(config)
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _text_config(config: Any) -> Any:
    # Multimodal configs keep the language model's sizes in a sub-config.
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def special_token_count(spec: str, *, is_encoder: bool) -> int:
    """How many positions of each window the tokenizer's special tokens take, read from the tokenizer files only;
    0 where the tokenizer cannot be read this way (the recorder checks again with the loaded tokenizer)."""
    from transformers import AutoTokenizer

    from neuron_explainer.subject.subject import special_tokens_for

    _source, location = model_directory(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    special = special_tokens_for(tokenizer, is_encoder=is_encoder)
    return len(special.prefix) + len(special.suffix)
