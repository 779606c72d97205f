"""Running the subject with one neuron's activations replaced, batched so one forward pass serves many neurons.

Every held-out window of a layer's requests becomes a group of rows: the unchanged run once (shared by every neuron
scored on that window), then a simulated and an ablated row per neuron. Windows are taken a batch at a time: their
unchanged rows in one pass, then their replaced rows packed into batches regardless of neuron, and a forward
pre-hook on the layer's MLP output projection overwrites, row by row, the one neuron's activations at the window's
positions. The special-token prefix (BOS) is never replaced and never compared.

The blocks before the neuron's layer compute the same thing for every row of a window, so the unchanged run keeps
the hidden states entering the neuron's block, and the replaced rows start there: the earlier blocks are swapped
for pass-throughs for that forward pass and a pre-hook on the neuron's block feeds it the kept states.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.causal.metric import Ablation, CausalScore, WindowDivergence, causal_score
from neuron_explainer.subject.hooks import HookPoint
from neuron_explainer.core.neurons import NeuronId

logger = logging.getLogger(__name__)


REUSE_FROM_DEPTH = 4
"""Reuse the earlier blocks only from layer depth / 4 on: below that they save less than the reuse costs (bundled
model: +10% CPU at layer 2 of 30, -24% at layer 14; docs/method.md)."""


@dataclass(frozen=True)
class CausalRequest:
    """One score to compute: a neuron, its held-out windows and what to put in place of its activations."""

    key: Hashable
    """The caller's handle for the result (e.g. the score's row id)."""
    neuron: NeuronId
    """The neuron."""
    windows: tuple[tuple[int, np.ndarray], ...]
    """(window id, simulated activations in the neuron's true units, one per window position)."""
    ablation_value: float
    """The constant activation of the ablated run (the neuron's mean, or 0)."""


@dataclass(frozen=True)
class _Row:
    window_id: int
    request: int | None
    """Index into the requests; None for the unchanged run."""
    simulated: bool


class CausalRunner:
    """A causal LM with its MLP hook point, ready to run windows with replaced neurons."""

    def __init__(self, model: Any, hook_point: HookPoint, *, prefix_ids: Sequence[int] = (),
                 batch_size: int = 16, reuse_prefix: bool = True) -> None:
        self.model = model
        self.hook_point = hook_point
        self.prefix_ids = tuple(int(token) for token in prefix_ids)
        self.batch_size = max(1, batch_size)
        self.reuse_prefix = reuse_prefix
        """Start replaced rows at the neuron's block from the unchanged run's hidden states (same numbers, less
        work for later layers); False runs every row through the whole model."""
        self._block_returns_tuple = False
        """Whether the model's blocks return a tuple (seen in the unchanged run, which always comes first)."""

    def _note_output_kind(self, module: Any, args: tuple[Any, ...], output: Any) -> None:
        self._block_returns_tuple = isinstance(output, tuple)

    def score_layer(self, layer: int, requests: Sequence[CausalRequest], window_tokens: Callable[[int], np.ndarray],
                    *, ablation: Ablation = Ablation.MEAN, bootstrap_samples: int = 1000,
                    seed: int = 0) -> dict[Hashable, CausalScore]:
        """Causal scores of requests for neurons of one layer; `window_tokens(id)` gives a window's token ids."""
        groups: dict[int, list[_Row]] = {}
        for index, request in enumerate(requests):
            if request.neuron.layer != layer:
                raise ValueError(f"request for {request.neuron} given to layer {layer}")
            for window_id, _ in request.windows:
                rows = groups.setdefault(window_id, [_Row(window_id, None, False)])
                rows += [_Row(window_id, index, True), _Row(window_id, index, False)]
        remaining = {window_id: len(group) for window_id, group in groups.items()}
        replacements = [{window_id: values for window_id, values in request.windows} for request in requests]
        sums: list[dict[int, dict[str, float]]] = [{} for _ in requests]
        unchanged: dict[int, tuple[Any, Any, float]] = {}
        block_inputs: dict[int, Any] = {}
        """Hidden states entering the neuron's block in the unchanged run, per window still to be replaced."""
        windows = sorted(groups)
        for chunk_start in range(0, len(windows), self.batch_size):
            # A batch of windows' unchanged rows first, then their replaced rows in full batches: these start from
            # the unchanged run's hidden states, and the unchanged outputs are what they are compared with.
            chunk = windows[chunk_start:chunk_start + self.batch_size]
            edited = [row for window_id in chunk for row in groups[window_id][1:]]
            parts = [[groups[window_id][0] for window_id in chunk]]
            parts += [edited[start:start + self.batch_size] for start in range(0, len(edited), self.batch_size)]
            for part in parts:
                self._score_rows(layer, part, requests, replacements, window_tokens, unchanged, block_inputs, sums,
                                 remaining)
        results: dict[Hashable, CausalScore] = {}
        for index, request in enumerate(requests):
            windows = [WindowDivergence(window_id=window_id, tokens=int(values["tokens"]),
                                        kl_simulated=values["kl_simulated"], kl_ablated=values["kl_ablated"],
                                        loss_true=values["loss_true"], loss_simulated=values["loss_simulated"],
                                        loss_ablated=values["loss_ablated"])
                       for window_id, values in sorted(sums[index].items())]
            results[request.key] = causal_score(windows, ablation=ablation, ablation_value=request.ablation_value,
                                                bootstrap_samples=bootstrap_samples, seed=seed)
        return results

    def _score_rows(self, layer: int, part: Sequence[_Row], requests: Sequence[CausalRequest],
                    replacements: Sequence[dict[int, np.ndarray]], window_tokens: Callable[[int], np.ndarray],
                    unchanged: dict[int, tuple[Any, Any, float]], block_inputs: dict[int, Any],
                    sums: list[dict[int, dict[str, float]]], remaining: dict[int, int]) -> None:
        """Run rows that are all unchanged or all replaced, and add what they say to `sums`."""
        log_probs = self._run(layer, part, requests, replacements, window_tokens, block_inputs)
        for row, row_log_probs in zip(part, log_probs):
            tokens = window_tokens(row.window_id)
            if row.request is None:
                unchanged[row.window_id] = (row_log_probs, row_log_probs.exp(), _next_token_loss(row_log_probs, tokens))
            else:
                true_log_probs, true_probs, true_loss = unchanged[row.window_id]
                kl = float((true_probs * (true_log_probs - row_log_probs)).sum())
                entry = sums[row.request].setdefault(row.window_id, {"loss_true": true_loss,
                                                                     "tokens": float(len(tokens))})
                kind = "simulated" if row.simulated else "ablated"
                entry[f"kl_{kind}"] = kl
                entry[f"loss_{kind}"] = _next_token_loss(row_log_probs, tokens)
            remaining[row.window_id] -= 1
            if remaining[row.window_id] == 0:
                del unchanged[row.window_id]
                block_inputs.pop(row.window_id, None)

    def _run(self, layer: int, batch: Sequence[_Row], requests: Sequence[CausalRequest],
             replacements: Sequence[dict[int, np.ndarray]], window_tokens: Callable[[int], np.ndarray],
             block_inputs: dict[int, Any]) -> Any:
        """Log-probabilities [rows, window positions, vocab] (float32) of one batch with its replacements; rows
        that are all unchanged keep their neuron block's input in `block_inputs`, rows that are all replaced start
        from it (with `reuse_prefix`, past layer 0)."""
        import torch

        device = next(self.model.parameters()).device
        prefix = len(self.prefix_ids)
        input_ids = torch.tensor(np.stack([np.concatenate([np.asarray(self.prefix_ids, dtype=np.int64),
                                                           np.asarray(window_tokens(row.window_id), dtype=np.int64)])
                                           for row in batch]), device=device)
        edits = []
        for position, row in enumerate(batch):
            if row.request is None:
                continue
            request = requests[row.request]
            values = (replacements[row.request][row.window_id] if row.simulated
                      else np.full(input_ids.shape[1] - prefix, request.ablation_value))
            edits.append((position, request.neuron.neuron, torch.as_tensor(np.asarray(values, dtype=np.float32))))

        def replace(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            hidden = args[0].clone()
            for position, neuron, values in edits:
                hidden[position, prefix:, neuron] = values.to(device=hidden.device, dtype=hidden.dtype)
            return (hidden, *args[1:])

        backbone = self.model.base_model
        handles = [backbone.get_submodule(self.hook_point.module_path(layer)).register_forward_pre_hook(replace)]
        blocks = _blocks(backbone, self.hook_point, layer) if self.reuse_prefix and layer > 0 else None
        if blocks is not None and layer < len(blocks) // REUSE_FROM_DEPTH:
            blocks = None
        originals = list(blocks[:layer]) if blocks is not None else []
        try:
            if blocks is not None:
                if not edits:
                    handles.append(blocks[layer].register_forward_pre_hook(
                        _keep_block_input(batch, block_inputs), with_kwargs=True))
                    handles.append(blocks[layer].register_forward_hook(self._note_output_kind))
                else:
                    states = torch.stack([block_inputs[row.window_id] for row in batch])
                    handles.append(blocks[layer].register_forward_pre_hook(_feed_block_input(states),
                                                                           with_kwargs=True))
                    for position, block in enumerate(originals):
                        blocks[position] = _pass_through_class()(block, self._block_returns_tuple)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, use_cache=False).logits[:, prefix:]
        finally:
            for handle in handles:
                handle.remove()
            for position, block in enumerate(originals):
                blocks[position] = block
        return torch.log_softmax(logits.float(), dim=-1)


def _blocks(backbone: Any, hook_point: HookPoint, layer: int) -> Any:
    """The backbone's list of blocks, indexed by layer, found from the hook's module path (`layers.3.mlp.down_proj`,
    `h.3.mlp.c_proj`); None when the path names no such list (an unusual explicit template: no reuse then)."""
    import torch

    parts = hook_point.module_path(layer).split(".")
    if str(layer) not in parts:
        return None
    try:
        blocks = backbone.get_submodule(".".join(parts[:parts.index(str(layer))]))
    except AttributeError:
        return None
    return blocks if isinstance(blocks, torch.nn.ModuleList) and len(blocks) > layer else None


def _hidden_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _keep_block_input(batch: Sequence[_Row], block_inputs: dict[int, Any]) -> Callable[..., None]:
    def keep(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = _hidden_argument(args, kwargs)
        for position, row in enumerate(batch):
            block_inputs[row.window_id] = hidden[position].clone()
    return keep


def _feed_block_input(states: Any) -> Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]:
    def feed(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = _hidden_argument(args, kwargs)
        states_here = states.to(device=hidden.device, dtype=hidden.dtype)
        if args:
            return (states_here, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": states_here}
    return feed


@functools.cache
def _pass_through_class() -> type:
    """A module standing in for a block before the neuron's layer: returns its input unchanged, shaped like the
    block's output (a tuple in GPT-2/NeoX-style code, the tensor in newer Llama-style code), and answers attribute
    reads (such as `attention_type`, which picks the attention mask) as the block would. Built on first use, so
    importing this module does not import torch."""
    import torch

    class PassThrough(torch.nn.Module):
        def __init__(self, block: Any, returns_tuple: bool) -> None:
            super().__init__()
            object.__setattr__(self, "_block", block)
            self.returns_tuple = returns_tuple

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(object.__getattribute__(self, "_block"), name)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            hidden = _hidden_argument(args, kwargs)
            return (hidden,) if self.returns_tuple else hidden

    return PassThrough


def _next_token_loss(log_probs: Any, tokens: np.ndarray) -> float:
    """Summed cross-entropy of predicting each window token from the position before it (inside the window)."""
    import torch

    if len(tokens) < 2:
        return 0.0
    targets = torch.as_tensor(np.asarray(tokens[1:], dtype=np.int64), device=log_probs.device)
    return float(-log_probs[:-1].gather(1, targets[:, None]).sum())
