"""Weight views against a by-hand computation from the raw weights, for every supported family."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuron_explainer.activations import RecordConfig, RecordStore, record
from neuron_explainer.activations.weight_views import WeightViews, compute_weight_views
from neuron_explainer.subject.hooks import resolve_hook_point
from neuron_explainer.subject.loading import load_model
from neuron_explainer.subject.weights import WeightReader, layer_weight_views

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox"]
TOP = 6


def _randomise_norms(model, generator) -> None:
    """The tiny models start with unit norm gains, which would hide a missing or wrong gain."""
    import torch

    with torch.no_grad():
        for name, module in model.named_modules():
            if "norm" in name or name.endswith(("ln_f", "ln_2", "ln_1")):
                for kind, parameter in module.named_parameters(recurse=False):
                    centre = 0.0 if kind == "bias" else 1.0
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + centre)


def _by_hand(family: str, model, layer: int):
    """[vocab, neurons] logit weights and input activations, written out from the weights per family."""
    import torch
    from transformers.activations import ACT2FN

    config = model.config
    eps = getattr(config, "rms_norm_eps", None) or getattr(config, "layer_norm_eps", None) \
        or getattr(config, "layer_norm_epsilon")
    if family == "gpt2":
        base, block = model.transformer, model.transformer.h[layer]
        final_gain, mlp_norm = base.ln_f.weight, block.ln_2
        down = block.mlp.c_proj.weight.T  # Conv1D: [in, out]
        act = ACT2FN[config.activation_function]
        up_in = lambda x: act(x @ block.mlp.c_fc.weight + block.mlp.c_fc.bias)  # noqa: E731
    elif family == "gpt_neox":
        base, block = model.gpt_neox, model.gpt_neox.layers[layer]
        final_gain, mlp_norm = base.final_layer_norm.weight, block.post_attention_layernorm
        down = block.mlp.dense_4h_to_h.weight
        act = ACT2FN[config.hidden_act]
        up_in = lambda x: act(x @ block.mlp.dense_h_to_4h.weight.T + block.mlp.dense_h_to_4h.bias)  # noqa: E731
    else:
        base, block = model.model, model.model.layers[layer]
        offset = 1.0 if family == "gemma" else 0.0  # Gemma's RMSNorm multiplies by (1 + weight)
        final_gain, mlp_norm = base.norm.weight + offset, block.post_attention_layernorm
        down = block.mlp.down_proj.weight
        act = ACT2FN[getattr(config, "hidden_activation", None) or config.hidden_act]
        up_in = lambda x: act(x @ block.mlp.gate_proj.weight.T) * (x @ block.mlp.up_proj.weight.T)  # noqa: E731
    layernorm = family in ("gpt2", "gpt_neox")
    directions = down - down.mean(dim=0, keepdim=True) if layernorm else down
    logits = model.lm_head.weight @ (final_gain[:, None] * directions)
    embeddings = model.get_input_embeddings().weight
    if layernorm:
        centred = embeddings - embeddings.mean(dim=1, keepdim=True)
        normed = centred / torch.sqrt(centred.pow(2).mean(dim=1, keepdim=True) + eps) * mlp_norm.weight \
            + mlp_norm.bias
    else:
        gain = mlp_norm.weight + (1.0 if family == "gemma" else 0.0)
        normed = embeddings / torch.sqrt(embeddings.pow(2).mean(dim=1, keepdim=True) + eps) * gain
    return logits.detach().numpy(), up_in(normed).detach().numpy()


def _check(ids: np.ndarray, weights: np.ndarray, matrix: np.ndarray, *, largest: bool) -> None:
    """Each neuron's k ids carry the k extreme values of its column, in order, with the right weights."""
    for neuron in range(matrix.shape[1]):
        column = matrix[:, neuron]
        expected = np.sort(column)[::-1][:TOP] if largest else np.sort(column)[:TOP]
        np.testing.assert_allclose(weights[neuron], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(column[ids[neuron]], weights[neuron], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_views_match_a_by_hand_computation(tiny_model_factory, family):
    import torch

    loaded = load_model(str(tiny_model_factory(family)), dtype="float32", causal_lm=True)
    _randomise_norms(loaded.model, torch.Generator().manual_seed(7))
    reader = WeightReader(loaded.model, resolve_hook_point(loaded.model.base_model))
    assert reader.basis.final_norm == ("layernorm" if family in ("gpt2", "gpt_neox") else "rmsnorm")
    assert reader.basis.tied_embeddings == (family in ("gpt2", "gemma"))
    layer = 1
    views = layer_weight_views(reader, layer, top_k=TOP)
    logits, activations = _by_hand(family, loaded.model, layer)
    assert views.promoted_ids.shape == (reader.hook_point.neurons_per_layer, TOP)
    _check(views.promoted_ids, views.promoted_weights, logits, largest=True)
    _check(views.suppressed_ids, views.suppressed_weights, logits, largest=False)
    _check(views.exciting_ids, views.exciting_weights, activations, largest=True)
    _check(views.inhibiting_ids, views.inhibiting_weights, activations, largest=False)


def test_weight_views_chunk_the_vocabulary_exactly(tiny_model_factory, monkeypatch):
    """Merging top-k over vocabulary chunks gives the same lists as one chunk."""
    import neuron_explainer.subject.weights as weights

    loaded = load_model(str(tiny_model_factory("llama")), dtype="float32", causal_lm=True)
    reader = WeightReader(loaded.model, resolve_hook_point(loaded.model.base_model))
    whole = layer_weight_views(reader, 0, top_k=TOP)
    monkeypatch.setattr(weights, "_VOCAB_CHUNK", 37)
    chunked = layer_weight_views(reader, 0, top_k=TOP)
    for name in ("promoted", "suppressed", "exciting", "inhibiting"):
        np.testing.assert_array_equal(getattr(whole, f"{name}_ids"), getattr(chunked, f"{name}_ids"))


def test_weight_views_are_stored_with_the_recording(tiny_model_factory, tmp_path):
    model = tiny_model_factory("gpt2")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    store_path = tmp_path / "records"
    record(RecordConfig(model=str(model), corpus=str(corpus), layers="all", window_length=16, windows=8,
                        dtype="float32"), store_path, progress=False)
    summary = compute_weight_views(store_path, top_k=4)
    assert summary.layers == (0, 1)
    store = RecordStore.open(store_path)
    meta = json.loads((store_path / "weight_views" / "meta.json").read_text())
    assert meta["final_norm"] == "layernorm" and meta["tied_embeddings"] is True and meta["top_k"] == 4
    views = WeightViews.open(store)
    view = views.neuron(1, 3)
    assert len(view.promoted) == 4 and view.promoted[0].weight >= view.promoted[-1].weight
    assert view.promoted[0].token == store.vocab[view.promoted[0].token_id]
    assert [item[0] for item in view.as_dict(2)["suppressed"]] == [item.token for item in view.suppressed[:2]]
    assert not list((store_path / "weight_views").glob(".*"))  # no staging files left


@pytest.mark.slow
def test_bundled_model_weight_views_agree_with_the_recording_more_than_chance(tmp_path):
    """The planted check on SmolLM2 (scripts/check_weight_views.py runs it on more layers): at layer 0 the tokens a
    neuron's embedding view ranks highest are the tokens it fires on far more often than another neuron's view."""
    from neuron_explainer.eval.weight_agreement import weight_view_agreement

    store_path = tmp_path / "records"
    record(RecordConfig(model="default", layers="0", windows=300), store_path, progress=False)
    compute_weight_views(store_path, top_k=20)
    [layer] = weight_view_agreement(RecordStore.open(store_path), top=20)
    assert layer.neurons == 1536
    assert layer.input_matched > 2 * layer.input_shuffled and layer.input_matched > 0.3
