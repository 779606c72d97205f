"""The Batch API journal in the results database: what `run --batch` uploaded and submitted, for the next run.

Implements the llm stage's `BatchJournal` protocol over the `llm_batch_files` and `llm_batch_requests` tables, on
SQLite and PostgreSQL alike, so a night killed after submitting picks up its batches in the next run, on this machine
or another one pointed at the same database. Each write commits before the batch backend takes its next step.

Several workers may share one PostgreSQL database. An upload whose batch id is not journaled yet is offered to a
resuming process only when the process that uploaded it is gone (same host, dead pid) or has been silent for
`ORPHAN_AFTER_S` (another host): otherwise the resumer could create a second batch over a file whose owner is
about to create its own, and pay twice. An upload without a batch costs nothing, so leaving one alone is safe.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import URL

from neuron_explainer.core.processes import process_alive
from neuron_explainer.db.engine import make_engine
from neuron_explainer.db.lock import this_host
from neuron_explainer.db.models import BatchFileRow, BatchRequestRow

logger = logging.getLogger(__name__)

ORPHAN_AFTER_S = 600.0
"""An upload of a process on another host with no batch id after this long is taken to be abandoned."""
_CHUNK = 1000


class DatabaseBatchJournal:
    """A `BatchJournal` (neuron_explainer.llm.batch_api) kept in the results database at `url`."""

    def __init__(self, url: URL, *, legacy_file: Path | None = None) -> None:
        self._engine: Engine = make_engine(url, writer=True)
        self._lock = threading.Lock()
        self._host = this_host()
        self._pid = os.getpid()
        if legacy_file is not None and legacy_file.exists():
            self._adopt_file_journal(legacy_file)

    def uploaded(self, input_file_id: str, endpoint: str, custom_ids: Sequence[str]) -> None:
        """An input file is on the server (no batch yet)."""
        files, requests = BatchFileRow.__table__, BatchRequestRow.__table__
        rows = [{"custom_id": custom_id, "input_file_id": input_file_id} for custom_id in dict.fromkeys(custom_ids)]
        with self._lock, self._engine.begin() as connection:
            connection.execute(insert(files).values(
                input_file_id=input_file_id, endpoint=endpoint, batch_id=None, status="uploaded", host=self._host,
                pid=self._pid, created_at=time.time()))
            for start in range(0, len(rows), _CHUNK):
                connection.execute(insert(requests), rows[start:start + _CHUNK])

    def submitted(self, input_file_id: str, batch_id: str) -> None:
        """A batch runs over the file."""
        self._set(input_file_id, batch_id=batch_id, status="submitted")

    def harvested(self, input_file_id: str) -> None:
        """Everything the batch answered has been read (answers are in the response cache)."""
        self._set(input_file_id, status="harvested")

    def open_files(self) -> dict[str, tuple[str | None, set[str]]]:
        """input file id -> (batch id or None, custom ids) of every file not yet harvested that this process may
        pick up (see the module docstring for uploads of live processes)."""
        files, requests = BatchFileRow.__table__, BatchRequestRow.__table__
        now = time.time()
        found: dict[str, tuple[str | None, set[str]]] = {}
        with self._lock, self._engine.connect() as connection:
            rows = connection.execute(select(files.c.input_file_id, files.c.batch_id, files.c.host, files.c.pid,
                                             files.c.created_at).where(files.c.status != "harvested")).all()
            for row in rows:
                if row.batch_id is None and self._owner_may_still_submit(row.host, row.pid, row.created_at, now):
                    continue
                ids = set(connection.execute(select(requests.c.custom_id).where(
                    requests.c.input_file_id == row.input_file_id)).scalars())
                found[row.input_file_id] = (row.batch_id, ids)
        return found

    def close(self) -> None:
        """Release the connections."""
        self._engine.dispose()

    def _owner_may_still_submit(self, host: str, pid: int, created_at: float, now: float) -> bool:
        if host == self._host:
            return pid != self._pid and process_alive(pid)
        return now - created_at < ORPHAN_AFTER_S

    def _set(self, input_file_id: str, **values: object) -> None:
        files = BatchFileRow.__table__
        with self._lock, self._engine.begin() as connection:
            connection.execute(update(files).where(files.c.input_file_id == input_file_id).values(**values))

    def _adopt_file_journal(self, path: Path) -> None:
        """Copy the open entries of the journal that older versions kept in the response-cache file."""
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as source:
                files = source.execute("SELECT input_file_id, endpoint, batch_id, status, created_at "
                                       "FROM llm_batch_files WHERE status != 'harvested'").fetchall()
                requests = {file_id: [row[0] for row in source.execute(
                    "SELECT custom_id FROM llm_batch_requests WHERE input_file_id = ?", (file_id,))]
                    for file_id, *_ in files}
        except sqlite3.Error:
            return  # no journal in that file (or not readable): nothing to adopt
        table = BatchFileRow.__table__
        with self._lock, self._engine.begin() as connection:
            known = set(connection.execute(select(table.c.input_file_id).where(
                table.c.input_file_id.in_([row[0] for row in files]))).scalars()) if files else set()
            for file_id, endpoint, batch_id, status, created_at in files:
                if file_id in known:
                    continue
                logger.info("adopting batch input file %s from the response-cache journal %s", file_id, path)
                # Its process is gone (the cache file's journal predates this one): pid 0 is never alive.
                connection.execute(insert(table).values(
                    input_file_id=file_id, endpoint=endpoint, batch_id=batch_id, status=status, host=self._host,
                    pid=0, created_at=created_at))
                rows = [{"custom_id": custom_id, "input_file_id": file_id} for custom_id in requests[file_id]]
                for start in range(0, len(rows), _CHUNK):
                    connection.execute(insert(BatchRequestRow.__table__), rows[start:start + _CHUNK])
