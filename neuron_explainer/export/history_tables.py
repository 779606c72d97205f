"""Terminal tables of the runs and of the stored failures (the `runs`, `failures` and `show` commands)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuron_explainer.db import NeuronDetail
from neuron_explainer.db.history import FailureRecord, RunRecord
from neuron_explainer.core.neurons import NeuronId


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "running"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, width: int | None) -> str:
    """Left-aligned columns; the last column is cut to fit `width` (None: never cut, for files and pipes)."""
    widths = [max(len(header[index]), *(len(row[index]) for row in rows)) for index in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        line = "  ".join(cell.ljust(size) for cell, size in zip(row, widths)) + "  " + row[-1]
        lines.append(line if width is None or len(line) <= width else line[:max(width - 3, 0)] + "...")
    return "\n".join(lines)


def format_runs(runs: Sequence[RunRecord], *, width: int | None = None) -> str:
    """One line per run: id, status, start, duration, counts, spend, selection and the stop reason."""
    if not runs:
        return "no runs yet"
    rows = []
    for run in runs:
        what = run.selection + (f"; {run.reason}" if run.reason else "")
        rows.append([str(run.id), run.status, run.started_at[:16].replace("T", " "), _duration(run.seconds),
                     _count(run.selected), _count(run.done), _count(run.skipped), _count(run.explained),
                     _count(run.scored), _count(run.failed), str(run.tokens), f"${run.cost_usd:.4f}", what])
    header = ["run", "status", "started (UTC)", "took", "selected", "done", "skipped", "explained", "scored",
              "failed", "tokens", "spend", "selection"]
    return _table(header, rows, width=width)


def format_failures(failures: Sequence[FailureRecord], *, width: int | None = None) -> str:
    """One line per failure: neuron, stage, kind, run, open or fixed, and the reason."""
    if not failures:
        return "no failures"
    rows = [[str(item.neuron), item.stage, item.kind, _count(item.run_id), "open" if item.open else "fixed",
             item.reason] for item in failures]
    return _table(["neuron", "stage", "kind", "run", "state", "reason"], rows, width=width)


def neuron_details_with_failures(neuron: NeuronId, details: Sequence[NeuronDetail],
                                 failures: Sequence[FailureRecord]) -> list[dict[str, Any]]:
    """`show --format json`: one object per subject model with its explanations and its failures (a model whose
    neuron only failed gets an object with no explanations)."""
    from neuron_explainer.export.terminal import neuron_detail_as_dict

    entries = [neuron_detail_as_dict(detail) for detail in details]
    models = [detail.model_id for detail in details]
    for failure in failures:
        if failure.model_id not in models:
            models.append(failure.model_id)
            entries.append({"layer": neuron.layer, "neuron": neuron.neuron, "model_id": failure.model_id,
                            "model_fingerprint": None, "stats": [], "explanations": []})
    for model, entry in zip(models, entries):
        entry["failures"] = [failure.as_dict() for failure in failures if failure.model_id == model]
    return entries
