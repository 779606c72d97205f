"""The one place a results-database argument becomes a URL: a plain file path means a SQLite file."""

from __future__ import annotations

DEFAULT_DATABASE_URL = "sqlite:///neurons.db"
"""Where results go unless told otherwise."""


def normalise_database_url(url: str) -> str:
    """`neurons.db` -> `sqlite:///neurons.db`; anything with a scheme (`sqlite:///`, `postgresql+psycopg://`) is
    kept as written (surrounding blanks removed)."""
    text = url.strip()
    return text if "://" in text else "sqlite:///" + text


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (or plain path), without `?options`; None for other databases and in-memory ones."""
    text = normalise_database_url(url)
    if not text.startswith("sqlite:///"):
        return None
    path = text.removeprefix("sqlite:///").split("?", 1)[0]
    return path if path and path != ":memory:" else None
