"""How often a neuron's weight view agrees with what its recording shows, against a shuffled-neuron baseline.

Per neuron, from the top windows: the *firing tokens* (the token at each top window's maximum) and the *next
tokens* (the token after it, when the window has one). The input view agrees when one of its top-k exciting tokens
is a firing token; the output view agrees when one of its top-k promoted tokens is a next token. The baseline gives
each neuron the view of another neuron of the same layer (a seeded derangement), so frequent tokens that every view
and every list contain do not count as agreement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from neuron_explainer.activations import RecordStore
from neuron_explainer.activations.weight_views import DIRECTORY, WeightViews
from neuron_explainer.core.errors import UserError


@dataclass(frozen=True)
class LayerAgreement:
    """Agreement rates of one layer."""

    layer: int
    """The block."""
    neurons: int
    """Neurons compared."""
    input_matched: float
    """Fraction whose exciting tokens include a firing token."""
    input_shuffled: float
    """The same with another neuron's view."""
    output_matched: float
    """Fraction whose promoted tokens include a next token."""
    output_shuffled: float
    """The same with another neuron's view."""


def weight_view_agreement(store: RecordStore, *, top: int = 20, seed: int = 0) -> list[LayerAgreement]:
    """Agreement per recorded layer that has weight views."""
    views = WeightViews.open(store)
    if views is None:
        raise UserError(f"{store.path} has no weight views; run `neuron-explainer weights --records {store.path}`")
    tokens = np.asarray(store.token_ids)
    report = []
    for layer in store.layers:
        if not views.has_layer(layer):
            continue
        with np.load(store.path / DIRECTORY / f"layer_{layer:03d}.npz") as data:
            exciting, promoted = data["exciting_ids"][:, :top], data["promoted_ids"][:, :top]
        window_ids = np.load(store.path / f"layer_{layer:03d}" / "top_windows.npy")
        activations = np.load(store.path / f"layer_{layer:03d}" / "top_activations.npy", mmap_mode="r")
        neurons = window_ids.shape[0]
        firing: list[set[int]] = []
        following: list[set[int]] = []
        for neuron in range(neurons):
            positions = np.asarray(activations[neuron], dtype=np.float32).argmax(axis=1)
            rows = tokens[window_ids[neuron]]
            firing.append({int(row[position]) for row, position in zip(rows, positions)})
            following.append({int(row[position + 1]) for row, position in zip(rows, positions)
                              if position + 1 < rows.shape[0]})
        order = list(range(neurons))
        random.Random(f"weights:{seed}:{layer}").shuffle(order)
        other = {order[index]: order[(index + 1) % neurons] for index in range(neurons)}

        def rate(lists: np.ndarray, targets: list[set[int]], partner: dict[int, int] | None) -> float:
            hits = sum(bool(targets[neuron] & set(lists[partner[neuron] if partner else neuron].tolist()))
                       for neuron in range(neurons))
            return hits / neurons

        report.append(LayerAgreement(layer=layer, neurons=neurons,
                                     input_matched=rate(exciting, firing, None),
                                     input_shuffled=rate(exciting, firing, other),
                                     output_matched=rate(promoted, following, None),
                                     output_shuffled=rate(promoted, following, other)))
    return report
