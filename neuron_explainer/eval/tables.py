"""Plain-text tables and JSON helpers shared by the evaluation reports."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError


def json_ready(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None (strict JSON), containers converted recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def write_json(data: Any, path: str | Path) -> Path:
    """Write a report's JSON form to `path` (its directory must exist)."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"cannot write {target}: directory {target.parent} does not exist")
    target.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return target


def number(value: float | None, digits: int = 2) -> str:
    """A float with `digits` decimals, `-` when undefined."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def percent(value: float) -> str:
    """A fraction as a whole percentage, `-` when undefined."""
    return "-" if not math.isfinite(value) else f"{100 * value:.0f}%"


def clip(text: str, width: int = 70) -> str:
    """One line of at most `width` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns with a rule under the header."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)
    return lines
