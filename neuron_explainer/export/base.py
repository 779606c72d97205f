"""What every exporter takes and returns."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from neuron_explainer.core.errors import UserError

if TYPE_CHECKING:
    from neuron_explainer.db import Database, ExplanationQuery


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    format: str
    """The format name."""
    paths: tuple[Path, ...]
    """Files written."""
    rows: int
    """Result rows (neurons, with the default best-per-neuron query) exported."""
    notes: tuple[str, ...] = ()
    """Anything the user should know (e.g. a plot skipped for lack of data)."""


class Exporter(Protocol):
    """An export format: read `query`'s rows from `database`, write them under `out`."""

    def __call__(self, database: Database, out: Path, query: ExplanationQuery) -> ExportResult: ...


@contextlib.contextmanager
def atomic_text_file(path: Path, *, newline: str | None = None) -> Iterator[IO[str]]:
    """Open `path` for writing through a temporary file that replaces it only when writing succeeded."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name for this format")
    if not path.parent.exists():
        raise UserError(f"cannot write {path}: directory {path.parent} does not exist")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        handle = temporary.open("w", encoding="utf-8", newline=newline)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with handle:
            yield handle
        temporary.replace(path)
    except OSError as exc:
        # A full disk or a file system gone read-only mid-write: the old file (if any) is left as it was.
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
