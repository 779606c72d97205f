"""A full disk or a read-only database stops the run with one clear line and exit code 2, and leaves the
database valid with every result finished before the stop.

Tests run as root here, where chmod does not stop writes: a read-only file or directory is made with `chattr +i`
(immutable), and a small disk with a `mount -t tmpfs -o size=...`. Where these are not permitted the tests skip
with the reason; as a normal user, chmod is used for read-only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from fault_harness import (integrity, is_log_line, read_only, results_snapshot, rows, run_cli,  # noqa: E402
                           run_cli_in_new_process, small_disk)


def _close_wal(db: Path) -> None:
    """Fold the write-ahead log into the file and let SQLite remove -wal/-shm (readers leave them behind), so the
    directory's permissions alone decide whether SQLite can write."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("pragma wal_checkpoint(truncate)")
    assert not db.with_name(db.name + "-wal").exists()


def _run_flags(store: Path, db: Path, neurons: str) -> list[str]:
    return ["run", "--records", str(store), "--db", f"sqlite:///{db}", "--explainer", "ngram", "--simulator",
            "lexical", "--neurons", neurons]


def _one_line_error(err: str) -> str:
    """The CLI's error line; everything before it must be log lines, never a traceback."""
    *before, message = err.strip().splitlines()
    assert message.startswith("neuron-explainer: error: ")
    assert "Traceback" not in err and all(is_log_line(line) for line in before), before
    return message


def test_disk_full_stops_the_run_and_keeps_what_was_finished(word_store_200: Path, tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    reference = tmp_path / "reference.db"
    assert run_cli(_run_flags(word_store_200, reference, "0:0-119")) == 0
    expected = results_snapshot(reference)
    capfd.readouterr()
    with small_disk(tmp_path / "disk", "1m") as disk:
        db = disk / "night.db"
        # In its own process, like the nightly command: on a full disk it cannot even release its lock, and
        # the next run takes over the lock of a process that is gone.
        assert run_cli_in_new_process(_run_flags(word_store_200, db, "0:0-119")) == 2
        message = _one_line_error(capfd.readouterr().err)
        assert "the disk is full" in message and str(db) in message
        # The database on the full disk is sound and holds a part of the night, all of it as the full run made it.
        assert integrity(db) == [("ok",)]
        partial = results_snapshot(db)
        assert 0 < len(partial["scores"]) < 120
        assert set(partial["explanations"]) <= set(expected["explanations"])
        assert set(partial["scores"]) <= set(expected["scores"])
        moved = tmp_path / "moved"
        moved.mkdir()
        for path in disk.iterdir():
            shutil.copy2(path, moved / path.name)
    # Space found (the files moved to a roomy disk): the same command finishes the night.
    resumed_db = moved / "night.db"
    assert run_cli(_run_flags(word_store_200, resumed_db, "0:0-119")) == 0
    assert results_snapshot(resumed_db) == expected
    assert integrity(resumed_db) == [("ok",)]


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_read_only_database_is_refused_in_one_line_and_left_untouched(word_store_200: Path, tmp_path: Path,
                                                                        what: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "archive" / "night.db"
    db.parent.mkdir()
    assert run_cli(_run_flags(word_store_200, db, "0:0-3")) == 0
    before = (results_snapshot(db), rows(db, "select id, status from runs"), db.read_bytes())
    capsys.readouterr()
    _close_wal(db)
    with read_only(db if what == "file" else db.parent):
        assert run_cli(_run_flags(word_store_200, db, "0:4-7")) == 2
        message = _one_line_error(capsys.readouterr().err)
        assert str(db) in message
        assert ("read-only" in message) if what == "file" else ("-wal and -shm files" in message)
        if what == "file":
            # Reading a read-only database file works.
            assert run_cli(["query", "--db", f"sqlite:///{db}", "--format", "json"]) == 0
            assert sorted(row["neuron"] for row in json.loads(capsys.readouterr().out)) == [0, 1, 2, 3]
        else:
            # In a read-only directory SQLite cannot make the shared-memory file even readers of WAL need.
            assert run_cli(["query", "--db", f"sqlite:///{db}", "--format", "json"]) == 2
            assert "-wal and -shm files" in _one_line_error(capsys.readouterr().err)
    assert (results_snapshot(db), rows(db, "select id, status from runs"), db.read_bytes()) == before
    assert integrity(db) == [("ok",)]
