"""Running the subject with one neuron's activations replaced, batched so one forward pass serves many neurons.

Every held-out window of a layer's requests becomes a group of rows: the unchanged run once (shared by every neuron
scored on that window), then a simulated and an ablated row per neuron. Rows are packed into batches regardless of
neuron, and a forward pre-hook on the layer's MLP output projection overwrites, row by row, the one neuron's
activations at the window's positions. The special-token prefix (BOS) is never replaced and never compared.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.causal.metric import Ablation, CausalScore, WindowDivergence, causal_score
from neuron_explainer.subject.hooks import HookPoint
from neuron_explainer.core.neurons import NeuronId

logger = logging.getLogger(__name__)


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
                 batch_size: int = 16) -> None:
        self.model = model
        self.hook_point = hook_point
        self.prefix_ids = tuple(int(token) for token in prefix_ids)
        self.batch_size = max(1, batch_size)

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
        rows = [row for window_id in sorted(groups) for row in groups[window_id]]
        remaining = {window_id: len(group) for window_id, group in groups.items()}
        replacements = [{window_id: values for window_id, values in request.windows} for request in requests]
        sums: list[dict[int, dict[str, float]]] = [{} for _ in requests]
        unchanged: dict[int, tuple[Any, Any, float]] = {}
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            log_probs = self._run(layer, batch, requests, replacements, window_tokens)
            for row, row_log_probs in zip(batch, log_probs):
                tokens = window_tokens(row.window_id)
                if row.request is None:
                    unchanged[row.window_id] = (row_log_probs, row_log_probs.exp(),
                                                _next_token_loss(row_log_probs, tokens))
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

    def _run(self, layer: int, batch: Sequence[_Row], requests: Sequence[CausalRequest],
             replacements: Sequence[dict[int, np.ndarray]], window_tokens: Callable[[int], np.ndarray]) -> Any:
        """Log-probabilities [rows, window positions, vocab] (float32) of one batch with its replacements."""
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
        handle = backbone.get_submodule(self.hook_point.module_path(layer)).register_forward_pre_hook(replace)
        try:
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, use_cache=False).logits[:, prefix:]
        finally:
            handle.remove()
        return torch.log_softmax(logits.float(), dim=-1)


def _next_token_loss(log_probs: Any, tokens: np.ndarray) -> float:
    """Summed cross-entropy of predicting each window token from the position before it (inside the window)."""
    import torch

    if len(tokens) < 2:
        return 0.0
    targets = torch.as_tensor(np.asarray(tokens[1:], dtype=np.int64), device=log_probs.device)
    return float(-log_probs[:-1].gather(1, targets[:, None]).sum())
