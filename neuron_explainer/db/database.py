"""`open_database` and `Database`: the one object the pipeline, the CLI and the exporters use.

Writes go through a single writer thread (writer.py applies the records of writes.py) and are idempotent: an
explanation is unique per (neuron, explanation config key), a score per (explanation, score config key), so a
resumed or duplicated run inserts nothing twice. Reads use their own connections and never wait for the writer (SQLite WAL); every read is a
function of reads.py, which the methods here call. Engines and error mapping live in engine.py, the run lock in
lock.py, upgrades in schema.py, the returned types in results.py.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from neuron_explainer.activations.records import NeuronStats
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure, FailureKind
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import lock as run_lock
from neuron_explainer.db import reads
from neuron_explainer.db.claims import live_workers
from neuron_explainer.db.codec import dump_json, float_or_none, redact, truncate, utc_iso
from neuron_explainer.db.engine import (OPEN_WAIT_S, check_sqlite_file, db_error_message, describe_url, make_engine,
                                        parse_url, user_facing_write_errors, write_refused)
from neuron_explainer.db.models import (UNDEFINED_SORT_SCORE, CausalScoreRow, ExplanationRow, NeuronRow, RecordingRow, RunRow, ScoreRow,
                                        ScoreWindowsRow, SubjectModelRow)
from neuron_explainer.db.query import ExplanationQuery, ResultRow, run_query
from neuron_explainer.db.results import LLMCall, NeuronDetail, RecordingRef, RunInfo, RunStatus, UsageTotals
from neuron_explainer.db.schema import SCHEMA_VERSION, has_search_index, prepare_schema, upgrade_step
from neuron_explainer.db.classifier import classifier_values
from neuron_explainer.db.writer import Writer
from neuron_explainer.db.writes import (Applier, CallWrite, ClassifierWrite, ExplanationWrite, FailureWrite, ScoreWrite,
                                        StatsWrite, WriteGuard, chunks, insert_ignoring_duplicates, windows_json)
from neuron_explainer.scoring_llm.types import ClassifierScore
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity
from neuron_explainer.simulate.types import Score, SimulatorKind

if TYPE_CHECKING:
    from neuron_explainer.llm.ledger import LedgerEntry

logger = logging.getLogger(__name__)

RAW_OUTPUT_LIMIT = 4000
"""Characters of an unusable model answer kept with a failure."""
DEFAULT_LOCK_TTL_S = 120.0
"""A run's lock expires this long after its last heartbeat (heartbeats every third of it)."""


# --- the database ------------------------------------------------------------------------------------------


class Database:
    """An open results database: queued idempotent writes, run bookkeeping and the lock, queries."""

    def __init__(self, url: URL, *, create: bool, batch_size: int, flush_interval_s: float):
        self.url = url
        self.where = describe_url(url)
        """The database named for messages (path, or URL without password)."""
        self._read_engine = make_engine(url, writer=False)
        write_engine = make_engine(url, writer=True)
        try:
            self.schema_version_found = self._prepare(make_engine(url, writer=True, busy_timeout_s=OPEN_WAIT_S),
                                                      create=create)
            """Schema version on disk before opening (smaller than SCHEMA_VERSION if it was upgraded)."""
            with self._read_engine.connect() as connection:
                self.search_index = has_search_index(connection)
                """Whether text search uses the SQLite FTS5 trigram index (else LIKE/ILIKE)."""
        except DBAPIError as exc:
            write_engine.dispose()
            self._read_engine.dispose()
            refused = write_refused(self.where, exc)
            if refused is not None:
                raise refused from None
            if url.get_backend_name() == "sqlite" and "unable to open" in db_error_message(exc):
                raise UserError(f"cannot open {self.where} for writing: SQLite needs to write the file and create "
                                "its -wal and -shm files beside it (check the permissions of the file and its "
                                "directory, and free space)") from None
            if url.get_backend_name() == "sqlite" and "locked" in db_error_message(exc):
                raise UserError(self._locked_message()) from None
            if url.get_backend_name() == "sqlite":
                raise UserError(f"{self.where} is not a usable SQLite database: {db_error_message(exc)}") from None
            raise UserError(f"cannot open {self.where}: {db_error_message(exc)}") from None
        except BaseException:
            write_engine.dispose()
            self._read_engine.dispose()
            raise
        self._applier = Applier()
        self._writer = Writer(write_engine, self._applier, batch_size=batch_size, flush_interval_s=flush_interval_s)
        self._lock_owner = uuid.uuid4().hex
        self._lock_ttl_s = DEFAULT_LOCK_TTL_S
        self._run_id: int | None = None
        self.lock_lost = False
        """Set when this process's run lock was taken over by another process (its heartbeat had stopped)."""
        self._closed = False
        atexit.register(self._close_at_exit)

    def _locked_message(self) -> str:
        """Why the file stayed locked: a live run of ours (named), else another program's open write transaction."""
        with contextlib.suppress(DBAPIError):
            with self._read_engine.connect() as connection:
                holder = run_lock.current_holder(connection)
            if holder is not None and run_lock.stale_reason(holder, time.time()) is None:
                return run_lock.locked_message(self.where, holder, time.time())
        return (f"{self.where} is locked by another program holding a write transaction (an open sqlite3 shell or "
                f"database browser?); waited {OPEN_WAIT_S:.0f} s: close it and run the command again")

    def _prepare(self, engine: Engine, *, create: bool) -> int:
        with engine.begin() as connection:
            found = prepare_schema(connection, where=self.where, create=create)
        version = found
        if version < SCHEMA_VERSION:
            with engine.connect() as connection:
                workers = live_workers(connection)
            if workers:
                raise UserError(f"{self.where} has schema version {version} and {workers} worker(s) of an older "
                                f"neuron-explainer are running on it; upgrade once they have finished (this one "
                                f"needs schema version {SCHEMA_VERSION})")
        while version < SCHEMA_VERSION:
            with engine.begin() as connection:
                current = prepare_schema(connection, where=self.where, create=False)
                if current == version:
                    logger.warning("upgrading %s from schema version %d to %d", self.where, version, version + 1)
                    upgrade_step(connection, version)
                    current = version + 1
            version = current
        engine.dispose()
        return found

    # --- lifecycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def flush(self, timeout: float | None = None) -> None:
        """Commit every queued write now; raises DatabaseWriteError if any could not be written (a UserError when
        the file is read-only or the disk is full)."""
        with user_facing_write_errors(self.where):
            self._writer.flush(timeout)

    def check_writes(self) -> None:
        """Raise at once (without waiting for queued writes) if a write has failed since the last check or flush;
        a UserError when the file is read-only or the disk is full, so a long run stops instead of working on."""
        with user_facing_write_errors(self.where):
            self._writer.check()

    def close(self) -> None:
        """Flush, release a still-held run lock (marking its run failed), stop the writer, close connections."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        try:
            if self._run_id is not None:
                self.finish_run(self._run_id, RunStatus.FAILED, error="closed without finishing the run")
        finally:
            try:
                with user_facing_write_errors(self.where):
                    self._writer.close()
            finally:
                self._read_engine.dispose()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - nothing left to report to at interpreter exit
            logger.exception("closing %s at exit failed", self.where)

    @property
    def records_written(self) -> int:
        """Records the writer has committed since opening."""
        return self._writer.records_written

    # --- runs and the lock -----------------------------------------------------------------------------------

    def start_run(self, *, config: Mapping[str, Any], code_version: str | None = None,
                  lock_ttl_s: float = DEFAULT_LOCK_TTL_S, shared: bool = False) -> int:
        """Take the run lock (UserError if another live run holds it), record a `running` run, return its id.

        A heartbeat keeps the lock alive until `finish_run`; a crashed run's lock is taken over once it
        expires, or at once when its process is gone from this host (its run is then marked failed).
        `shared`: one of several workers (PostgreSQL, db/claims.py): no run lock; runs of dead processes on this
        host are marked failed.
        """
        if self._run_id is not None:
            raise UserError(f"run {self._run_id} is still running on this connection")
        from neuron_explainer import __version__

        config_json = dump_json(config)
        self._lock_ttl_s = lock_ttl_s

        def start(connection: Connection) -> int:
            replaced = None
            if shared:
                run_lock.close_abandoned_runs(connection)
            else:
                replaced = run_lock.acquire(connection, owner=self._lock_owner, run_id=None, ttl_s=lock_ttl_s,
                                            where=self.where)
            if replaced is not None:
                logger.warning("took over the lock of run %s (pid %d on %s), whose heartbeat had stopped",
                               replaced.run_id, replaced.pid, replaced.host)
            run_id = connection.execute(insert(RunRow.__table__).values(
                status=RunStatus.RUNNING.value, config_json=config_json,
                code_version=code_version or __version__, host=run_lock.this_host(), pid=os.getpid(),
                started_at=utc_iso(), ended_at=None, totals_json="{}", error=None)).inserted_primary_key[0]
            if not shared:
                run_lock.attach_run(connection, owner=self._lock_owner, run_id=run_id)
            return int(run_id)

        with user_facing_write_errors(self.where):
            self._run_id = self._writer.call(start).result()
        if not shared:
            self._writer.set_periodic(self._heartbeat, lock_ttl_s / 3)
        return self._run_id

    def set_write_guard(self, guard: WriteGuard | None) -> None:
        """Have every batch of writes pass `guard` inside its transaction (a worker's leases: db/claims.py)."""
        self._applier.guard = guard

    def call_in_writer(self, function: Callable[[Connection], Any]) -> Future[Any]:
        """Run `function(connection)` in its own transaction after every write queued so far."""
        return self._writer.call(function)

    def _heartbeat(self, connection: Connection) -> None:
        if not run_lock.heartbeat(connection, owner=self._lock_owner, ttl_s=self._lock_ttl_s):
            if not self.lock_lost:
                logger.error("the run lock on %s was taken over by another process", self.where)
            self.lock_lost = True

    def finish_run(self, run_id: int, status: RunStatus, *, totals: Mapping[str, Any] | None = None,
                   error: str | None = None) -> None:
        """Commit pending writes, record the run's outcome and totals, release the lock."""
        status = RunStatus(status)
        totals_json = dump_json(totals or {})
        owner = self._lock_owner

        def finish(connection: Connection) -> None:
            connection.execute(update(RunRow).where(RunRow.id == run_id).values(
                status=status.value, ended_at=utc_iso(), totals_json=totals_json, error=error))
            run_lock.release(connection, owner=owner)

        try:
            self._writer.set_periodic(None)
            self.flush()
        finally:
            try:
                with user_facing_write_errors(self.where):
                    self._writer.call(finish).result()
            finally:
                # Whether or not the row could be written: the next run takes over the lock of a process that
                # is gone, and a second attempt from close() would fail the same way.
                if run_id == self._run_id:
                    self._run_id = None

    def lock_holder(self) -> run_lock.LockHolder | None:
        """Who holds the run lock now (None when free)."""
        with self._read_engine.connect() as connection:
            return run_lock.current_holder(connection)

    def run(self, run_id: int) -> RunInfo:
        """One run (UserError if unknown)."""
        runs = self.runs(run_ids=(run_id,))
        if not runs:
            raise UserError(f"no run {run_id} in {self.where}")
        return runs[0]

    def runs(self, *, limit: int | None = 20, run_ids: Sequence[int] = ()) -> list[RunInfo]:
        """Most recent runs first."""
        with self._read_engine.connect() as connection:
            return reads.runs(connection, limit=limit, run_ids=run_ids)

    # --- registration and writes -------------------------------------------------------------------------

    def register_recording(self, *, model_id: str, fingerprint: str, path: str | Path,
                           manifest: Mapping[str, Any], manifest_hash: str) -> RecordingRef:
        """Record (or find) a subject model and a record store; returns the reference writes need. Idempotent."""
        manifest_json = dump_json(manifest)
        now = utc_iso()

        def register(connection: Connection) -> RecordingRef:
            models = SubjectModelRow.__table__
            insert_ignoring_duplicates(connection, models, [
                {"model_id": model_id, "fingerprint": fingerprint, "created_at": now}])
            model_row_id = connection.execute(select(models.c.id).where(
                models.c.model_id == model_id, models.c.fingerprint == fingerprint)).scalar_one()
            recordings = RecordingRow.__table__
            insert_ignoring_duplicates(connection, recordings, [
                {"subject_model_id": model_row_id, "manifest_hash": manifest_hash, "path": str(path),
                 "manifest_json": manifest_json, "created_at": now}])
            row = connection.execute(select(recordings.c.id, recordings.c.subject_model_id)
                                     .where(recordings.c.manifest_hash == manifest_hash)).one()
            if row.subject_model_id != model_row_id:
                raise UserError(f"record store manifest {manifest_hash[:12]} is already registered for another "
                                f"subject model than {model_id}")
            connection.execute(update(RecordingRow).where(RecordingRow.id == row.id).values(path=str(path)))
            return RecordingRef(id=row.id, subject_model_id=model_row_id, model_id=model_id,
                                manifest_hash=manifest_hash)

        return self._writer.call(register).result()

    def record_neuron_stats(self, recording: RecordingRef, neuron: NeuronId, stats: NeuronStats) -> Future[None]:
        """Queue a neuron's activation statistics for this recording (kept once per recording)."""
        return self._writer.submit(StatsWrite(recording.subject_model_id, neuron.layer, neuron.neuron, {
            "recording_id": recording.id, "count": stats.count, "mean": float_or_none(stats.mean),
            "std": float_or_none(stats.std), "min": float_or_none(stats.min), "max": float_or_none(stats.max),
            "fraction_positive": float_or_none(stats.fraction_positive),
            "quantiles_json": dump_json([list(pair) for pair in stats.quantiles])}))

    def record_explanation(self, recording: RecordingRef, explanation: Explanation, *, config_key: str,
                           run_id: int | None = None) -> Future[None]:
        """Queue an explanation; a second one for the same (neuron, config_key) is ignored."""
        return self._writer.submit(ExplanationWrite(
            recording.subject_model_id, explanation.neuron.layer, explanation.neuron.neuron, {
                "recording_id": recording.id, "config_key": config_key,
                "method": ExplainerKind(explanation.method).value, "polarity": Polarity(explanation.polarity).value,
                "explainer_backend": redact(explanation.explainer_backend),
                "explainer_model": explanation.explainer_model, "prompt_hash": explanation.prompt_hash,
                "parameters_json": dump_json(explanation.parameters), "text": explanation.text,
                "source_window_ids_json": dump_json(list(explanation.source_window_ids)),
                "split_seed": explanation.split_seed, "prompt_tokens": explanation.prompt_tokens,
                "completion_tokens": explanation.completion_tokens, "extra_json": dump_json(explanation.extra),
                "created_at": utc_iso(explanation.created_at), "run_id": run_id}))

    def record_score(self, recording: RecordingRef, score: Score, *, explanation_key: str, config_key: str,
                     run_id: int | None = None) -> Future[None]:
        """Queue a score of the neuron's explanation stored under `explanation_key`; duplicates are ignored.

        The explanation may still be queued (same batch) or already stored.
        """
        metrics = score.metrics
        pearson = float_or_none(metrics.pearson)
        return self._writer.submit(ScoreWrite(
            recording.subject_model_id, score.neuron.layer, score.neuron.neuron, {
                "config_key": config_key, "simulator": SimulatorKind(score.simulator).value,
                "simulator_backend": redact(score.simulator_backend), "simulator_model": score.simulator_model,
                "prompt_hash": score.prompt_hash, "split_seed": score.split_seed,
                "parameters_json": dump_json(score.parameters), "pearson": pearson,
                "pearson_top": float_or_none(metrics.pearson_top),
                "pearson_random": float_or_none(metrics.pearson_random),
                "rsquared": float_or_none(metrics.rsquared),
                "absolute_dev_explained": float_or_none(metrics.absolute_dev_explained),
                "ci_low": float_or_none(metrics.ci_low), "ci_high": float_or_none(metrics.ci_high),
                "scored_tokens": metrics.scored_tokens, "undefined_reason": metrics.undefined_reason,
                "sort_score": UNDEFINED_SORT_SCORE if pearson is None else pearson,
                "prompt_tokens": score.prompt_tokens, "completion_tokens": score.completion_tokens,
                "created_at": utc_iso(score.created_at), "run_id": run_id,
                "baselines_json": dump_json(score.baselines)},
            explanation_key, windows_json(score.windows)))

    def record_classifier_score(self, recording: RecordingRef, score: ClassifierScore, *, explanation_key: str,
                                config_key: str, run_id: int | None = None) -> Future[None]:
        """Queue a detection or fuzzing score of the neuron's explanation stored under `explanation_key`;
        duplicates are ignored."""
        return self._writer.submit(ClassifierWrite(
            recording.subject_model_id, score.neuron.layer, score.neuron.neuron,
            classifier_values(score, config_key=config_key, run_id=run_id), explanation_key))

    def record_failure(self, failure: Failure, *, config_key: str, run_id: int | None = None,
                       recording: RecordingRef | None = None) -> Future[None]:
        """Queue a failed unit of work (raw output truncated); one per (run, stage, key, neuron)."""
        return self._writer.submit(FailureWrite({
            "run_id": run_id, "stage": failure.stage, "config_key": config_key,
            "subject_model_id": recording.subject_model_id if recording is not None else None,
            "layer": failure.neuron.layer, "neuron": failure.neuron.neuron,
            "reason": truncate(failure.reason, RAW_OUTPUT_LIMIT),
            "raw_output": truncate(failure.raw_output, RAW_OUTPUT_LIMIT), "created_at": utc_iso(),
            "kind": failure.kind.value}))

    def record_llm_call(self, call: LLMCall | LedgerEntry, *, run_id: int | None = None,
                        stage: str = "") -> Future[None]:
        """Queue one ledger entry (an LLMCall, or an `llm` LedgerEntry with `stage` saying what it was for)."""
        if not isinstance(call, LLMCall):
            call = LLMCall.from_entry(call, stage=stage)
        return self._writer.submit(CallWrite({
            "run_id": run_id, "stage": call.stage or stage, "backend": redact(call.backend), "model": call.model,
            "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
            "cached_tokens": call.cached_tokens, "latency_s": float(call.latency_s),
            "cost_usd": float_or_none(call.cost_usd), "from_cache": bool(call.from_cache),
            "created_at": utc_iso(call.created_at), "operation": call.operation, "attempts": call.attempts,
            "unit": call.unit}))

    # --- has-work checks (call flush() first if this process wrote recently) ------------------------------

    def explained_neurons(self, config_key: str) -> set[NeuronId]:
        """Neurons that already have an explanation under this explanation config key."""
        with self._read_engine.connect() as connection:
            return reads.explained_neurons(connection, config_key)

    def scored_neurons(self, *, explanation_key: str, score_key: str) -> set[NeuronId]:
        """Neurons whose explanation under `explanation_key` already has a score under `score_key`."""
        with self._read_engine.connect() as connection:
            return reads.scored_neurons(connection, explanation_key=explanation_key, score_key=score_key)

    def failure_reasons(self, neuron: NeuronId) -> list[tuple[str, str]]:
        """(stage, reason) of every stored failure of a neuron, newest first."""
        with self._read_engine.connect() as connection:
            return reads.failure_reasons(connection, neuron)

    def scores_without_baselines(self, *, explanation_key: str, score_key: str) -> set[NeuronId]:
        """Neurons whose score (explanation under `explanation_key`, score under `score_key`) has no baselines."""
        with self._read_engine.connect() as connection:
            return reads.scores_without_baselines(connection, explanation_key=explanation_key, score_key=score_key)

    def set_score_baselines(self, *, explanation_key: str, score_key: str, neuron: NeuronId,
                            baselines: Mapping[str, float]) -> None:
        """Store the baselines of one neuron's score (explanation under `explanation_key`, score under
        `score_key`), replacing what was there."""
        s, e, n = ScoreRow.__table__, ExplanationRow.__table__, NeuronRow.__table__
        text = dump_json(dict(baselines))

        def store(connection: Connection) -> None:
            ids = connection.execute(
                select(s.c.id).select_from(s.join(e, e.c.id == s.c.explanation_id).join(n, n.c.id == s.c.neuron_id))
                .where(e.c.config_key == explanation_key, s.c.config_key == score_key, n.c.layer == neuron.layer,
                       n.c.neuron == neuron.neuron)).scalars().all()
            if ids:
                connection.execute(s.update().where(s.c.id.in_(ids)).values(baselines_json=text))

        self._writer.call(store).result()

    def classified_neurons(self, *, explanation_key: str, score_key: str) -> set[NeuronId]:
        """Neurons whose explanation under `explanation_key` has a classifier score under `score_key`."""
        with self._read_engine.connect() as connection:
            return reads.classified_neurons(connection, explanation_key=explanation_key, score_key=score_key)

    def delete_scores(self, *, explanation_key: str, score_key: str, neurons: Iterable[NeuronId]) -> int:
        """Remove the scores (and their window details) of these neurons' explanations under `explanation_key`
        stored under `score_key`, so they can be scored afresh (`run --rescore`); returns how many."""
        wanted = {(neuron.layer, neuron.neuron) for neuron in neurons}
        s, e, n = ScoreRow.__table__, ExplanationRow.__table__, NeuronRow.__table__
        w = ScoreWindowsRow.__table__

        def delete(connection: Connection) -> int:
            rows = connection.execute(
                select(s.c.id, n.c.layer, n.c.neuron)
                .select_from(s.join(e, e.c.id == s.c.explanation_id).join(n, n.c.id == s.c.neuron_id))
                .where(e.c.config_key == explanation_key, s.c.config_key == score_key)).all()
            ids = [row.id for row in rows if (row.layer, row.neuron) in wanted]
            for chunk in chunks(ids):
                connection.execute(w.delete().where(w.c.score_id.in_(list(chunk))))
                connection.execute(CausalScoreRow.__table__.delete().where(
                    CausalScoreRow.__table__.c.score_id.in_(list(chunk))))
                connection.execute(s.delete().where(s.c.id.in_(list(chunk))))
            return len(ids)

        self.flush()
        return self._writer.call(delete).result()

    def failed_neurons(self, *, stage: str, config_key: str, kind: FailureKind | str | None = None) -> set[NeuronId]:
        """Neurons with a recorded failure at `stage` under `config_key` (in any run; subtract what succeeded),
        of one kind or of any."""
        with self._read_engine.connect() as connection:
            return reads.failed_neurons(connection, stage=stage, config_key=config_key, kind=kind)

    def load_explanations(self, config_key: str, *,
                          neurons: Iterable[NeuronId] | None = None) -> dict[NeuronId, Explanation]:
        """Stored explanations under `config_key` (e.g. to re-score them with a new simulator)."""
        with self._read_engine.connect() as connection:
            return reads.load_explanations(connection, config_key, neurons=neurons)

    def usage_totals(self, *, run_id: int | None = None) -> UsageTotals:
        """Summed ledger entries (of one run, or of all)."""
        with self._read_engine.connect() as connection:
            return reads.usage_totals(connection, run_id=run_id)

    def counts(self) -> dict[str, int]:
        """Rows per main table."""
        with self._read_engine.connect() as connection:
            return reads.counts(connection)

    # --- queries -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self) -> Iterator[Connection]:
        """A read connection for the bulk reads of `db.reads` (exporters, the viewer); never write through it."""
        with self._read_engine.connect() as connection:
            yield connection

    def iter_query(self, query: ExplanationQuery) -> Iterator[ResultRow]:
        """Stream the rows of a query (for exports over every neuron)."""
        with self._read_engine.connect() as connection:
            yield from run_query(connection, query, search_index=self.search_index)

    def query(self, query: ExplanationQuery) -> list[ResultRow]:
        """The rows of a query."""
        return list(self.iter_query(query))

    def neuron_details(self, neuron: NeuronId, *, model: str | None = None) -> list[NeuronDetail]:
        """Everything stored about one neuron, one entry per subject model (only `model` if given)."""
        with self._read_engine.connect() as connection:
            return reads.neuron_details(connection, neuron, model=model)



def open_database(url: str, *, create: bool = True, batch_size: int = 500,
                  flush_interval_s: float = 0.5) -> Database:
    """Open (creating or upgrading as needed) the results database at `url`.

    `url` is any SQLAlchemy URL (`sqlite:///neurons.db`, `postgresql+psycopg://user@host/db`) or a plain file
    path (SQLite). With `create=False` a missing or empty database is a UserError. A file that is not SQLite,
    a database without our meta table, or a newer schema is refused with a UserError and left untouched.
    """
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or str(parsed.database).startswith("file::memory:"):
            raise UserError("an in-memory SQLite database cannot be shared by the writer and readers; use a file")
        check_sqlite_file(Path(str(parsed.database)), create=create)
    return Database(parsed, create=create, batch_size=batch_size, flush_interval_s=flush_interval_s)
