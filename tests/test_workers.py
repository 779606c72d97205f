"""Several `run` workers on one PostgreSQL database split a night without duplicates (db/claims.py): the result
equals a single worker's, also when a worker is SIGKILLed mid-unit, is only slow past its lease (its late writes
are dropped), or loses its database connections; workers started on a finished night do nothing and exit 0. On
SQLite a second writer still gets the run lock's one-line refusal.

Workers are forked from this test process (past its imports) and run the real pipeline against this session's own
PostgreSQL server and the loopback OpenAI server.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from db_targets import db_url, integrity, rows  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from fault_harness import results_snapshot, run_cli, word_night_config, word_store  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

NEURONS = 16
LLM_OPTIONS = "timeout=10&attempts=3&backoff=0.01"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_store(tmp_path_factory.mktemp("worker-words"), neurons=NEURONS, words=NEURONS)


@pytest.fixture()
def server():
    with FakeOpenAIServer(responder=competent_model, latency=0.02) as running:
        yield running


def _work(config: RunConfig) -> None:
    code = 0
    # Each worker its own response cache, as workers on different machines have.
    os.environ["NEURON_EXPLAINER_CACHE"] = f"{os.environ['NEURON_EXPLAINER_CACHE']}-worker-{os.getpid()}"
    try:
        import torch

        torch.set_num_threads(1)  # a forked child must not rely on the parent's thread pool
        run_pipeline(config, progress=False)
    except BaseException:  # noqa: BLE001 - the exit code is what the parent checks; the reason goes to stderr
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _start(config: RunConfig) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(target=_work, args=(config,))
    process.start()
    return process


def _wait_for(condition, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def _count(db: str, table: str) -> int:
    try:
        return int(rows(db, f"select count(*) from {table}")[0][0])
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def _reference(store: Path, new_db, spec: str) -> dict:
    reference = new_db()
    assert run_pipeline(word_night_config(store, reference, spec), progress=False).status == "completed"
    expected = results_snapshot(reference)
    assert len(expected["scores"]) == NEURONS
    return expected


def _night(store: Path, postgres_server, server, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict, str]:
    """(backend spec, a single worker's results, a fresh database) with the loopback server slowed to 50 ms."""
    new_db = _postgres_factory(postgres_server, monkeypatch, store)
    spec = server.backend_spec("competent", LLM_OPTIONS)
    expected = _reference(store, new_db, spec)
    server.latency = 0.05
    return spec, expected, new_db()


def _done_by_run(db: str) -> dict[int, tuple[str, int]]:
    return {run_id: (status, json.loads(totals).get("done", 0))
            for run_id, status, totals in rows(db, "select id, status, totals_json from runs")}


def _assert_one_night(db: str, expected: dict) -> None:
    assert results_snapshot(db) == expected
    for table, key in (("explanations", "neuron_id, config_key"), ("scores", "explanation_id, config_key")):
        assert rows(db, f"select count(*) from (select {key} from {table} group by {key} having count(*) > 1) d"
                    ) == [(0,)]
    assert rows(db, "select count(*) from unit_claims where done_at is null") == [(0,)]
    assert integrity(db) == [("ok",)]


@pytest.mark.parametrize("workers", [3])
def test_workers_split_the_night_without_duplicates(store: Path, postgres_server, server, workers: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    new_db = _postgres_factory(postgres_server, monkeypatch, store)
    spec = server.backend_spec("competent", LLM_OPTIONS)
    server.reset()
    expected = _reference(store, new_db, spec)
    single_worker_requests = server.count()
    db = new_db()
    server.reset()
    processes = [_start(word_night_config(store, db, spec)) for _ in range(workers)]
    for process in processes:
        process.join()
    assert [process.exitcode for process in processes] == [0] * workers
    _assert_one_night(db, expected)
    runs = _done_by_run(db)
    assert [status for status, _ in runs.values()] == ["completed"] * workers
    # Every neuron was processed by exactly one worker.
    assert sum(done for _, done in runs.values()) == NEURONS
    # A neuron done twice would pay its explanation and simulation requests twice.
    assert server.count() == single_worker_requests


def test_a_worker_killed_mid_unit_is_taken_over_by_the_other(store: Path, postgres_server, server,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    spec, expected, db = _night(store, postgres_server, server, monkeypatch)
    victim = _start(word_night_config(store, db, spec))
    # Mid-unit: it holds claims and has committed part of the night.
    _wait_for(lambda: _count(db, "explanations") >= 2)
    survivor = _start(word_night_config(store, db, spec))
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    survivor.join()
    assert (victim.exitcode, survivor.exitcode) == (-signal.SIGKILL, 0)
    _assert_one_night(db, expected)
    statuses = sorted(status for status, _ in _done_by_run(db).values())
    assert statuses in (["completed", "failed"], ["completed", "running"])


def test_a_slow_worker_past_its_lease_writes_nothing_late(store: Path, postgres_server, server,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec, expected, db = _night(store, postgres_server, server, monkeypatch)
    slow = _start(word_night_config(store, db, spec, lease_seconds=1.0))
    try:
        _wait_for(lambda: _count(db, "unit_claims where owner is not null") >= 2)
        os.kill(slow.pid, signal.SIGSTOP)  # alive but silent: no results, no lease renewals
        stopped_at = _count(db, "explanations")
        taker = _start(word_night_config(store, db, spec, lease_seconds=1.0))
        taker.join()
        assert taker.exitcode == 0
        assert _count(db, "explanations") >= stopped_at
        finished = results_snapshot(db)
        assert finished == expected
        [(slow_run,)] = rows(db, "select min(id) from runs")
        slow_rows = _rows_of_run(db, slow_run)
    finally:
        os.kill(slow.pid, signal.SIGCONT)
    slow.join()
    assert slow.exitcode == 0
    # The slow worker's answers arrived after its leases had been taken over: none of them was written.
    assert _rows_of_run(db, slow_run) == slow_rows
    assert results_snapshot(db) == finished
    _assert_one_night(db, expected)


def _rows_of_run(db: str, run_id: int) -> list[int]:
    return [_count(db, f"{table} where run_id = {run_id}") for table in ("explanations", "scores", "failures")]


def test_dropped_database_connections_lose_nothing(store: Path, postgres_server, server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec, expected, db = _night(store, postgres_server, server, monkeypatch)
    worker = _start(word_night_config(store, db, spec))
    _wait_for(lambda: _count(db, "scores") >= 2)
    name = db.rsplit("/", 1)[1]
    dropped = rows(postgres_server.url(), "select pg_terminate_backend(pid) from pg_stat_activity "
                                          "where datname = ? and pid <> pg_backend_pid()", (name,))
    assert dropped and all(ok for (ok,) in dropped)
    worker.join()
    if worker.exitcode != 0:  # a dropped connection may fail the worker; the same command resumes
        second = _start(word_night_config(store, db, spec))
        second.join()
        assert second.exitcode == 0
    _assert_one_night(db, expected)


def test_workers_on_a_finished_night_do_nothing_and_exit_0(store: Path, postgres_server, server,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    new_db = _postgres_factory(postgres_server, monkeypatch, store)
    spec = server.backend_spec("competent", LLM_OPTIONS)
    db = new_db()
    assert run_pipeline(word_night_config(store, db, spec), progress=False).status == "completed"
    before = results_snapshot(db)
    server.reset()
    processes = [_start(word_night_config(store, db, spec)) for _ in range(2)]
    for process in processes:
        process.join()
    assert [process.exitcode for process in processes] == [0, 0]
    assert server.count() == 0 and results_snapshot(db) == before
    assert [done for _, done in _done_by_run(db).values()] == [NEURONS, 0, 0]
    argv = ["run", "--db", db_url(db), "--records", str(store), "--explainer", "token-pairs", "--simulator",
            "generated", "--llm", spec, "--score-top-windows", "2", "--score-random-windows", "2",
            "--explain-windows", "6"]
    assert run_cli(argv) == 0 and server.count() == 0


def test_sqlite_keeps_one_writer_with_a_clear_message(store: Path, tmp_path: Path, server,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from neuron_explainer.db import open_database

    db = tmp_path / "night.db"
    with open_database(db_url(db)) as holder:
        holder.start_run(config={})
        argv = ["run", "--db", db_url(db), "--records", str(store), "--explainer", "ngram", "--simulator", "lexical"]
        assert run_cli(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "in use by run 1" in error[0]


def _postgres_factory(postgres_server, monkeypatch: pytest.MonkeyPatch, store: Path):
    counter = iter(range(1000))

    def make() -> str:
        url = postgres_server.new_database("w")
        monkeypatch.setenv("NEURON_EXPLAINER_CACHE", str(store.parent / f"cache-{url.rsplit('/', 1)[1]}-"
                                                                           f"{next(counter)}"))
        return url

    return make


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_wrong_postgresql_password_is_one_line_and_writes_nothing(store: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from pg_server import start_server

    try:
        guarded = start_server(password="right-horse-battery")
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    try:
        url = guarded.url("postgres", password="wrong-staple")
        argv = ["run", "--db", url, "--records", str(store), "--explainer", "ngram", "--simulator", "lexical"]
        assert run_cli(argv) == 2
        line = _one_error_line(capsys)
        assert "password authentication failed" in line and "wrong-staple" not in line
        assert rows(guarded.url("postgres", password="right-horse-battery"),
                    "select count(*) from information_schema.tables where table_schema = 'public'") == [(0,)]
    finally:
        guarded.stop()


def test_a_worker_older_than_the_database_schema_is_refused(store: Path, postgres_server,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from neuron_explainer.db import SCHEMA_VERSION

    db = postgres_server.new_database("w")
    argv = ["run", "--db", db, "--records", str(store), "--explainer", "ngram", "--simulator", "lexical"]
    assert run_cli(argv) == 0
    capsys.readouterr()
    # A newer neuron-explainer (another worker) has moved the database on.
    rows(db, f"update ne_meta set value = '{SCHEMA_VERSION + 1}' where key = 'schema_version'")
    before = rows(db, "select count(*), max(id) from runs")
    assert run_cli(argv) == 2
    assert f"schema version {SCHEMA_VERSION + 1}, newer than" in _one_error_line(capsys)
    assert rows(db, "select count(*), max(id) from runs") == before


def test_a_newer_worker_does_not_upgrade_a_database_older_workers_are_using(
        store: Path, postgres_server, capsys: pytest.CaptureFixture[str]) -> None:
    from neuron_explainer.db import SCHEMA_VERSION

    db = postgres_server.new_database("w")
    argv = ["run", "--db", db, "--records", str(store), "--explainer", "ngram", "--simulator", "lexical"]
    assert run_cli(argv) == 0
    capsys.readouterr()
    # As if this database were one version older and a worker of that version held a live lease on it.
    rows(db, f"update ne_meta set value = '{SCHEMA_VERSION - 1}' where key = 'schema_version'")
    rows(db, "insert into unit_claims (plan_key, layer, neuron, owner, expires_at) values "
             "('p', 0, 0, 'older-worker', extract(epoch from clock_timestamp()) + 600)")
    assert run_cli(argv) == 2
    assert "1 worker(s) of an older neuron-explainer are running on it" in _one_error_line(capsys)
    assert rows(db, "select value from ne_meta where key = 'schema_version'") == [(str(SCHEMA_VERSION - 1),)]
