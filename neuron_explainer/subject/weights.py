"""Weight views of MLP neurons: the tokens a neuron's output pushes up or down, and the tokens that excite it.

Computed from the weights alone, one pass per layer, no corpus:

- **Output tokens.** A neuron adds `a * w` to the residual stream (`w`: its column of the MLP output projection).
  Its direct effect on the logits is `W_U · N(w)`, where `N` is the linear part of the final norm: for RMSNorm the
  effective elementwise gain (read by probing the module, so Gemma's `1 + weight` is handled like Llama's
  `weight`); for LayerNorm the mean is removed first, then the gain. The norm's division by the residual's scale is
  a positive factor shared by every token, so it changes no ranking; the bias adds the same logits for every
  neuron and is left out. The weights reported are logits per unit of activation at unit residual scale.
- **Input tokens.** The activation the neuron would have if the MLP's input were one token's embedding alone: the
  embedding through the block's pre-MLP norm and the MLP itself (`act(gate) * up` on gated MLPs, `act(fc)`
  elsewhere), read at the same hook as the recorder. Attention, earlier blocks and position embeddings are
  ignored (the direct path), which is the method's main limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.core.errors import UserError
from neuron_explainer.subject.hooks import HookPoint, capture_mlp_inputs

_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
_MLP_NORM_NAMES = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")
_VOCAB_CHUNK = 4096


@dataclass(frozen=True)
class LayerWeightViews:
    """Per-neuron top tokens of one layer, from the weights; every array is [neurons, k] (token ids or weights)."""

    layer: int
    """The block."""
    promoted_ids: np.ndarray
    """Token ids whose logits the neuron raises most, strongest first."""
    promoted_weights: np.ndarray
    """Their logit weights (logits per unit activation), descending."""
    suppressed_ids: np.ndarray
    """Token ids whose logits the neuron lowers most, strongest first."""
    suppressed_weights: np.ndarray
    """Their logit weights, ascending (most negative first)."""
    exciting_ids: np.ndarray
    """Token ids whose embeddings alone give the neuron its largest activation."""
    exciting_weights: np.ndarray
    """Those activations, descending."""
    inhibiting_ids: np.ndarray
    """Token ids whose embeddings alone give the most negative activation."""
    inhibiting_weights: np.ndarray
    """Those activations, ascending."""


@dataclass(frozen=True)
class WeightBasis:
    """How the output side was computed for a model (stored with the views)."""

    final_norm: str
    """`rmsnorm` or `layernorm` (the latter also centres the output direction)."""
    tied_embeddings: bool
    """Whether the unembedding is the input embedding matrix."""
    vocab_size: int
    """Tokens ranked (rows of the unembedding that the tokenizer knows)."""


class WeightReader:
    """The pieces of a causal LM that the weight views need, found once per model."""

    def __init__(self, model: Any, hook_point: HookPoint, *, vocab_size: int | None = None) -> None:
        import torch

        self.model = model
        self.backbone = model.base_model
        self.hook_point = hook_point
        unembedding = model.get_output_embeddings()
        if unembedding is None:
            raise UserError(f"{type(model).__name__} has no unembedding (LM head); weight views need a causal LM")
        embedding = model.get_input_embeddings()
        rows = int(unembedding.weight.shape[0])
        self.vocab_size = min(rows, vocab_size) if vocab_size else rows
        self.unembedding = unembedding.weight.detach()[:self.vocab_size].float()
        self.embedding = embedding.weight.detach()[:self.vocab_size]
        self.tied = unembedding.weight.data_ptr() == embedding.weight.data_ptr()
        final_norm = _child(self.backbone, _FINAL_NORM_NAMES, "final norm")
        self.layernorm = isinstance(final_norm, torch.nn.LayerNorm)
        if self.layernorm:
            self.gain = final_norm.weight.detach().float()
        else:
            # Probing with a unit-RMS vector reads the effective gain whatever the parametrisation (w or 1 + w).
            hidden = int(self.unembedding.shape[1])
            probe = torch.ones(1, hidden, dtype=next(final_norm.parameters()).dtype, device=self.unembedding.device)
            with torch.inference_mode():
                self.gain = final_norm(probe)[0].float()

    @property
    def basis(self) -> WeightBasis:
        """How the output side is computed."""
        return WeightBasis(final_norm="layernorm" if self.layernorm else "rmsnorm", tied_embeddings=self.tied,
                           vocab_size=self.vocab_size)

    def output_directions(self, layer: int) -> Any:
        """[hidden, neurons] float32: each neuron's write to the residual stream (the projection's column)."""
        projection = self.backbone.get_submodule(self.hook_point.module_path(layer))
        weight = projection.weight.detach().float()
        if hasattr(projection, "nx"):  # Conv1D stores [in, out]
            return weight.T
        return weight

    def normed_output_directions(self, layer: int) -> Any:
        """[hidden, neurons] float32: the output directions through the linear part of the final norm; the
        unembedding times this is the neurons' logit weights."""
        directions = self.output_directions(layer)
        if self.layernorm:
            directions = directions - directions.mean(dim=0, keepdim=True)
        return self.gain[:, None] * directions

    def input_activations(self, layer: int, token_ids: Any) -> Any:
        """[tokens, neurons] float32: the neuron activations of each token's embedding alone (see the module doc)."""
        import torch

        mlp_path = self.hook_point.module_path(layer).rsplit(".", 1)[0]
        mlp = self.backbone.get_submodule(mlp_path)
        block = self.backbone.get_submodule(mlp_path.rsplit(".", 1)[0])
        norm = _child(block, _MLP_NORM_NAMES, f"pre-MLP norm of layer {layer}")
        captured: list[Any] = []
        with torch.inference_mode():
            hidden = norm(self.embedding[token_ids][None])
            capture_mlp_inputs(self.backbone, self.hook_point, [layer], lambda: mlp(hidden),
                               lambda _layer, tensor: captured.append(tensor[0].float()))
        return captured[0]


def _child(module: Any, names: tuple[str, ...], what: str) -> Any:
    for name in names:
        child = getattr(module, name, None)
        if child is not None:
            return child
    raise UserError(f"cannot find the {what} of {type(module).__name__} (looked for {', '.join(names)}); "
                    "weight views support Llama, Mistral, Qwen, Gemma, GPT-2 and GPT-NeoX layouts")


def layer_weight_views(reader: WeightReader, layer: int, *, top_k: int = 20) -> LayerWeightViews:
    """Top and bottom `top_k` output and input tokens of every neuron of one layer (vocabulary in chunks, so
    memory stays at chunk x neurons)."""
    import torch

    k = min(top_k, reader.vocab_size)
    neurons = reader.hook_point.neurons_per_layer
    best = {name: (torch.full((neurons, 0), 0.0), torch.zeros((neurons, 0), dtype=torch.long))
            for name in ("promoted", "suppressed", "exciting", "inhibiting")}

    def merge(name: str, values: Any, start: int, largest: bool) -> None:
        # values: [chunk, neurons] -> keep the k best per neuron across chunks.
        old_values, old_ids = best[name]
        chunk_ids = torch.arange(start, start + values.shape[0]).expand(neurons, -1)
        all_values = torch.cat([old_values, values.T.cpu()], dim=1)
        all_ids = torch.cat([old_ids, chunk_ids], dim=1)
        top_values, order = torch.topk(all_values, min(k, all_values.shape[1]), dim=1, largest=largest, sorted=True)
        best[name] = (top_values, torch.gather(all_ids, 1, order))

    directions = reader.normed_output_directions(layer)
    for start in range(0, reader.vocab_size, _VOCAB_CHUNK):
        stop = min(start + _VOCAB_CHUNK, reader.vocab_size)
        logits = reader.unembedding[start:stop] @ directions
        merge("promoted", logits, start, True)
        merge("suppressed", logits, start, False)
        activations = reader.input_activations(layer, torch.arange(start, stop, device=reader.embedding.device))
        merge("exciting", activations, start, True)
        merge("inhibiting", activations, start, False)

    def arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
        values, ids = best[name]
        return ids.numpy().astype(np.int32), values.numpy().astype(np.float32)

    promoted_ids, promoted_weights = arrays("promoted")
    suppressed_ids, suppressed_weights = arrays("suppressed")
    exciting_ids, exciting_weights = arrays("exciting")
    inhibiting_ids, inhibiting_weights = arrays("inhibiting")
    return LayerWeightViews(layer=layer, promoted_ids=promoted_ids, promoted_weights=promoted_weights,
                            suppressed_ids=suppressed_ids, suppressed_weights=suppressed_weights,
                            exciting_ids=exciting_ids, exciting_weights=exciting_weights,
                            inhibiting_ids=inhibiting_ids, inhibiting_weights=inhibiting_weights)
