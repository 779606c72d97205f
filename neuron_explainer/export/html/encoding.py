"""Turning data into text that is safe inside HTML: escaped markup, JSON that cannot leave its <script> element,
and activations rounded so page data stays small."""

from __future__ import annotations

import html
import json
import math
from typing import Any

import numpy as np

SIGNIFICANT_DIGITS = 4
"""Digits kept of record-store activations relative to the largest one shown on a page."""

# Inside <script> the HTML parser ends the element at `</script` and treats `<!--` specially, whatever the JSON
# means; escaping <, > and & as \uXXXX keeps the same JSON value with none of those characters. U+2028/2029 are
# line terminators in older JavaScript parsers.
_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                                 "\u2029": "\\u2029"})


def escape(text: Any) -> str:
    """`text` as HTML text or a quoted attribute value (& < > " ' escaped)."""
    return html.escape(str(text), quote=True)


def script_safe(json_text: str) -> str:
    """JSON text made safe inside a <script> element, same value (those characters only occur in its strings)."""
    return json_text.translate(_SCRIPT_ESCAPES)


def script_json(value: Any) -> str:
    """Compact JSON of `value` safe to place inside a <script> element or a .js file (no NaN allowed)."""
    return script_safe(json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def finite_or_none(value: float | None) -> float | None:
    """A float for page data: NaN and infinities become None (JSON null)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def decimals_for(scale: float) -> int:
    """Decimal places that keep SIGNIFICANT_DIGITS digits of values up to `scale` in magnitude."""
    if not math.isfinite(scale) or scale <= 0:
        return SIGNIFICANT_DIGITS
    return max(0, SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(scale)))


def rounded(values: Any, decimals: int) -> list[Any]:
    """Activations (any nesting of equal-length sequences) rounded to `decimals` places, as nested lists of
    floats; NaN and infinities become None."""
    array = np.round(np.asarray(values, dtype=np.float64), decimals)
    finite = np.isfinite(array)
    if finite.all():
        return array.tolist()
    return np.where(finite, array, None).tolist()


def number(value: float | None, digits: int = 3) -> str:
    """A metric for display: fixed digits, `n/a` when undefined."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"
