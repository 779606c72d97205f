"""Checks of a run's recording request that need only the model's config, made before the run creates its
database: sizes, window length against the model's positions, buffers against this machine's memory."""

from __future__ import annotations

from neuron_explainer.activations import RecordConfig, RecordPolarity
from neuron_explainer.activations.limits import check_buffers_fit, check_window_fits
from neuron_explainer.core.neurons import parse_layers


def check_recording_request(request: RecordConfig) -> None:
    """UserError naming the flag for a request no recording of this model can meet (the recorder checks the
    exact limits again with the tokenizer's special tokens and the corpus at hand)."""
    from neuron_explainer.subject import describe_model
    from neuron_explainer.subject.info import special_token_count

    request.validate()
    info = describe_model(request.model, hook_template=request.hook_template)
    check_window_fits(request.window_length, 0, info.max_positions, info.model_id)
    if info.max_positions is not None and request.window_length >= info.max_positions - 2:
        # Only a window this close to the limit can be pushed over it by a BOS/CLS/SEP token.
        special = special_token_count(request.model, is_encoder=info.is_encoder)
        check_window_fits(request.window_length, special, info.max_positions, info.model_id)
    layers = parse_layers(request.layers, info.num_layers)
    check_buffers_fit(layers=len(layers), neurons_per_layer=info.neurons_per_layer,
                      window_length=request.window_length, top_k=request.top_k, random_k=request.random_k,
                      both=RecordPolarity(request.polarity) is not RecordPolarity.POSITIVE)
