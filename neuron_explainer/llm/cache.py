"""A persistent response cache in one SQLite file, so re-running a finished night makes no paid calls.

Keys are SHA-256 hashes of a JSON document naming the backend, model, endpoint and every request parameter
(never a key or header). Only deterministic requests are cached: temperature 0, an explicit seed, or
prompt-logprob reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Any

from neuron_explainer.core.database_url import sqlite_path
from neuron_explainer.core.paths import cache_dir

logger = logging.getLogger(__name__)

CACHE_SUFFIX = ".llm-cache.sqlite"
"""Appended to a SQLite results database's file name to get its default response cache."""


class CacheMode(str, Enum):
    """How a backend uses its response cache."""

    USE = "use"
    """Serve hits from the cache and store new answers."""
    REFRESH = "refresh"
    """Bypass reads (always call the backend) but store the new answers."""
    OFF = "off"
    """Neither read nor write."""


def default_cache_path(database_url: str | None = None) -> Path:
    """`neurons.db.llm-cache.sqlite` next to a SQLite results database (a URL or a plain file path); otherwise
    `<cache_dir>/llm-cache.sqlite`."""
    database_path = sqlite_path(database_url) if database_url else None
    if database_path is not None:
        return Path(database_path + CACHE_SUFFIX)
    return cache_dir() / "llm-cache.sqlite"


def cache_key(parts: dict[str, Any]) -> str:
    """A stable hash of request parts (JSON with sorted keys)."""
    document = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(document.encode()).hexdigest()


class ResponseCache:
    """JSON answers keyed by request hash in a SQLite file; safe to share between many tasks and threads."""

    def __init__(self, path: Path | str, *, mode: CacheMode = CacheMode.USE) -> None:
        self.path = Path(path)
        """The SQLite file (created on first use)."""
        self.mode = CacheMode(mode)
        """Whether reads and writes happen."""
        self.hits = 0
        """Answers served from the cache by this object."""
        self.misses = 0
        """Lookups that found nothing."""
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None

    @classmethod
    def for_database(cls, database_url: str | None, *, mode: CacheMode = CacheMode.USE) -> ResponseCache:
        """The default cache for a results database URL (see `default_cache_path`)."""
        return cls(default_cache_path(database_url), mode=mode)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            # WAL lets several processes (pipeline workers) read while one writes. Both statements below need a
            # write lock even when there is nothing to change, so they run only when needed: a worker stopped
            # while it held the write lock must not stall the other workers' cache reads.
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'responses'").fetchone() is None:
                connection.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, backend TEXT NOT NULL,"
                    " model TEXT NOT NULL, created_at REAL NOT NULL, response TEXT NOT NULL)")
            # A store that waits longer than this is skipped (logged): it costs a repeat call some day, whereas
            # waiting on a stuck process's lock would cost every call now.
            connection.execute("PRAGMA busy_timeout = 1000")
            self._connection = connection
        return self._connection

    def get(self, key: str) -> Any | None:
        """The stored answer for `key`, or None (always None unless mode is USE)."""
        if self.mode is not CacheMode.USE:
            return None
        with self._lock:
            row = self._connect().execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, response: Any, *, backend: str, model: str) -> None:
        """Store an answer (no-op when mode is OFF)."""
        if self.mode is CacheMode.OFF:
            return
        document = json.dumps(response, ensure_ascii=False)
        with self._lock:
            try:
                self._connect().execute(
                    "INSERT OR REPLACE INTO responses (key, backend, model, created_at, response) VALUES (?, ?, ?, ?, ?)",
                    (key, backend, model, time.time(), document))
            except sqlite3.OperationalError as exc:
                # The answer is in hand (and paid for): a cache that cannot store it (full disk, read-only file)
                # costs a repeat call later, never this call.
                logger.warning("could not store an answer in the response cache %s: %s", self.path, exc)

    def clear(self, *, backend: str | None = None, model: str | None = None) -> int:
        """Delete stored answers (all, or those of one backend and/or model); returns how many."""
        clauses, values = [], []
        if backend is not None:
            clauses.append("backend = ?")
            values.append(backend)
        if model is not None:
            clauses.append("model = ?")
            values.append(model)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            cursor = self._connect().execute(f"DELETE FROM responses{where}", values)
            return cursor.rowcount

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the SQLite connection (it reopens on next use)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
