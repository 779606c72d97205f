"""Terminal rendering of one neuron's record (the `show-record` command): windows with activations highlighted."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from enum import Enum
from typing import Any

from neuron_explainer.activations.records import NeuronRecord, Window

# Background colours (xterm-256) from faint to strong green, and the same for red on the negative side.
_POSITIVE_SHADES = (22, 28, 34, 40, 46)
_NEGATIVE_SHADES = (52, 88, 124, 160, 196)
_RESET = "\x1b[0m"
_BRACKET_THRESHOLD = 0.5


class WindowKind(str, Enum):
    """Which of a neuron's window lists to show."""

    TOP = "top"
    BOTTOM = "bottom"
    RANDOM = "random"


def visible(token: str) -> str:
    """A token with newlines and tabs made visible, so a window prints on one line."""
    return token.replace("\n", "↵").replace("\t", "→").replace("\r", "")


def format_record(record: NeuronRecord, *, kind: WindowKind = WindowKind.TOP, windows: int = 5,
                  color: bool = False) -> str:
    """A header with the neuron's statistics and its windows, activations highlighted.

    With `color`, each token's background shade follows its activation relative to the neuron's extreme on that
    side; without, tokens at or beyond half of it are wrapped in [brackets].
    """
    stats = record.stats
    chosen = {WindowKind.TOP: record.top_windows, WindowKind.BOTTOM: record.bottom_windows,
              WindowKind.RANDOM: record.random_windows}[kind]
    negative = kind is WindowKind.BOTTOM
    scale = abs(stats.min) if negative else stats.max
    lines = [f"neuron {record.neuron}: max {stats.max:.3f}  min {stats.min:.3f}  mean {stats.mean:.3f}  "
             f"std {stats.std:.3f}  >0 {stats.fraction_positive:.1%}  over {stats.count} tokens"]
    if not chosen:
        note = " (record with --polarity both)" if negative else ""
        lines.append(f"no {kind.value} windows recorded{note}")
        return "\n".join(lines) + "\n"
    lines.append(f"{kind.value} windows ({min(windows, len(chosen))} of {len(chosen)}):")
    for rank, window in enumerate(chosen[:windows], start=1):
        peak_index = _peak_index(window, negative=negative)
        peak = window.activations[peak_index] if window.activations else float("nan")
        lines.append(f"#{rank}  window {window.window_id}  {'min' if negative else 'max'} {peak:.3f} at "
                     f"{visible(window.tokens[peak_index])!r}" if window.tokens else f"#{rank}  window {window.window_id}")
        lines.append("    " + _highlight(window, scale=scale, negative=negative, color=color))
    return "\n".join(lines) + "\n"


def record_as_dict(record: NeuronRecord, *, kind: WindowKind = WindowKind.TOP, windows: int = 5) -> dict[str, Any]:
    """JSON form: neuron, stats and the chosen windows with tokens and activations."""
    chosen = {WindowKind.TOP: record.top_windows, WindowKind.BOTTOM: record.bottom_windows,
              WindowKind.RANDOM: record.random_windows}[kind]
    return {"neuron": str(record.neuron), "stats": asdict(record.stats), "kind": kind.value,
            "windows": [{"window_id": window.window_id, "tokens": list(window.tokens),
                         "activations": list(window.activations)} for window in chosen[:windows]]}


def _peak_index(window: Window, *, negative: bool) -> int:
    values: Sequence[float] = window.activations
    if not values:
        return 0
    return min(range(len(values)), key=values.__getitem__) if negative else max(range(len(values)),
                                                                                 key=values.__getitem__)


def _highlight(window: Window, *, scale: float, negative: bool, color: bool) -> str:
    pieces = []
    for token, value in zip(window.tokens, window.activations):
        strength = (-value if negative else value) / scale if scale > 0 and math.isfinite(value) else 0.0
        text = visible(token)
        if color:
            if strength > 0.05:
                shades = _NEGATIVE_SHADES if negative else _POSITIVE_SHADES
                shade = shades[min(len(shades) - 1, int(strength * len(shades)))]
                text = f"\x1b[48;5;{shade}m\x1b[38;5;231m{text}{_RESET}"
        elif strength >= _BRACKET_THRESHOLD:
            text = f"[{text}]"
        pieces.append(text)
    return "".join(pieces)
