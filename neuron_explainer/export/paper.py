"""Text for papers: LaTeX quotes and escaping, intervals that never print "n/a – n/a", and captions that name the
subject model, explainer, simulator and metric of the rows they describe."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from neuron_explainer.db import ResultRow
from neuron_explainer.export.escaping import latex_escape

METRIC = ("Pearson correlation of simulated and true activations on held-out top-activating and random windows, "
          "with a 95% bootstrap interval")
"""What the score column means."""

_OPENERS = " \t\n([{-/"


def latex_text(text: str) -> str:
    """`text` escaped for LaTeX with typographic quotes (``double'', `single') and no accidental ligatures
    (`--` would print an en dash, `` and '' quote marks)."""
    out: list[str] = []
    for index, character in enumerate(text):
        before = text[index - 1] if index else " "
        if character == '"':
            out.append("``" if before in _OPENERS else "''")
        elif character == "'":
            out.append("`" if before in _OPENERS and index + 1 < len(text) and not text[index + 1].isspace()
                       else "'")
        elif character == "`":
            out.append(r"\textasciigrave{}")
        elif character == "-" and index + 1 < len(text) and text[index + 1] == "-":
            out.append("-{}")
        else:
            out.append(latex_escape(character))
    return "".join(out)


def number(value: float, digits: int = 2, *, undefined: str = "n/a") -> str:
    """A metric to `digits` places, `undefined` when it is NaN."""
    return undefined if not math.isfinite(value) else f"{value:.{digits}f}"


def interval(low: float, high: float, digits: int = 2, *, separator: str = " – ", undefined: str = "n/a") -> str:
    """`low – high`, or one `undefined` when there is no interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return undefined
    return f"{low:.{digits}f}{separator}{high:.{digits}f}"


def _names(values: Iterable[str]) -> str:
    distinct = sorted({value for value in values if value})
    return ", ".join(distinct) if distinct else "none"


def provenance(rows: Sequence[ResultRow]) -> dict[str, str]:
    """The model(s), explainer(s) and simulator(s) behind `rows`, each as one readable phrase."""
    return {
        "model": _names(row.model_id for row in rows),
        "explainer": _names(row.method + ("" if row.explainer_model in ("", "none") else f" ({row.explainer_model})")
                            for row in rows),
        "simulator": _names(row.simulator + ("" if row.simulator_model in ("", "none") else
                                             f" ({row.simulator_model})") for row in rows),
    }
