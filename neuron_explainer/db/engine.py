"""Engines and dialects: URLs, SQLite files and pragmas, PostgreSQL, and turning driver errors into one-line
UserErrors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from neuron_explainer.core.database_url import normalise_database_url
from neuron_explainer.core.errors import UserError
from neuron_explainer.db.codec import redact
from neuron_explainer.db.writer import DatabaseWriteError

BUSY_TIMEOUT_S = 30.0
OPEN_WAIT_S = 5.0
"""How long opening a SQLite file waits for another process's write transaction before saying who holds it:
a run's own writes commit in well under a second, so a longer wait means something else keeps the file locked."""
"""How long an SQLite connection waits for another process's write lock before giving up."""
SQLITE_HEADER = b"SQLite format 3\x00"


def parse_url(url: str) -> URL:
    try:
        return make_url(normalise_database_url(url))
    except ArgumentError:
        raise UserError(f"malformed database URL {redact(url)!r}: use sqlite:///FILE or "
                        "postgresql+psycopg://USER@HOST/DB") from None


def check_sqlite_file(path: Path, *, create: bool) -> None:
    if path.exists():
        if path.is_dir():
            raise UserError(f"{path} is a directory, not a database file")
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise UserError(f"{path} is not a SQLite database (refusing to touch it)")
        return
    if not create:
        raise UserError(f"no database at {path}; run `neuron-explainer run` first or check --db")
    if not path.parent.exists():
        raise UserError(f"cannot create {path}: directory {path.parent} does not exist")


def make_engine(url: URL, *, writer: bool, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    try:
        if url.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
                                   pool_size=1 if writer else 5, max_overflow=0 if writer else 10)

            @event.listens_for(engine, "connect")
            def _configure(dbapi_connection: Any, _record: Any) -> None:
                # Transactions are begun explicitly below, so pysqlite must not begin them itself.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                cursor.execute("PRAGMA foreign_keys = ON")
                # Random index lookups over a large file: a bigger page cache and memory-mapped reads.
                cursor.execute("PRAGMA cache_size = -32768")
                cursor.execute("PRAGMA mmap_size = 268435456")
                if writer:
                    cursor.execute("PRAGMA journal_mode = WAL")
                    cursor.execute("PRAGMA synchronous = FULL")
                cursor.close()

            # The writer takes the write lock at BEGIN, so a transaction never has to upgrade from a read lock
            # (that upgrade fails at once with "database is locked" whatever the busy timeout).
            begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

            @event.listens_for(engine, "begin")
            def _begin(connection: Connection) -> None:
                connection.exec_driver_sql(begin)

            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=1 if writer else 5,
                             max_overflow=0 if writer else 10)
    except (ModuleNotFoundError, NoSuchModuleError) as exc:
        hint = " (pip install 'neuron-explainer[postgres]')" if "postgres" in url.get_backend_name() else ""
        raise UserError(f"no database driver for {url.drivername}: {exc}{hint}") from None


def describe_url(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def db_error_message(error: DBAPIError) -> str:
    text = str(error.orig) if error.orig is not None else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def write_refused(where: str, error: BaseException) -> UserError | None:
    """A one-line UserError when the database refused a write for a reason only the user can fix, else None."""
    cause = error.__cause__ if isinstance(error, DatabaseWriteError) and error.__cause__ is not None else error
    text = db_error_message(cause) if isinstance(cause, DBAPIError) else str(cause)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        problem = "it is read-only (check the permissions of the file and its directory)"
    elif "disk is full" in lowered or "no space" in lowered or "could not extend" in lowered:
        problem = "the disk is full (free some space)"
    elif "disk i/o error" in lowered:
        problem = "the disk reported an I/O error"
    else:
        return None
    return UserError(f"cannot write to {where}: {problem}; nothing finished was lost, run the same command again "
                     f"to resume ({text})")


@contextlib.contextmanager
def user_facing_write_errors(where: str) -> Iterator[None]:
    try:
        yield
    except (DatabaseWriteError, DBAPIError) as exc:
        refused = write_refused(where, exc)
        if refused is None:
            raise
        raise refused from None
