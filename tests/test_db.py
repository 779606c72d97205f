"""The results database on real SQLite files and PostgreSQL databases: round trips, idempotence, the writer, upgrades, refusal, the lock."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from db_targets import db_url, integrity, rows
from fixtures.db_factory import (FINGERPRINT, MANIFEST_HASH, MODEL_ID, explain_key, explanation, populate, register,
                                 score, score_key)
from neuron_explainer.activations.records import NeuronStats
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import (SCHEMA_VERSION, DatabaseWriteError, ExplanationQuery, LLMCall, RunStatus,
                                 config_key, explanation_config_key, open_database)

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "neurons_v1.db"


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "neurons.db"


def _rows(path: Path, sql: str) -> list[tuple]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_round_trip_keeps_every_field(new_db) -> None:
    with open_database(db_url(new_db())) as database:
        recording = register(database)
        neuron = NeuronId(3, 17)
        stats = NeuronStats(count=256, mean=0.1, std=0.5, min=-0.25, max=2.5, fraction_positive=0.4,
                            quantiles=((0.5, 0.0625), (0.99, 1.75)))
        database.record_neuron_stats(recording, neuron, stats)
        made = explanation(neuron, "the keyword 'def'")
        database.record_explanation(recording, made, config_key=explain_key())
        scored = score(neuron, 0.75, text=made.text)
        database.record_score(recording, scored, explanation_key=explain_key(), config_key=score_key())
        database.flush()

        [detail] = database.neuron_details(neuron)
        assert (detail.model_id, detail.model_fingerprint) == (MODEL_ID, FINGERPRINT)
        assert detail.stats == ((MANIFEST_HASH, stats),)
        [stored] = detail.explanations
        assert stored.config_key == explain_key()
        assert stored.explanation == made.__class__(**{**made.__dict__, "created_at": "2024-05-01T12:00:00.000000Z"})
        [stored_score] = stored.scores
        assert stored_score.score.metrics == scored.metrics
        assert stored_score.score.windows == scored.windows
        assert stored_score.score.baselines == {"shuffled": 0.01}
        assert stored_score.score.explanation_text == made.text
        assert stored_score.score.parameters == {"windows": 2}

        [row] = database.query(ExplanationQuery())
        assert (row.neuron, row.text, row.score, row.method) == (neuron, made.text, 0.75, "token-pairs")
        with database.reader() as connection:
            [(windows_json,)] = connection.exec_driver_sql("SELECT windows_json FROM score_windows").all()
        assert '"tokens":["def"," main","(",")"]' in windows_json
        assert row.explanation_parameters == {"examples": 5, "temperature": 0.0}
        assert row.manifest_hash == MANIFEST_HASH and row.score_key == score_key()


def test_undefined_scores_are_null_on_disk_and_nan_in_python(new_db) -> None:
    db = new_db()
    with open_database(db_url(db)) as database:
        populate(database, [(0, 1, "token-pairs", "nothing fires", float("nan"))])
        [row] = database.query(ExplanationQuery())
        assert math.isnan(row.score) and row.undefined_reason == "constant simulation"
    assert rows(db, "SELECT pearson, ci_low, sort_score FROM scores") == [(None, None, -2.0)]


def test_same_unit_twice_gives_one_row(new_db) -> None:
    items = [(0, neuron, "token-pairs", f"text {neuron}", 0.1 * neuron) for neuron in range(5)]
    with open_database(db_url(new_db())) as database:
        populate(database, items)
        populate(database, items)  # a resumed run writing the same work again
        for layer, neuron, method, text, pearson in items:  # duplicates inside one batch
            recording = register(database)
            database.record_explanation(recording, explanation(NeuronId(layer, neuron), "other text"),
                                        config_key=explain_key(method))
        database.flush()
        counts = database.counts()
        assert (counts["explanations"], counts["scores"], counts["neurons"]) == (5, 5, 5)
        assert counts["subject_models"] == 1 and counts["recordings"] == 1
        # The first write wins; the later text under the same key is ignored.
        assert {row.text for row in database.query(ExplanationQuery(limit=None))} == {f"text {n}" for n in range(5)}
        # A different configuration is different work.
        recording = register(database)
        database.record_explanation(recording, explanation(NeuronId(0, 0), "new prompt"),
                                    config_key=explain_key(parameters={"examples": 40}))
        database.flush()
        assert database.counts()["explanations"] == 6


def test_has_work_checks_and_reloading_explanations(new_db) -> None:
    with open_database(db_url(new_db())) as database:
        recording = populate(database, [(0, 1, "token-pairs", "a", 0.5), (2, 3, "token-pairs", "b", 0.2),
                                        (0, 1, "sasc", "c", 0.1)])
        assert database.explained_neurons(explain_key()) == {NeuronId(0, 1), NeuronId(2, 3)}
        assert database.explained_neurons(explain_key("sasc")) == {NeuronId(0, 1)}
        assert database.scored_neurons(explanation_key=explain_key(), score_key=score_key()) == {
            NeuronId(0, 1), NeuronId(2, 3)}
        assert database.scored_neurons(explanation_key=explain_key(), score_key=score_key("embedding")) == set()
        loaded = database.load_explanations(explain_key(), neurons=[NeuronId(2, 3)])
        assert list(loaded) == [NeuronId(2, 3)] and loaded[NeuronId(2, 3)].text == "b"
        # A new simulator re-scores a stored explanation without re-explaining it.
        database.record_score(recording, score(NeuronId(2, 3), 0.9, simulator="embedding"),
                              explanation_key=explain_key(), config_key=score_key("embedding"))
        database.flush()
        assert database.scored_neurons(explanation_key=explain_key(), score_key=score_key("embedding")) == {
            NeuronId(2, 3)}
        assert database.counts()["explanations"] == 3


def test_failures_and_ledger_never_store_secrets(db_path: Path) -> None:
    with open_database(str(db_path)) as database:
        run_id = database.start_run(config={"llm": "openai:gpt-4o-mini"}, code_version="test")
        recording = register(database)
        failure = Failure(neuron=NeuronId(1, 2), stage="explain", reason="empty answer", raw_output="x" * 20_000)
        database.record_failure(failure, config_key=explain_key(), run_id=run_id, recording=recording)
        database.record_failure(failure, config_key=explain_key(), run_id=run_id, recording=recording)
        database.record_llm_call(LLMCall(backend="openai:gpt-4o@https://user:sk-secret@host/v1?api_key=sk-other",
                                         model="gpt-4o", prompt_tokens=100, completion_tokens=10, cached_tokens=40,
                                         latency_s=0.5, cost_usd=0.002, stage="explain"), run_id=run_id)
        database.record_llm_call(LLMCall(backend="local:default", model="SmolLM2", from_cache=True), run_id=run_id)
        database.record_explanation(recording, explanation(NeuronId(1, 2), "x").__class__(
            **{**explanation(NeuronId(1, 2), "x").__dict__, "explainer_backend": "openai:m@http://k:sk-1@h/v1"}),
            config_key=explain_key())
        database.flush()
        assert database.failed_neurons(stage="explain", config_key=explain_key()) == {NeuronId(1, 2)}
        totals = database.usage_totals(run_id=run_id)
        assert (totals.calls, totals.cache_hits, totals.prompt_tokens, totals.cached_tokens) == (2, 1, 100, 40)
        assert totals.cost_usd == pytest.approx(0.002)
        database.finish_run(run_id, RunStatus.STOPPED_BUDGET, totals={"done": 0})
        assert database.run(run_id).status == "stopped: budget"
    [(raw, )] = _rows(db_path, "SELECT raw_output FROM failures")
    assert len(raw) == 4000 and raw.endswith("characters truncated]")
    dump = b"".join(line.encode() for line in sqlite3.connect(db_path).iterdump())
    assert b"sk-secret" not in dump and b"sk-other" not in dump and b"sk-1" not in dump


def test_ledger_entries_from_the_llm_stage_are_stored(db_path: Path) -> None:
    from neuron_explainer.llm.ledger import LedgerEntry

    entry = LedgerEntry(backend="openai:gpt-4o-mini", model="gpt-4o-mini", operation="chat", prompt_tokens=1200,
                        completion_tokens=15, cached_tokens=1024, latency_s=0.8, cost_usd=0.0003, from_cache=False,
                        attempts=2, created_at=1714564800.25)
    with open_database(str(db_path)) as database:
        run_id = database.start_run(config={})
        database.record_llm_call(entry, run_id=run_id, stage="simulate")
        database.flush()
        totals = database.usage_totals(run_id=run_id)
        assert (totals.calls, totals.prompt_tokens, totals.cached_tokens) == (1, 1200, 1024)
        database.finish_run(run_id, RunStatus.COMPLETED)
    assert _rows(db_path, "SELECT stage, operation, attempts, created_at FROM llm_calls") == [
        ("simulate", "chat", 2, "2024-05-01T12:00:00.250000Z")]


def test_config_keys_are_stable_and_sensitive() -> None:
    base = dict(subject_model="m", model_fingerprint="f", manifest_hash="h", method="token-pairs",
                polarity="positive", backend="b", model="x", prompt_hash="p", split_seed=0,
                parameters={"a": 1, "b": [1, 2]})
    key = explanation_config_key(**base)
    assert key == explanation_config_key(**{**base, "parameters": {"b": (1, 2), "a": 1}})
    for name, value in (("prompt_hash", "q"), ("backend", "c"), ("manifest_hash", "g"), ("split_seed", 1),
                        ("parameters", {"a": 2, "b": [1, 2]})):
        assert explanation_config_key(**{**base, name: value}) != key
    assert len(key) == 64 and config_key("score", a=1) != config_key("explanation", a=1)
    with pytest.raises(TypeError):
        config_key("x", value=object())


def test_sixty_four_async_producers_and_readers_never_see_locked(new_db) -> None:
    producers, per_producer = 64, 25
    errors: list[BaseException] = []
    db = new_db()
    with open_database(db_url(db), flush_interval_s=0.05) as database:
        recording = register(database)
        stop = threading.Event()

        def read_while_writing() -> None:
            try:
                while not stop.is_set():
                    database.query(ExplanationQuery(min_score=0.5, limit=10))
                    database.explained_neurons(explain_key())
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        readers = [threading.Thread(target=read_while_writing) for _ in range(2)]
        for reader in readers:
            reader.start()

        async def producer(layer: int) -> None:
            for neuron in range(per_producer):
                neuron_id = NeuronId(layer, neuron)
                await asyncio.sleep(0)  # an LLM call would be awaited here
                database.record_explanation(recording, explanation(neuron_id, f"l{layer} n{neuron}"),
                                            config_key=explain_key())
                future = database.record_score(recording, score(neuron_id, neuron / per_producer),
                                               explanation_key=explain_key(), config_key=score_key())
                database.record_llm_call(LLMCall(backend="local:default", model="SmolLM2", prompt_tokens=5))
                if neuron == per_producer - 1:
                    await asyncio.wrap_future(future)  # the pipeline can await a commit when it needs one

        async def main() -> None:
            await asyncio.gather(*(producer(layer) for layer in range(producers)))

        asyncio.run(main())
        database.flush()
        stop.set()
        for reader in readers:
            reader.join()
        counts = database.counts()
    assert not errors
    total = producers * per_producer
    assert (counts["explanations"], counts["scores"], counts["llm_calls"]) == (total, total, total)
    assert integrity(db) == [("ok",)]


def test_two_writers_on_one_file_wait_instead_of_failing(new_db) -> None:
    url = db_url(new_db())
    first = open_database(url, flush_interval_s=0.01, batch_size=7)
    second = open_database(url, flush_interval_s=0.01, batch_size=5)
    try:
        def write(database, layer: int) -> None:
            recording = register(database)
            for neuron in range(200):
                database.record_explanation(recording, explanation(NeuronId(layer, neuron), "x"),
                                            config_key=explain_key())
            database.flush()

        threads = [threading.Thread(target=write, args=(first, 0)), threading.Thread(target=write, args=(second, 1))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert first.counts()["explanations"] == 400
    finally:
        first.close()
        second.close()


def test_a_bad_record_fails_alone_and_flush_reports_it(new_db) -> None:
    with open_database(db_url(new_db())) as database:
        recording = register(database)
        good = database.record_explanation(recording, explanation(NeuronId(0, 0), "fine"), config_key=explain_key())
        orphan = database.record_score(recording, score(NeuronId(0, 9), 0.5), explanation_key=explain_key(),
                                       config_key=score_key())
        with pytest.raises(DatabaseWriteError, match="not in the database"):
            database.flush()
        assert good.result() is None
        with pytest.raises(LookupError):
            orphan.result()
        assert database.counts()["explanations"] == 1
        database.flush()  # the error was reported once


def test_writes_are_durable_after_flush_even_if_the_process_dies(db_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from fixtures.db_factory import populate
        from neuron_explainer.db import open_database
        database = open_database({str(db_path)!r})
        populate(database, [(0, n, "token-pairs", "t", 0.5) for n in range(30)])
        os._exit(0)  # no close(), no atexit: like kill -9 right after the flush
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert _rows(db_path, "SELECT count(*) FROM scores") == [(30,)]
    assert _rows(db_path, "PRAGMA integrity_check") == [("ok",)]


def test_upgrade_from_version_1_fixture(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE_V1, path)
    assert _rows(path, "SELECT value FROM ne_meta WHERE key = 'schema_version'") == [("1",)]
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("INSERT INTO failures (run_id, stage, config_key, subject_model_id, layer, neuron, reason, "
                           "raw_output, created_at) VALUES (1, 'explain', ?, 1, 2, 4, 'backend error: "
                           "LLMTransientError: gave up after 6 attempts: HTTP 503', '', '2024-01-01T00:00:00Z')",
                           ("e1" * 32,))
        connection.commit()
    with open_database(str(path), create=False) as database:
        assert database.schema_version_found == 1
        rows = database.query(ExplanationQuery(limit=None, best_per_neuron=False, sort="layer"))
        assert [(str(row.neuron), row.method, row.score) for row in rows][:2] == [
            ("0:1", "token-pairs", 0.82), ("0:1", "sasc", 0.55)]
        assert all(row.baselines == {} for row in rows)
        assert [row.text for row in database.query(ExplanationQuery(search="PYTHON"))] == [
            "the word 'def' in Python code"]
        assert database.usage_totals().cached_tokens == 0
        assert database.failed_neurons(stage="explain", config_key="e1" * 32) == {NeuronId(2, 3), NeuronId(2, 4)}
        # Version 3 classified old failures: a backend that gave up is transient (the next run retries it), an
        # unusable answer permanent (retried with --retry-failed).
        assert database.failed_neurons(stage="explain", config_key="e1" * 32, kind="permanent") == {NeuronId(2, 3)}
        assert database.failed_neurons(stage="explain", config_key="e1" * 32, kind="transient") == {NeuronId(2, 4)}
        assert database.run(1).status == "completed"
        [old_score] = database.neuron_details(NeuronId(0, 2))[0].explanations[0].scores
        [window] = old_score.score.windows  # moved from scores.windows_json into score_windows
        assert (window.window_id, window.tokens, window.true_activations, window.simulated_activations) == (
            9, ("def", " f"), (2.5, 0.0), (9.0, 0.5))
        # New writes use the new columns.
        recording = database.register_recording(model_id="tiny-llama", fingerprint="fp-v1", path="/records/v1",
                                                manifest={"ctx": 64}, manifest_hash="m1" * 32)
        database.record_explanation(recording, explanation(NeuronId(5, 5), "fresh after upgrade"),
                                    config_key="e1" * 32)
        database.record_llm_call(LLMCall(backend="x", model="y", cached_tokens=7))
        database.flush()
        assert database.usage_totals().cached_tokens == 7
        assert database.query(ExplanationQuery(search="after upgrade")) == []  # not scored yet
    assert _rows(path, "SELECT value FROM ne_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert _rows(path, "SELECT rowid FROM explanations_fts WHERE text MATCH '\"fresh after\"'") == [(5,)]
    assert _rows(path, "PRAGMA integrity_check") == [("ok",)]
    with open_database(str(path), create=False) as database:
        assert database.schema_version_found == SCHEMA_VERSION


def test_newer_schema_is_refused_untouched(db_path: Path) -> None:
    open_database(str(db_path)).close()
    connection = sqlite3.connect(db_path)
    connection.execute("UPDATE ne_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()
    with pytest.raises(UserError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        open_database(str(db_path))
    assert _rows(db_path, "SELECT value FROM ne_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION + 1),)]


def test_foreign_files_and_databases_are_refused(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.db"
    text_file.write_text("definitely not sqlite\n" * 10)
    with pytest.raises(UserError, match="not a SQLite database"):
        open_database(str(text_file))
    assert text_file.read_text().startswith("definitely not sqlite")
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    connection.commit()
    connection.close()
    with pytest.raises(UserError, match="not a neuron-explainer database.*invoices"):
        open_database(f"sqlite:///{other}")
    assert _rows(other, "SELECT name FROM sqlite_master") == [("invoices",)]
    with pytest.raises(UserError, match="no database at"):
        open_database(str(tmp_path / "missing.db"), create=False)
    with pytest.raises(UserError, match="does not exist"):
        open_database(str(tmp_path / "no-such-dir" / "x.db"))
    with pytest.raises(UserError, match="in-memory"):
        open_database("sqlite://")
    with pytest.raises(UserError, match="a directory"):
        open_database(str(tmp_path))


_HOLDER = textwrap.dedent("""
    import sys, time
    from neuron_explainer.db import open_database
    database = open_database(sys.argv[1])
    run_id = database.start_run(config={}, lock_ttl_s=float(sys.argv[2]))
    print(run_id, flush=True)
    time.sleep(600)
""")


def _start_holder(db_path: Path, ttl_s: float) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db_path), str(ttl_s)], stdout=subprocess.PIPE,
                               text=True)
    line = process.stdout.readline()
    assert line.strip(), "the lock holder did not start"
    return process, int(line)


def test_lock_is_exclusive_and_released_by_finish(new_db) -> None:
    url = db_url(new_db())
    with open_database(url) as first, open_database(url) as second:
        run_id = first.start_run(config={"a": 1})
        assert first.lock_holder().run_id == run_id
        with pytest.raises(UserError, match=f"in use by run {run_id} \\(pid {os.getpid()}"):
            second.start_run(config={})
        first.finish_run(run_id, RunStatus.COMPLETED, totals={"done": 3})
        assert first.lock_holder() is None
        other = second.start_run(config={})
        assert second.run(run_id).totals == {"done": 3}
    # close() without finish_run marks the run failed and frees the lock.
    with open_database(url) as database:
        assert database.run(other).status == "failed" and "without finishing" in database.run(other).error
        assert database.lock_holder() is None


def test_lock_of_a_killed_process_is_taken_over_at_once(db_path: Path) -> None:
    open_database(str(db_path)).close()
    process, dead_run = _start_holder(db_path, ttl_s=300)
    with open_database(str(db_path)) as database:
        with pytest.raises(UserError, match="in use by run"):
            database.start_run(config={})
        process.kill()
        process.wait()
        run_id = database.start_run(config={})
        assert run_id != dead_run
        crashed = database.run(dead_run)
        assert crashed.status == "failed" and f"process {process.pid} is gone" in crashed.error
        database.finish_run(run_id, RunStatus.COMPLETED)


def _stop_outside_a_write(process: subprocess.Popen, db_path: Path) -> None:
    """SIGSTOP the process at a moment it holds no SQLite write transaction.

    A process stopped inside its heartbeat's write keeps the file locked until it resumes, which no run can (or
    should) break; the test is about a hung process between writes, so it stops the holder again until that is so.
    """
    for _ in range(50):
        os.kill(process.pid, signal.SIGSTOP)
        probe = sqlite3.connect(db_path, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            return
        except sqlite3.OperationalError:
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError("the lock holder was inside a write every time it was stopped")


def test_lock_of_a_hung_process_expires(db_path: Path) -> None:
    open_database(str(db_path)).close()
    process, hung_run = _start_holder(db_path, ttl_s=1.5)
    try:
        _stop_outside_a_write(process, db_path)  # alive, but its heartbeat stops
        with open_database(str(db_path)) as database:
            with pytest.raises(UserError, match="expire in"):
                database.start_run(config={})
            time.sleep(2.0)
            run_id = database.start_run(config={})
            assert database.run(hung_run).status == "failed"
            assert "heartbeat stopped" in database.run(hung_run).error
            database.finish_run(run_id, RunStatus.COMPLETED)
    finally:
        process.kill()
        process.wait()


def test_heartbeat_keeps_a_live_lock(db_path: Path) -> None:
    with open_database(str(db_path), flush_interval_s=0.05) as first, open_database(str(db_path)) as second:
        run_id = first.start_run(config={}, lock_ttl_s=0.6)
        time.sleep(1.2)  # two lifetimes: only heartbeats keep it
        with pytest.raises(UserError, match="in use"):
            second.start_run(config={})
        assert not first.lock_lost
        first.finish_run(run_id, RunStatus.COMPLETED)


def test_postgresql_round_trip_and_idempotence(postgres_server) -> None:
    url = postgres_server.new_database()
    items = [(0, n, "token-pairs", "50%_OFF sale" if n == 3 else "50 percent off", n / 10) for n in range(6)]
    items.append((0, 1, "sasc", "b", 0.9))
    with open_database(url) as database:
        run_id = database.start_run(config={})
        populate(database, items, run_id=run_id)
        populate(database, items, run_id=run_id)
        assert database.counts()["scores"] == 7
        assert [str(row.neuron) for row in database.query(ExplanationQuery(limit=3))] == ["0:1", "0:5", "0:4"]
        found = database.query(ExplanationQuery(search="0%_o", method="token-pairs", best_per_neuron=False))
        assert [row.text for row in found] == ["50%_OFF sale"]
        by_layer = database.query(ExplanationQuery(sort="layer", limit=2))
        assert [(str(row.neuron), row.method) for row in by_layer] == [("0:0", "token-pairs"), ("0:1", "sasc")]
        database.finish_run(run_id, RunStatus.COMPLETED)
    with open_database(url, create=False) as database:
        assert database.run(run_id).status == "completed"


FIXTURE_V2 = Path(__file__).parent / "fixtures" / "neurons_v2.db"


def test_upgrade_from_version_2_fixture_keeps_polarities_apart(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    shutil.copy(FIXTURE_V2, path)
    assert _rows(path, "SELECT value FROM ne_meta WHERE key = 'schema_version'") == [("2",)]
    with open_database(str(path), create=False) as database:
        assert database.schema_version_found == 2
        best = database.query(ExplanationQuery(neurons=(1,), layers=(0,), limit=None))
        # Neuron 0:1 has a positive best (0.82) and a negative best (0.91): one row each, never mixed.
        assert sorted((row.polarity, row.score) for row in best) == [("negative", 0.91), ("positive", 0.82)]
        [anything] = database.query(ExplanationQuery(neurons=(1,), layers=(0,), polarity="any"))
        assert (anything.polarity, anything.score) == ("negative", 0.91)
        [positive] = database.query(ExplanationQuery(neurons=(1,), layers=(0,), polarity="positive"))
        assert positive.score == 0.82
        negative_rows = database.query(ExplanationQuery(polarity="negative", limit=None))
        assert [(str(row.neuron), row.text) for row in negative_rows] == [("0:1", "the end of a docstring")]
        assert negative_rows[0].baselines["shuffled"] == 0.02
    assert _rows(path, "SELECT polarity, count(*) FROM scores GROUP BY polarity") == [("negative", 1),
                                                                                     ("positive", 4)]
    assert _rows(path, "SELECT value FROM ne_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert _rows(path, "PRAGMA integrity_check") == [("ok",)]
