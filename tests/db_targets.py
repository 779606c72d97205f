"""A results database under test, on either backend: a SQLite file (a Path) or a PostgreSQL database (its URL).

Tests read what a run left with `rows` and check a database with `integrity`, the same way on both backends.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

DbTarget = Path | str
"""A SQLite file, or the SQLAlchemy URL of a PostgreSQL database."""


def is_postgres(db: DbTarget) -> bool:
    """Whether `db` names a PostgreSQL database."""
    return isinstance(db, str) and db.startswith("postgresql")


def db_url(db: DbTarget) -> str:
    """The URL `--db` and `open_database` take."""
    return db if is_postgres(db) else f"sqlite:///{db}"


def db_exists(db: DbTarget) -> bool:
    """Whether the database has been created (a PostgreSQL test database always exists, perhaps empty)."""
    return True if is_postgres(db) else Path(db).exists()


_connections: dict[str, object] = {}
"""Open autocommit connections by URL, so that polling a database (the fault tests do) costs no connection set-up."""


def _pg_connection(url: str):
    import psycopg

    from sqlalchemy.engine import make_url

    connection = _connections.get(url)
    if connection is not None and not connection.closed:
        return connection
    while len(_connections) >= 8:
        _connections.pop(next(iter(_connections))).close()
    parsed = make_url(url)
    conninfo = (f"host={parsed.host} port={parsed.port} user={parsed.username} dbname={parsed.database}"
                + (f" password={parsed.password}" if parsed.password else ""))
    _connections[url] = connection = psycopg.connect(conninfo, autocommit=True)
    return connection


def _pg_rows(url: str, query: str, parameters: Sequence[object], *, retry: bool = True) -> list[tuple]:
    import psycopg

    connection = _pg_connection(url)
    try:
        # SQLite's `?` placeholders, psycopg's `%s`.
        cursor = connection.execute(query.replace("?", "%s"), list(parameters))
    except Exception as exc:
        _connections.pop(url, None)
        connection.close()
        if retry and isinstance(exc, psycopg.OperationalError):  # a test dropped our connection too: reconnect
            return _pg_rows(url, query, parameters, retry=False)
        raise
    return [tuple(row) for row in cursor.fetchall()] if cursor.description is not None else []


def rows(db: DbTarget, query: str, parameters: Sequence[object] = ()) -> list[tuple]:
    """Sorted result rows of a read-only query (`?` placeholders on both backends)."""
    if is_postgres(db):
        return sorted(_pg_rows(str(db), query, parameters), key=repr)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return sorted(connection.execute(query, parameters).fetchall())


def integrity(db: DbTarget) -> list[tuple]:
    """`[("ok",)]` for a sound database: SQLite's integrity_check, or amcheck over every PostgreSQL B-tree index
    (with its heap) of the schema."""
    if not is_postgres(db):
        return rows(db, "pragma integrity_check")
    _pg_rows(str(db), "CREATE EXTENSION IF NOT EXISTS amcheck", ())
    indexes = _pg_rows(str(db), "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_am a ON a.oid = c.relam "
                                "WHERE n.nspname = 'public' AND a.amname = 'btree'", ())
    problems = []
    for (index,) in indexes:
        try:
            _pg_rows(str(db), "SELECT bt_index_check(?::regclass, true)", (index,))
        except Exception as exc:  # noqa: BLE001 - reported as a problem row, as integrity_check does
            problems.append((f"{index}: {exc}",))
    return problems or [("ok",)]
