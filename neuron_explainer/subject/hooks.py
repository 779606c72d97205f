"""Where a model's MLP neurons live, and capturing them without running the rest of the model.

A neuron is one unit of the input to a block's MLP output projection: act(gate)*up for gated MLPs, GELU(fc)
for GPT-2 / NeoX / BERT. A forward pre-hook on the projection sees exactly that tensor. The hook of the deepest
requested layer raises a private exception that ends the forward pass there, so later blocks, the final norm
and the LM head never run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from neuron_explainer.core.errors import UserError

LAYER_PLACEHOLDER = "{layer}"
GATED_PROJECTION = "mlp.down_proj"
"""Output projection of gated MLPs (SwiGLU / GeGLU): their neurons act(gate)*up take large values of both signs."""


def is_gated_mlp(hook_template: str) -> bool:
    """Whether a hook point is the input of a gated MLP's output projection."""
    return hook_template.endswith(GATED_PROJECTION)


@dataclass(frozen=True)
class _Rule:
    suffix: str
    family: str
    required_sibling: str | None = None


# Order matters only for models that match several rules (none of the supported families do).
_RULES = (
    _Rule(GATED_PROJECTION, "gated MLP (Llama, Mistral, Qwen, Gemma, SmolLM, ...)"),
    _Rule("mlp.c_proj", "GPT-2"),
    _Rule("mlp.dense_4h_to_h", "GPT-NeoX / Pythia"),
    _Rule("mlp.fc_out", "GPT-J"),
    _Rule("mlp.fc2", "Phi"),
    # BERT's attention block also has `attention.output.dense`; the MLP one is the sibling of `intermediate`.
    _Rule("output.dense", "BERT-style encoder", required_sibling="intermediate"),
)


@dataclass(frozen=True)
class HookPoint:
    """Which module's input holds a layer's MLP neurons, and the shape of that space."""

    template: str
    """Module path relative to the loaded model, with `{layer}` for the block index."""
    num_layers: int
    """Number of blocks that have the module (layers 0..num_layers-1)."""
    neurons_per_layer: int
    """Width of the projection's input, i.e. MLP neurons per layer."""
    family: str
    """The rule that matched, or `explicit template`."""

    def module_path(self, layer: int) -> str:
        """The module path of one layer's output projection."""
        return self.template.replace(LAYER_PLACEHOLDER, str(layer))


def resolve_hook_point(model: Any, *, hook_template: str | None = None) -> HookPoint:
    """Find the MLP output projection of every block, automatically or from an explicit `{layer}` template."""
    if hook_template is not None:
        return _from_template(model, hook_template)
    names = {name for name, _ in model.named_modules()}
    for rule in _RULES:
        pattern = re.compile(rf"^(?P<prefix>(?:.+\.)?)(?P<index>\d+)\.{re.escape(rule.suffix)}$")
        groups: dict[str, set[int]] = {}
        for name in names:
            match = pattern.match(name)
            if match is None:
                continue
            prefix, index = match.group("prefix"), int(match.group("index"))
            if rule.required_sibling and f"{prefix}{index}.{rule.required_sibling}" not in names:
                continue
            groups.setdefault(prefix, set()).add(index)
        if not groups:
            continue
        if len(groups) > 1:
            found = ", ".join(f"{prefix}{LAYER_PLACEHOLDER}.{rule.suffix}" for prefix in sorted(groups))
            raise UserError(f"several stacks of MLP projections found ({found}); pick one with --hook-template")
        prefix, indices = next(iter(groups.items()))
        if indices != set(range(len(indices))):
            raise UserError(f"MLP projections {prefix}N.{rule.suffix} are not numbered 0..N-1; "
                            "pass --hook-template")
        return _checked(model, f"{prefix}{LAYER_PLACEHOLDER}.{rule.suffix}", len(indices), rule.family)
    architecture = type(model).__name__
    raise UserError(f"cannot find the MLP output projection of {architecture}; pass --hook-template with the "
                    "module path of the projection whose input is the MLP hidden layer, e.g. "
                    "'layers.{layer}.mlp.down_proj'")


def _from_template(model: Any, template: str) -> HookPoint:
    if LAYER_PLACEHOLDER not in template:
        raise UserError(f"--hook-template {template!r} must contain {LAYER_PLACEHOLDER}")
    for candidate in _template_variants(model, template):
        if _find_module(model, candidate.replace(LAYER_PLACEHOLDER, "0")) is None:
            continue
        count = 0
        while _find_module(model, candidate.replace(LAYER_PLACEHOLDER, str(count))) is not None:
            count += 1
        return _checked(model, candidate, count, "explicit template")
    examples = [name for name, _ in model.named_modules() if re.search(r"\.0\.", name)][:6]
    raise UserError(f"--hook-template {template!r} matches no module of {type(model).__name__} "
                    f"(layer-0 modules look like: {', '.join(examples) or 'none'})")


def _template_variants(model: Any, template: str) -> list[str]:
    # Users copy paths from the causal-LM printout (`model.layers...`); the recorder loads the bare backbone.
    variants = [template]
    prefix = getattr(model, "base_model_prefix", "")
    if prefix:
        if template.startswith(prefix + "."):
            variants.append(template[len(prefix) + 1:])
        else:
            variants.append(f"{prefix}.{template}")
    return variants


def _find_module(model: Any, path: str) -> Any | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _checked(model: Any, template: str, num_layers: int, family: str) -> HookPoint:
    widths = {_input_width(model.get_submodule(template.replace(LAYER_PLACEHOLDER, str(layer))), template)
              for layer in range(num_layers)}
    if len(widths) != 1:
        raise UserError(f"MLP widths differ across layers ({sorted(widths)}); layers of unequal width are not "
                        "supported")
    return HookPoint(template=template, num_layers=num_layers, neurons_per_layer=widths.pop(), family=family)


def _input_width(module: Any, template: str) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    if hasattr(module, "nx"):  # transformers' Conv1D (GPT-2) stores its weight transposed
        return int(module.nx)
    raise UserError(f"cannot tell the input width of {type(module).__name__} at {template!r}; point "
                    "--hook-template at a Linear or Conv1D projection")


class _StopForward(Exception):
    """Raised by the deepest hook to end the forward pass once every requested layer is captured."""


def capture_mlp_inputs(model: Any, hook_point: HookPoint, layers: Sequence[int], forward: Callable[[], Any],
                       consume: Callable[[int, Any], None]) -> None:
    """Run `forward()`, handing each requested layer's MLP input to `consume(layer, tensor)` as it is computed.

    The tensor is [batch, positions, neurons] in the model's dtype on its device; consuming it inside the hook,
    while it is still in cache, is what keeps recording cheap. The forward pass stops after the deepest layer.
    """
    if not layers:
        raise ValueError("no layers requested")
    deepest = max(layers)
    reached: set[int] = set()

    def make_hook(layer: int) -> Callable[[Any, tuple[Any, ...]], None]:
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            reached.add(layer)
            consume(layer, args[0])
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [model.get_submodule(hook_point.module_path(layer)).register_forward_pre_hook(make_hook(layer))
               for layer in sorted(set(layers))]
    try:
        forward()
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(layers) - reached)
    if missing:
        raise RuntimeError(f"the forward pass never reached the MLP projection of layers {missing}")


def run_truncated(model: Any, hook_point: HookPoint, deepest_layer: int, forward: Callable[[], Any]) -> None:
    """Run `forward()` up to the deepest layer's MLP projection and capture nothing (the benchmark's baseline)."""

    def stop(module: Any, args: tuple[Any, ...]) -> None:
        raise _StopForward

    handle = model.get_submodule(hook_point.module_path(deepest_layer)).register_forward_pre_hook(stop)
    try:
        forward()
    except _StopForward:
        pass
    finally:
        handle.remove()
