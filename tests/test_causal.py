"""The causal score against hand-computed cases on tiny models of every family."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from neuron_explainer.causal import (Ablation, CausalRequest, CausalRunner, WindowDivergence, causal_score,
                                     recovered_fraction)
from neuron_explainer.subject.hooks import capture_mlp_inputs, resolve_hook_point
from neuron_explainer.subject.loading import load_model
from neuron_explainer.core.neurons import NeuronId

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox"]
LAYER, NEURON = 0, 5


def _windows(count: int = 4, length: int = 12, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {window_id: rng.integers(3, 300, size=length) for window_id in range(10, 10 + count)}


def _log_probs(model, prefix, tokens):
    import torch

    ids = torch.tensor([list(prefix) + list(tokens)])
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, len(prefix):].float(), dim=-1)


def _activations(model, hook_point, tokens) -> np.ndarray:
    import torch

    captured = []
    with torch.inference_mode():
        capture_mlp_inputs(model.base_model, hook_point, [LAYER],
                           lambda: model(input_ids=torch.tensor([list(tokens)]), use_cache=False),
                           lambda _layer, tensor: captured.append(tensor[0, :, NEURON].clone()))
    return captured[0].numpy()


def _scaled(model, layer: int, neuron: int, factor: float):
    """A copy of the model whose neuron writes `factor` times its output; factor 0 is the same as replacing its
    activations by 0."""
    import torch

    edited = copy.deepcopy(model)
    hook_point = resolve_hook_point(edited.base_model)
    projection = edited.base_model.get_submodule(hook_point.module_path(layer))
    with torch.no_grad():
        if hasattr(projection, "nx"):  # Conv1D: [in, out]
            projection.weight[neuron, :] *= factor
        else:
            projection.weight[:, neuron] *= factor
    return edited


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_score_matches_a_hand_computed_ablation(tiny_model_factory, family):
    directory = str(tiny_model_factory(family))
    # A random tiny model barely uses any one neuron; amplified, its ablation moves the output measurably.
    model = _scaled(load_model(directory, dtype="float32", causal_lm=True).model, LAYER, NEURON, 200.0)
    # No BOS: the weight edit below silences the neuron at every position, the runner at the window's positions.
    prefix: tuple[int, ...] = ()
    hook_point = resolve_hook_point(model.base_model)
    windows = _windows()
    true = {window_id: _activations(model, hook_point, tokens) for window_id, tokens in windows.items()}
    neuron = NeuronId(LAYER, NEURON)
    requests = [
        CausalRequest("perfect", neuron, tuple(true.items()), ablation_value=0.0),
        CausalRequest("constant", neuron, tuple((w, np.zeros_like(v)) for w, v in true.items()), ablation_value=0.0),
        CausalRequest("half", neuron, tuple((w, v / 2) for w, v in true.items()), ablation_value=0.0),
    ]
    runner = CausalRunner(model, hook_point, prefix_ids=prefix, batch_size=5)
    scores = runner.score_layer(LAYER, requests, windows.__getitem__, ablation=Ablation.ZERO, bootstrap_samples=200)

    # By hand: the ablated run is the model with the neuron's output column zeroed.
    edited = _scaled(model, LAYER, NEURON, 0.0)
    kl_sum = loss_true = loss_ablated = 0.0
    for tokens in windows.values():
        reference, ablated = _log_probs(model, prefix, tokens), _log_probs(edited, prefix, tokens)
        kl_sum += float((reference.exp() * (reference - ablated)).sum())
        targets = np.asarray(tokens[1:])
        loss_true -= float(reference[np.arange(len(targets)), targets].sum())
        loss_ablated -= float(ablated[np.arange(len(targets)), targets].sum())
    tokens_compared = sum(len(tokens) for tokens in windows.values())
    loss_tokens = tokens_compared - len(windows)
    perfect, constant, half = scores["perfect"], scores["constant"], scores["half"]
    assert perfect.tokens == tokens_compared and perfect.windows == len(windows)
    assert perfect.kl_ablated == pytest.approx(kl_sum / tokens_compared, rel=1e-3)
    assert perfect.kl_ablated > 1e-5
    assert perfect.loss_true == pytest.approx(loss_true / loss_tokens, rel=1e-5)
    assert perfect.loss_ablated == pytest.approx(loss_ablated / loss_tokens, rel=1e-5)
    assert perfect.value == pytest.approx(1.0, abs=1e-3)
    assert constant.value == pytest.approx(0.0, abs=1e-6)
    assert perfect.ci_low <= perfect.value + 1e-3 and constant.ci_low <= 1e-6 <= constant.ci_high + 1e-6
    assert 0.0 < half.value < 1.0
    assert half.ci_low <= half.value <= half.ci_high


def test_batching_does_not_change_the_scores(tiny_model_factory):
    directory = str(tiny_model_factory("llama"))
    loaded = load_model(directory, dtype="float32", causal_lm=True)
    hook_point = resolve_hook_point(loaded.model.base_model)
    windows = _windows(count=3, seed=1)
    rng = np.random.default_rng(2)
    requests = [CausalRequest(neuron, NeuronId(1, neuron),
                              tuple((w, 50 * rng.normal(size=len(t))) for w, t in list(windows.items())[neuron % 2:]),
                              ablation_value=20.0 * (neuron + 1)) for neuron in range(4)]
    results = [CausalRunner(loaded.model, hook_point, prefix_ids=(0,), batch_size=size)
               .score_layer(1, requests, windows.__getitem__, bootstrap_samples=0) for size in (1, 6, 64)]
    for key in range(4):
        values = [result[key] for result in results]
        for other in values[1:]:
            assert values[0].kl_simulated > 1e-4 and values[0].kl_ablated > 1e-4
            assert other.kl_simulated == pytest.approx(values[0].kl_simulated, rel=1e-3)
            assert other.kl_ablated == pytest.approx(values[0].kl_ablated, rel=1e-3)


def test_a_neuron_that_writes_nothing_has_an_undefined_score(tiny_model_factory):
    directory = str(tiny_model_factory("llama"))
    loaded = load_model(directory, dtype="float32", causal_lm=True)
    model = _scaled(loaded.model, LAYER, NEURON, 0.0)
    windows = _windows(count=2)
    request = CausalRequest("silent", NeuronId(LAYER, NEURON),
                            tuple((w, np.ones(len(t))) for w, t in windows.items()), ablation_value=3.0)
    score = CausalRunner(model, resolve_hook_point(model.base_model), prefix_ids=(0,)).score_layer(
        LAYER, [request], windows.__getitem__)["silent"]
    assert math.isnan(score.value) and math.isnan(score.ci_low)
    assert "changes nothing" in score.undefined_reason


def test_the_arithmetic():
    assert recovered_fraction(1.0, 1.5, 2.0) == 0.5
    assert math.isnan(recovered_fraction(1.0, 1.5, 1.0))
    windows = [WindowDivergence(window_id=index, tokens=4, kl_simulated=0.25 * index, kl_ablated=1.0 * index,
                                loss_true=4.0, loss_simulated=5.0, loss_ablated=6.0) for index in range(1, 5)]
    score = causal_score(windows, ablation=Ablation.MEAN, ablation_value=0.5, bootstrap_samples=500)
    assert score.value == pytest.approx(0.75)
    assert score.ci_low == pytest.approx(0.75) and score.ci_high == pytest.approx(0.75)  # same ratio in every window
    assert score.loss_recovered == pytest.approx(0.5)
    assert score.undefined_reason is None
    empty = causal_score([], ablation=Ablation.MEAN, ablation_value=0.0)
    assert math.isnan(empty.value) and empty.undefined_reason == "no held-out windows to run"


@pytest.mark.parametrize("family", FAMILIES)
def test_starting_replaced_rows_at_the_neurons_block_changes_no_number(tiny_model_factory, family):
    """The replaced rows reuse the unchanged run's hidden states entering the neuron's block (earlier blocks are
    skipped); every KL and loss must equal the full forward pass's."""
    directory = str(tiny_model_factory(family))
    model = _scaled(load_model(directory, dtype="float32", causal_lm=True).model, 1, NEURON, 200.0)
    hook_point = resolve_hook_point(model.base_model)
    windows = _windows(count=3, seed=3)
    rng = np.random.default_rng(4)
    requests = [CausalRequest(neuron, NeuronId(1, neuron), tuple((w, 5 * rng.normal(size=len(t)))
                                                                 for w, t in windows.items()), ablation_value=0.5)
                for neuron in (NEURON, NEURON + 1)]
    calls = []
    first_block = model.base_model.get_submodule(hook_point.module_path(0))
    handle = first_block.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    full = CausalRunner(model, hook_point, prefix_ids=(0,), batch_size=4, reuse_prefix=False).score_layer(
        1, requests, windows.__getitem__, bootstrap_samples=0)
    rows_through_layer_0 = sum(calls)
    calls.clear()
    reused = CausalRunner(model, hook_point, prefix_ids=(0,), batch_size=4).score_layer(
        1, requests, windows.__getitem__, bootstrap_samples=0)
    handle.remove()
    # 3 windows: 3 unchanged rows + 2 neurons x (simulated, ablated) x 3; with reuse only the unchanged rows run
    # through layer 0.
    assert (rows_through_layer_0, sum(calls)) == (3 + 12, 3)
    for key in full:
        assert full[key].kl_ablated > 1e-6
        for name in ("kl_simulated", "kl_ablated", "loss_true", "loss_simulated", "loss_ablated"):
            assert getattr(reused[key], name) == pytest.approx(getattr(full[key], name), rel=1e-4, abs=1e-7), name
    # The blocks were put back: the model runs as before.
    assert all(type(block).__name__ != "PassThrough" for block in model.modules())
