"""Neuron addressing: `NeuronId` and the SPEC grammar (`3:17`, `3:*`, `0-3:0-99`, `all`, comma lists)."""

from __future__ import annotations

from dataclasses import dataclass

from neuron_explainer.core.errors import UserError


@dataclass(frozen=True, order=True)
class NeuronId:
    """One MLP neuron: a unit of the input to a layer's MLP output projection."""

    layer: int
    """Zero-based transformer block index."""
    neuron: int
    """Zero-based unit index within that block's MLP hidden layer."""

    def __str__(self) -> str:
        return f"{self.layer}:{self.neuron}"

    @classmethod
    def parse(cls, text: str) -> "NeuronId":
        """Parse `L:N`."""
        try:
            layer_text, neuron_text = text.strip().split(":")
            return cls(int(layer_text), int(neuron_text))
        except ValueError:
            raise UserError(f"malformed neuron {text!r}: expected LAYER:NEURON such as 3:17") from None


def range_bounds(piece: str) -> tuple[int, int]:
    """The inclusive bounds of `N` or `A-B` (ValueError when either is not an integer)."""
    if "-" in piece:
        start_text, end_text = piece.split("-", 1)
        return int(start_text), int(end_text)
    return int(piece), int(piece)


def parse_range(text: str, *, upper: int, what: str) -> list[int]:
    """Parse `*`, `N`, `A-B` (inclusive) or comma-joined pieces into sorted unique ints in [0, upper)."""
    values: set[int] = set()
    for piece in text.split(","):
        piece = piece.strip()
        if piece in ("*", "all"):
            values.update(range(upper))
            continue
        try:
            start, end = range_bounds(piece)
        except ValueError:
            raise UserError(f"malformed {what} range {piece!r}: use N, A-B, * or a comma list") from None
        if start > end:
            raise UserError(f"malformed {what} range {piece!r}: start is after end")
        if start < 0 or end >= upper:
            raise UserError(f"{what} {piece} out of range: the model has {what}s 0-{upper - 1}")
        values.update(range(start, end + 1))
    return sorted(values)


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """Parse a layer SPEC (`all`, `0-3`, `1,5`, `*`)."""
    if not spec.strip():
        raise UserError("empty layer spec: use all, N, A-B or a comma list")
    return parse_range(spec, upper=num_layers, what="layer")


def parse_neuron_spec(spec: str, num_layers: int, neurons_per_layer: int) -> list[NeuronId]:
    """Parse a neuron SPEC into sorted unique NeuronIds, checked against the model's shape.

    Grammar: `all` | item (`,` item)*; item = LAYERS `:` NEURONS, each a number, range `A-B` or `*`.
    Commas inside one item's neuron part are not supported; list items instead (`3:1,3:5`).
    """
    spec = spec.strip()
    if not spec:
        raise UserError("empty neuron spec: use all, L:N, L:*, A-B:C-D or a comma list")
    if spec == "all":
        return [NeuronId(layer, neuron) for layer in range(num_layers) for neuron in range(neurons_per_layer)]
    found: set[NeuronId] = set()
    for item in spec.split(","):
        item = item.strip()
        if item.count(":") != 1:
            raise UserError(f"malformed neuron spec item {item!r}: expected LAYERS:NEURONS such as 3:17 or 0-3:*")
        layer_part, neuron_part = item.split(":")
        for layer in parse_range(layer_part, upper=num_layers, what="layer"):
            for neuron in parse_range(neuron_part, upper=neurons_per_layer, what="neuron"):
                found.add(NeuronId(layer, neuron))
    return sorted(found)
