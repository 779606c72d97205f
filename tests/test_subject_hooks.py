"""Hook points: automatic resolution per family, exact capture of the MLP hidden layer, early stop, templates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuron_explainer.core.errors import UserError
from neuron_explainer.subject import (
    Subject,
    capture_mlp_inputs,
    describe_model,
    load_model,
    resolve_hook_point,
    token_strings,
)

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "gpt2", "gpt_neox", "bert"]
EXPECTED = {
    "llama": ("layers.{layer}.mlp.down_proj", 48),
    "mistral": ("layers.{layer}.mlp.down_proj", 48),
    "qwen2": ("layers.{layer}.mlp.down_proj", 48),
    "gemma": ("layers.{layer}.mlp.down_proj", 48),
    "gpt2": ("h.{layer}.mlp.c_proj", 128),
    "gpt_neox": ("layers.{layer}.mlp.dense_4h_to_h", 64),
    "bert": ("encoder.layer.{layer}.output.dense", 64),
}
_ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
                "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


def _mlp_input_module(model, family: str, layer: int):
    """The module whose input is the MLP's input (post-norm residual), for recomputing the hidden layer by hand."""
    if family == "gpt2":
        return model.get_submodule(f"h.{layer}.mlp")
    if family == "bert":
        return model.get_submodule(f"encoder.layer.{layer}.intermediate")
    return model.get_submodule(f"layers.{layer}.mlp")


def _recompute(model, family: str, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The MLP hidden layer written out from the weights: act(gate)*up, GELU(c_fc), GELU(dense_h_to_4h), ..."""
    config = model.config
    if family in ("llama", "mistral", "qwen2", "gemma"):
        mlp = model.get_submodule(f"layers.{layer}.mlp")
        gate = x @ mlp.gate_proj.weight.T
        up = x @ mlp.up_proj.weight.T
        act = _ACTIVATIONS[config.hidden_activation if family == "gemma" and getattr(
            config, "hidden_activation", None) else config.hidden_act]
        return act(gate) * up
    if family == "gpt2":
        mlp = model.get_submodule(f"h.{layer}.mlp")
        return _ACTIVATIONS[config.activation_function](x @ mlp.c_fc.weight + mlp.c_fc.bias)
    if family == "gpt_neox":
        mlp = model.get_submodule(f"layers.{layer}.mlp")
        return _ACTIVATIONS[config.hidden_act](x @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias)
    dense = model.get_submodule(f"encoder.layer.{layer}.intermediate.dense")
    return _ACTIVATIONS[config.hidden_act](x @ dense.weight.T + dense.bias)


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_captures_exactly_the_mlp_hidden_layer(tiny_model_factory, family):
    subject = Subject.load(str(tiny_model_factory(family)), dtype="float32")
    template, width = EXPECTED[family]
    assert subject.hook_point.template == template
    assert (subject.num_layers, subject.neurons_per_layer) == (2, width)
    token_ids = torch.randint(3, 300, (3, 11), generator=torch.Generator().manual_seed(0))
    captured = subject.activations(token_ids, layers=[0, 1])
    # A full forward pass with hooks on the MLP inputs, recomputing the hidden layer from the weights.
    mlp_inputs = {}
    handles = [_mlp_input_module(subject.model, family, layer).register_forward_hook(
        lambda module, args, output, layer=layer: mlp_inputs.__setitem__(layer, args[0])) for layer in (0, 1)]
    with torch.inference_mode():
        subject._forward(subject._with_special_tokens(token_ids))
    for handle in handles:
        handle.remove()
    offset = len(subject.special_tokens.prefix)
    for layer in (0, 1):
        with torch.inference_mode():
            expected = _recompute(subject.model, family, layer, mlp_inputs[layer])[:, offset:offset + 11]
        assert captured[layer].shape == (3, 11, width)
        torch.testing.assert_close(captured[layer], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_special_tokens_wrap_the_window_and_are_not_returned(tiny_model_factory, family):
    subject = Subject.load(str(tiny_model_factory(family)))
    tokenizer = subject.tokenizer
    if family == "bert":
        # The tiny tokenizer has no CLS/SEP, so the encoder policy falls back to BOS/EOS.
        assert subject.special_tokens.prefix == (tokenizer.bos_token_id,)
        assert subject.special_tokens.suffix == (tokenizer.eos_token_id,)
    else:
        assert subject.special_tokens.prefix == (tokenizer.bos_token_id,) and subject.special_tokens.suffix == ()
    ids = subject._with_special_tokens([[5, 6, 7]])
    assert ids.tolist() == [[*subject.special_tokens.prefix, 5, 6, 7, *subject.special_tokens.suffix]]
    assert subject.tokenizer_info()["prefix_token_ids"] == list(subject.special_tokens.prefix)


def _count_calls(module, counter: dict[str, int], name: str):
    return module.register_forward_hook(lambda *args: counter.__setitem__(name, counter.get(name, 0) + 1))


def test_forward_pass_stops_after_the_deepest_requested_layer(tiny_llama):
    loaded = load_model(str(tiny_llama), causal_lm=True)
    model = loaded.model
    hook_point = resolve_hook_point(model)
    assert hook_point.template == "model.layers.{layer}.mlp.down_proj"
    calls: dict[str, int] = {}
    handles = [_count_calls(model.get_submodule(name), calls, name)
               for name in ("model.layers.0.mlp.down_proj", "model.layers.1", "model.norm", "lm_head")]
    received = []
    capture_mlp_inputs(model, hook_point, [0], lambda: model(input_ids=torch.tensor([[3, 4, 5]])),
                       lambda layer, tensor: received.append((layer, tuple(tensor.shape))))
    assert received == [(0, (1, 3, 48))]
    assert calls == {}  # not even layer 0's projection ran: the pre-hook stopped the pass
    model(input_ids=torch.tensor([[3, 4, 5]]))
    assert calls == {"model.layers.0.mlp.down_proj": 1, "model.layers.1": 1, "model.norm": 1, "lm_head": 1}
    for handle in handles:
        handle.remove()
    assert not any(module._forward_pre_hooks for module in model.modules())


def test_forward_only_runs_the_same_truncated_pass(tiny_llama):
    subject = Subject.load(str(tiny_llama))
    calls: dict[str, int] = {}
    handle = _count_calls(subject.model.get_submodule("layers.1.self_attn"), calls, "layer1")
    subject.forward_only([[3, 4, 5]], deepest_layer=0)
    subject.activations([[3, 4, 5]], layers=[0])
    assert calls == {}
    subject.forward_only([[3, 4, 5]], deepest_layer=1)
    assert calls == {"layer1": 1}
    handle.remove()


def test_explicit_template_accepts_causal_lm_paths_and_rejects_bad_ones(tiny_llama):
    subject = Subject.load(str(tiny_llama), hook_template="model.layers.{layer}.mlp.down_proj")
    assert subject.hook_point.template == "layers.{layer}.mlp.down_proj"
    assert subject.hook_point.family == "explicit template"
    assert subject.num_layers == 2 and subject.neurons_per_layer == 48
    # Any Linear works: the up projection's input is the residual stream (hidden size 32).
    other = resolve_hook_point(subject.model, hook_template="layers.{layer}.mlp.up_proj")
    assert other.neurons_per_layer == 32
    with pytest.raises(UserError, match="must contain"):
        resolve_hook_point(subject.model, hook_template="layers.0.mlp.down_proj")
    with pytest.raises(UserError, match="matches no module"):
        resolve_hook_point(subject.model, hook_template="blocks.{layer}.ffn.out")
    with pytest.raises(UserError, match="input width"):
        resolve_hook_point(subject.model, hook_template="layers.{layer}.mlp.act_fn")


def test_unknown_architecture_names_the_flag():
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ffn_out = torch.nn.Linear(8, 4)

    class Custom(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(UserError, match="--hook-template"):
        resolve_hook_point(Custom())
    hook_point = resolve_hook_point(Custom(), hook_template="blocks.{layer}.ffn_out")
    assert (hook_point.num_layers, hook_point.neurons_per_layer) == (2, 8)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_describe_model_reads_no_weights(tiny_model_factory, family):
    info = describe_model(str(tiny_model_factory(family)))
    template, width = EXPECTED[family]
    assert (info.hook_point, info.neurons_per_layer, info.num_layers) == (template, width, 2)
    assert info.total_neurons == 2 * width and info.is_encoder == (family == "bert")
    assert info.parameters > 0 and info.hidden_size == 32
    assert list(info.as_dict())[:3] == ["model_id", "architecture", "model_type"]


def test_describe_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        describe_model(str(tmp_path / "nothing-here"))


def test_token_strings_keep_spaces_and_join_to_the_text(tiny_llama):
    subject = Subject.load(str(tiny_llama))
    strings = token_strings(subject.tokenizer)
    assert len(strings) == len(subject.tokenizer)
    ids = subject.encode("The quick brown fox jumps")
    assert "".join(strings[index] for index in ids) == "The quick brown fox jumps"
    assert any(strings[index].startswith(" ") for index in ids)
