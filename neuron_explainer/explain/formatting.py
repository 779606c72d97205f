"""Turning activations and token strings into the text the LLMs read: 0-10 scaling and escaping."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

MAX_SCALED = 10
"""Top of the discrete activation scale shown to explainers and predicted by simulators."""

VISIBLE_SPACE = "␣"
"""Stands for a space at the start or end of a token in human-facing displays (`visible_spaces=True`)."""

_NAMED_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def scale_activation(activation: float, max_activation: float) -> int:
    """`min(10, floor(10 * relu(a) / max_a))`; 0 when max_a is not positive (a neuron that never fires)."""
    if not max_activation > 0 or math.isnan(activation):
        return 0
    return min(MAX_SCALED, math.floor(MAX_SCALED * max(activation, 0.0) / max_activation))


def scale_activations(activations: Sequence[float], max_activation: float) -> tuple[int, ...]:
    """Scale a window's activations with the shared maximum (taken over all explain windows)."""
    return tuple(scale_activation(value, max_activation) for value in activations)


def printable_token(token: str, *, visible_spaces: bool = False) -> str:
    """Escape a token so it cannot break a line-and-tab format: backslash, tab, newline and carriage return get
    C-style escapes, other control / invisible / non-ASCII space characters `\\xNN` / `\\uNNNN`.

    Ordinary spaces stay literal by default: a token line starts right after a line break and ends at the only
    tab, so " the" and "the" stay distinguishable, and a literal space keeps the model's own token (`␣` costs
    three tokens in byte-level vocabularies such as SmolLM2's). `visible_spaces` shows leading and trailing
    spaces as `␣` for human-facing displays.
    """
    escaped: list[str] = []
    for character in token:
        if character in _NAMED_ESCAPES:
            escaped.append(_NAMED_ESCAPES[character])
        elif character != " " and unicodedata.category(character) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"):
            code = ord(character)
            escaped.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            escaped.append(character)
    text = "".join(escaped)
    if not visible_spaces or not text:
        return text
    stripped = text.strip(" ")
    if not stripped:
        return VISIBLE_SPACE * len(text)
    leading = len(text) - len(text.lstrip(" "))
    trailing = len(text) - len(text.rstrip(" "))
    return VISIBLE_SPACE * leading + stripped + VISIBLE_SPACE * trailing


def format_pairs(tokens: Sequence[str], values: Sequence[int]) -> str:
    """One `token<TAB>value` line per token (tokens escaped)."""
    return "\n".join(f"{printable_token(token)}\t{value}" for token, value in zip(tokens, values, strict=True))
