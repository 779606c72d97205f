"""`open_database` and `Database`: the one object the pipeline, the CLI and the exporters use.

Writes go through a single writer thread (see writer.py) and are idempotent: an explanation is unique per
(neuron, explanation config key), a score per (explanation, score config key), so a resumed or duplicated run
inserts nothing twice. Reads use their own connections and never wait for the writer (SQLite WAL).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, case, create_engine, event, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError

from neuron_explainer.activations.records import NeuronStats
from neuron_explainer.core.database_url import normalise_database_url
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import lock as run_lock
from neuron_explainer.db.codec import (dump_json, float_or_none, load_json, none_to_nan, redact, truncate,
                                       utc_iso)
from neuron_explainer.db.models import (UNDEFINED_SORT_SCORE, ExplanationRow, FailureRow, LLMCallRow, NeuronRow,
                                        NeuronStatsRow, RecordingRow, RunRow, ScoreRow, ScoreWindowsRow,
                                        SubjectModelRow)
from neuron_explainer.db.query import ExplanationQuery, ResultRow, run_query
from neuron_explainer.db.schema import SCHEMA_VERSION, has_search_index, prepare_schema, upgrade_step
from neuron_explainer.db.writer import BatchApplier, DatabaseWriteError, Writer
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity
from neuron_explainer.simulate.types import Metrics, Score, ScoredWindow, SimulatorKind, WindowSplit

if TYPE_CHECKING:
    from neuron_explainer.llm.ledger import LedgerEntry

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
"""How long an SQLite connection waits for another process's write lock before giving up."""
RAW_OUTPUT_LIMIT = 4000
"""Characters of an unusable model answer kept with a failure."""
DEFAULT_LOCK_TTL_S = 120.0
"""A run's lock expires this long after its last heartbeat (heartbeats every third of it)."""
_CHUNK = 400
_SQLITE_HEADER = b"SQLite format 3\x00"


class RunStatus(str, Enum):
    """Outcome of a run."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED_BUDGET = "stopped: budget"
    INTERRUPTED = "stopped: interrupted"


@dataclass(frozen=True)
class RecordingRef:
    """A record store registered in the database; pass it to every write about its neurons."""

    id: int
    """Row id of the recording."""
    subject_model_id: int
    """Row id of its subject model."""
    model_id: str
    """Subject model id."""
    manifest_hash: str
    """Hash of the record store manifest."""


@dataclass(frozen=True)
class LLMCall:
    """One entry of the LLM call ledger: which backend, how many tokens, how long, what it cost. Never a key."""

    backend: str
    """Backend spec (credentials in URLs are redacted before storing)."""
    model: str
    """Model name."""
    prompt_tokens: int = 0
    """Prompt tokens billed."""
    completion_tokens: int = 0
    """Completion tokens billed."""
    cached_tokens: int = 0
    """Prompt tokens the provider served from its prompt cache."""
    latency_s: float = 0.0
    """Wall-clock seconds of the call."""
    cost_usd: float | None = None
    """Estimated cost (None when the price is unknown)."""
    from_cache: bool = False
    """Served from our response cache (no backend call)."""
    stage: str = ""
    """`explain`, `simulate`, ... (empty when unknown)."""
    operation: str = ""
    """`chat`, `completion`, `slots`, ... as the backend reports it."""
    attempts: int = 0
    """HTTP attempts made (0 for cache hits and in-process calls)."""
    created_at: str | float | None = None
    """When the call finished: ISO-8601 text or epoch seconds (None: now)."""

    @classmethod
    def from_entry(cls, entry: LedgerEntry, *, stage: str = "") -> LLMCall:
        """The database form of an `llm.ledger.LedgerEntry`."""
        return cls(backend=entry.backend, model=entry.model, prompt_tokens=entry.prompt_tokens,
                   completion_tokens=entry.completion_tokens, cached_tokens=entry.cached_tokens,
                   latency_s=entry.latency_s, cost_usd=entry.cost_usd, from_cache=entry.from_cache, stage=stage,
                   operation=entry.operation, attempts=entry.attempts, created_at=entry.created_at)


@dataclass(frozen=True)
class UsageTotals:
    """Sums over ledger entries."""

    calls: int
    """Entries."""
    cache_hits: int
    """Entries served from the response cache."""
    prompt_tokens: int
    """Prompt tokens."""
    completion_tokens: int
    """Completion tokens."""
    cached_tokens: int
    """Provider-cached prompt tokens."""
    cost_usd: float
    """Summed cost of entries with a known cost."""


@dataclass(frozen=True)
class RunInfo:
    """A run as stored."""

    id: int
    """Run id."""
    status: str
    """A RunStatus value."""
    config: dict[str, Any]
    """Configuration the run was started with."""
    code_version: str
    """Version of the code that ran."""
    host: str
    """Host it ran on."""
    pid: int
    """Its process id."""
    started_at: str
    """Start time (ISO-8601 UTC)."""
    ended_at: str | None
    """End time, None while running."""
    totals: dict[str, Any]
    """Totals the run reported when it finished."""
    error: str | None
    """Why it failed, if it did."""


@dataclass(frozen=True)
class StoredScore:
    """A score read back from the database."""

    id: int
    """Row id."""
    config_key: str
    """Score config key."""
    run_id: int | None
    """Run that wrote it."""
    score: Score
    """The score with metrics and per-window details."""


@dataclass(frozen=True)
class StoredExplanation:
    """An explanation read back from the database, with its scores."""

    id: int
    """Row id."""
    config_key: str
    """Explanation config key."""
    run_id: int | None
    """Run that wrote it."""
    manifest_hash: str
    """Recording it was made from."""
    explanation: Explanation
    """The explanation with provenance."""
    scores: tuple[StoredScore, ...]
    """Its scores, best first."""


@dataclass(frozen=True)
class NeuronDetail:
    """Everything stored about one neuron of one subject model."""

    neuron: NeuronId
    """The neuron."""
    model_id: str
    """Subject model id."""
    model_fingerprint: str
    """Subject model weights fingerprint."""
    stats: tuple[tuple[str, NeuronStats], ...]
    """(recording manifest hash, statistics) for each recording that stored them."""
    explanations: tuple[StoredExplanation, ...]
    """Its explanations, best score first."""


# --- write records (built by producers, applied by the writer thread) ---------------------------------------


@dataclass(frozen=True)
class _NeuronWrite:
    subject_model_id: int
    layer: int
    neuron: int
    values: dict[str, Any]


@dataclass(frozen=True)
class _StatsWrite(_NeuronWrite):
    pass


@dataclass(frozen=True)
class _ExplanationWrite(_NeuronWrite):
    pass


@dataclass(frozen=True)
class _ScoreWrite(_NeuronWrite):
    explanation_key: str
    windows_json: str


@dataclass(frozen=True)
class _FailureWrite:
    values: dict[str, Any]


@dataclass(frozen=True)
class _CallWrite:
    values: dict[str, Any]


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def insert_ignoring_duplicates(connection: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT rows, silently skipping any that violate a unique constraint (SQLite and PostgreSQL natively)."""
    if not rows:
        return
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.execute(sqlite_insert(table).on_conflict_do_nothing(), list(rows))
    elif dialect == "postgresql":
        connection.execute(postgresql_insert(table).on_conflict_do_nothing(), list(rows))
    else:
        for row in rows:
            try:
                with connection.begin_nested():
                    connection.execute(insert(table), [row])
            except IntegrityError:
                continue


def _number_list(values: Sequence[float]) -> str:
    """JSON array text of `values` at 6 significant digits (about half the size of float64 repr), NaN as null."""
    text = ",".join(["%.6g" % value for value in values])
    if "n" in text:  # only "nan" and "inf" contain an n
        text = ",".join(["%.6g" % value if math.isfinite(value) else "null" for value in values])
    return f"[{text}]"


def _windows_json(windows: Sequence[ScoredWindow]) -> str:
    # Written by hand: this is the bulk of every score and of the writer's work, so no generic encoder walk.
    return "[" + ",".join(
        f'{{"window_id":{int(window.window_id)},"split":"{WindowSplit(window.split).value}",'
        f'"tokens":{json.dumps([str(token) for token in window.tokens], ensure_ascii=False, separators=(",", ":"))},'
        f'"true":{_number_list(window.true_activations)},"simulated":{_number_list(window.simulated_activations)},'
        f'"error":{json.dumps(window.error)}}}'
        for window in windows) + "]"


def _windows_from_json(text: str) -> tuple[ScoredWindow, ...]:
    return tuple(ScoredWindow(
        window_id=item["window_id"], split=WindowSplit(item["split"]), tokens=tuple(item["tokens"]),
        true_activations=tuple(none_to_nan(value) for value in item["true"]),
        simulated_activations=tuple(none_to_nan(value) for value in item["simulated"]),
        error=item.get("error")) for item in load_json(text, []))


class _Applier(BatchApplier):
    """Turns queued write records into rows, resolving neuron and explanation ids by their natural keys."""

    def __init__(self) -> None:
        self._neuron_ids: dict[tuple[int, int, int], int] = {}
        self._staged: dict[tuple[int, int, int], int] = {}

    def committed(self) -> None:
        if len(self._neuron_ids) > 2_000_000:
            self._neuron_ids.clear()
        self._neuron_ids.update(self._staged)
        self._staged = {}

    def rolled_back(self) -> None:
        self._staged = {}

    def _resolve_neurons(self, connection: Connection, keys: set[tuple[int, int, int]]) -> dict[tuple[int, int, int], int]:
        known = {key: self._neuron_ids[key] for key in keys if key in self._neuron_ids}
        missing = sorted(keys - known.keys())
        if not missing:
            return known
        insert_ignoring_duplicates(connection, NeuronRow.__table__, [
            {"subject_model_id": model, "layer": layer, "neuron": neuron} for model, layer, neuron in missing])
        table = NeuronRow.__table__
        for chunk in _chunks(missing):
            rows = connection.execute(
                select(table.c.id, table.c.subject_model_id, table.c.layer, table.c.neuron)
                .where(tuple_(table.c.subject_model_id, table.c.layer, table.c.neuron).in_(list(chunk))))
            for row in rows:
                key = (row.subject_model_id, row.layer, row.neuron)
                known[key] = row.id
                self._staged[key] = row.id
        return known

    def apply(self, connection: Connection, records: Sequence[Any]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = [None] * len(records)
        neuron_keys = {(record.subject_model_id, record.layer, record.neuron)
                       for record in records if isinstance(record, _NeuronWrite)}
        neuron_ids = self._resolve_neurons(connection, neuron_keys) if neuron_keys else {}

        def neuron_id(record: _NeuronWrite) -> int:
            return neuron_ids[(record.subject_model_id, record.layer, record.neuron)]

        stats = [dict(record.values, neuron_id=neuron_id(record)) for record in records
                 if isinstance(record, _StatsWrite)]
        insert_ignoring_duplicates(connection, NeuronStatsRow.__table__, stats)
        explanations = [dict(record.values, neuron_id=neuron_id(record)) for record in records
                        if isinstance(record, _ExplanationWrite)]
        insert_ignoring_duplicates(connection, ExplanationRow.__table__, explanations)

        score_positions = [index for index, record in enumerate(records) if isinstance(record, _ScoreWrite)]
        if score_positions:
            wanted = sorted({(neuron_id(records[index]), records[index].explanation_key)
                             for index in score_positions})
            explanation_ids: dict[tuple[int, str], int] = {}
            table = ExplanationRow.__table__
            for chunk in _chunks(wanted):
                rows = connection.execute(select(table.c.id, table.c.neuron_id, table.c.config_key)
                                          .where(tuple_(table.c.neuron_id, table.c.config_key).in_(list(chunk))))
                explanation_ids.update({(row.neuron_id, row.config_key): row.id for row in rows})
            scores, windows = [], {}
            for index in score_positions:
                record = records[index]
                key = (neuron_id(record), record.explanation_key)
                if key not in explanation_ids:
                    outcomes[index] = LookupError(
                        f"score for neuron {record.layer}:{record.neuron} names explanation key "
                        f"{record.explanation_key[:12]}..., which is not in the database; record the explanation first")
                    continue
                scores.append(dict(record.values, neuron_id=key[0], explanation_id=explanation_ids[key]))
                windows.setdefault((explanation_ids[key], record.values["config_key"]), record.windows_json)
            insert_ignoring_duplicates(connection, ScoreRow.__table__, scores)
            table = ScoreRow.__table__
            details = []
            for chunk in _chunks(sorted(windows)):
                rows = connection.execute(select(table.c.id, table.c.explanation_id, table.c.config_key)
                                          .where(tuple_(table.c.explanation_id, table.c.config_key).in_(list(chunk))))
                details += [{"score_id": row.id, "windows_json": windows[(row.explanation_id, row.config_key)]}
                            for row in rows]
            # A score that already existed keeps its own details (first write wins, as for the score itself).
            insert_ignoring_duplicates(connection, ScoreWindowsRow.__table__, details)

        insert_ignoring_duplicates(connection, FailureRow.__table__,
                                   [record.values for record in records if isinstance(record, _FailureWrite)])
        calls = [record.values for record in records if isinstance(record, _CallWrite)]
        if calls:
            connection.execute(insert(LLMCallRow.__table__), calls)
        return outcomes


# --- engines -----------------------------------------------------------------------------------------------


def _parse_url(url: str) -> URL:
    try:
        return make_url(normalise_database_url(url))
    except ArgumentError:
        raise UserError(f"malformed database URL {redact(url)!r}: use sqlite:///FILE or "
                        "postgresql+psycopg://USER@HOST/DB") from None


def _check_sqlite_file(path: Path, *, create: bool) -> None:
    if path.exists():
        if path.is_dir():
            raise UserError(f"{path} is a directory, not a database file")
        with path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:
            raise UserError(f"{path} is not a SQLite database (refusing to touch it)")
        return
    if not create:
        raise UserError(f"no database at {path}; run `neuron-explainer run` first or check --db")
    if not path.parent.exists():
        raise UserError(f"cannot create {path}: directory {path.parent} does not exist")


def _make_engine(url: URL, *, writer: bool) -> Engine:
    try:
        if url.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
                                   pool_size=1 if writer else 5, max_overflow=0 if writer else 10)

            @event.listens_for(engine, "connect")
            def _configure(dbapi_connection: Any, _record: Any) -> None:
                # Transactions are begun explicitly below, so pysqlite must not begin them itself.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
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


def _describe(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return url.render_as_string(hide_password=True)


def _db_error_message(error: DBAPIError) -> str:
    text = str(error.orig) if error.orig is not None else str(error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _write_refused(where: str, error: BaseException) -> UserError | None:
    """A one-line UserError when the database refused a write for a reason only the user can fix, else None."""
    cause = error.__cause__ if isinstance(error, DatabaseWriteError) and error.__cause__ is not None else error
    text = _db_error_message(cause) if isinstance(cause, DBAPIError) else str(cause)
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
def _user_facing_write_errors(where: str) -> Iterator[None]:
    try:
        yield
    except (DatabaseWriteError, DBAPIError) as exc:
        refused = _write_refused(where, exc)
        if refused is None:
            raise
        raise refused from None


# --- the database ------------------------------------------------------------------------------------------


class Database:
    """An open results database: queued idempotent writes, run bookkeeping and the lock, queries."""

    def __init__(self, url: URL, *, create: bool, batch_size: int, flush_interval_s: float):
        self.url = url
        self.where = _describe(url)
        """The database named for messages (path, or URL without password)."""
        self._read_engine = _make_engine(url, writer=False)
        write_engine = _make_engine(url, writer=True)
        try:
            self.schema_version_found = self._prepare(write_engine, create=create)
            """Schema version on disk before opening (smaller than SCHEMA_VERSION if it was upgraded)."""
            with self._read_engine.connect() as connection:
                self.search_index = has_search_index(connection)
                """Whether text search uses the SQLite FTS5 trigram index (else LIKE/ILIKE)."""
        except DBAPIError as exc:
            write_engine.dispose()
            self._read_engine.dispose()
            refused = _write_refused(self.where, exc)
            if refused is not None:
                raise refused from None
            if url.get_backend_name() == "sqlite" and "unable to open" in _db_error_message(exc):
                raise UserError(f"cannot open {self.where} for writing: SQLite needs to write the file and create "
                                "its -wal and -shm files beside it (check the permissions of the file and its "
                                "directory, and free space)") from None
            if url.get_backend_name() == "sqlite":
                raise UserError(f"{self.where} is not a usable SQLite database: {_db_error_message(exc)}") from None
            raise UserError(f"cannot open {self.where}: {_db_error_message(exc)}") from None
        except BaseException:
            write_engine.dispose()
            self._read_engine.dispose()
            raise
        self._writer = Writer(write_engine, _Applier(), batch_size=batch_size, flush_interval_s=flush_interval_s)
        self._lock_owner = uuid.uuid4().hex
        self._lock_ttl_s = DEFAULT_LOCK_TTL_S
        self._run_id: int | None = None
        self.lock_lost = False
        """Set when this process's run lock was taken over by another process (its heartbeat had stopped)."""
        self._closed = False
        atexit.register(self._close_at_exit)

    def _prepare(self, engine: Engine, *, create: bool) -> int:
        with engine.begin() as connection:
            found = prepare_schema(connection, where=self.where, create=create)
        version = found
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
        with _user_facing_write_errors(self.where):
            self._writer.flush(timeout)

    def check_writes(self) -> None:
        """Raise at once (without waiting for queued writes) if a write has failed since the last check or flush;
        a UserError when the file is read-only or the disk is full, so a long run stops instead of working on."""
        with _user_facing_write_errors(self.where):
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
                with _user_facing_write_errors(self.where):
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
                  lock_ttl_s: float = DEFAULT_LOCK_TTL_S) -> int:
        """Take the run lock (UserError if another live run holds it), record a `running` run, return its id.

        A heartbeat keeps the lock alive until `finish_run`; a crashed run's lock is taken over once it
        expires, or at once when its process is gone from this host (its run is then marked failed).
        """
        if self._run_id is not None:
            raise UserError(f"run {self._run_id} is still running on this connection")
        from neuron_explainer import __version__

        config_json = dump_json(config)
        self._lock_ttl_s = lock_ttl_s

        def start(connection: Connection) -> int:
            replaced = run_lock.acquire(connection, owner=self._lock_owner, run_id=None, ttl_s=lock_ttl_s,
                                        where=self.where)
            if replaced is not None:
                logger.warning("took over the lock of run %s (pid %d on %s), whose heartbeat had stopped",
                               replaced.run_id, replaced.pid, replaced.host)
            run_id = connection.execute(insert(RunRow.__table__).values(
                status=RunStatus.RUNNING.value, config_json=config_json,
                code_version=code_version or __version__, host=run_lock.this_host(), pid=os.getpid(),
                started_at=utc_iso(), ended_at=None, totals_json="{}", error=None)).inserted_primary_key[0]
            run_lock.attach_run(connection, owner=self._lock_owner, run_id=run_id)
            return int(run_id)

        with _user_facing_write_errors(self.where):
            self._run_id = self._writer.call(start).result()
        self._writer.set_periodic(self._heartbeat, lock_ttl_s / 3)
        return self._run_id

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
                with _user_facing_write_errors(self.where):
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
        table = RunRow.__table__
        statement = select(table).order_by(table.c.id.desc()).limit(limit)
        if run_ids:
            statement = statement.where(table.c.id.in_(list(run_ids)))
        with self._read_engine.connect() as connection:
            return [RunInfo(id=row.id, status=row.status, config=load_json(row.config_json, {}),
                            code_version=row.code_version, host=row.host, pid=row.pid, started_at=row.started_at,
                            ended_at=row.ended_at, totals=load_json(row.totals_json, {}), error=row.error)
                    for row in connection.execute(statement)]

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
        return self._writer.submit(_StatsWrite(recording.subject_model_id, neuron.layer, neuron.neuron, {
            "recording_id": recording.id, "count": stats.count, "mean": float_or_none(stats.mean),
            "std": float_or_none(stats.std), "min": float_or_none(stats.min), "max": float_or_none(stats.max),
            "fraction_positive": float_or_none(stats.fraction_positive),
            "quantiles_json": dump_json([list(pair) for pair in stats.quantiles])}))

    def record_explanation(self, recording: RecordingRef, explanation: Explanation, *, config_key: str,
                           run_id: int | None = None) -> Future[None]:
        """Queue an explanation; a second one for the same (neuron, config_key) is ignored."""
        return self._writer.submit(_ExplanationWrite(
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
        return self._writer.submit(_ScoreWrite(
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
            explanation_key, _windows_json(score.windows)))

    def record_failure(self, failure: Failure, *, config_key: str, run_id: int | None = None,
                       recording: RecordingRef | None = None) -> Future[None]:
        """Queue a failed unit of work (raw output truncated); one per (run, stage, key, neuron)."""
        return self._writer.submit(_FailureWrite({
            "run_id": run_id, "stage": failure.stage, "config_key": config_key,
            "subject_model_id": recording.subject_model_id if recording is not None else None,
            "layer": failure.neuron.layer, "neuron": failure.neuron.neuron,
            "reason": truncate(failure.reason, RAW_OUTPUT_LIMIT),
            "raw_output": truncate(failure.raw_output, RAW_OUTPUT_LIMIT), "created_at": utc_iso()}))

    def record_llm_call(self, call: LLMCall | LedgerEntry, *, run_id: int | None = None,
                        stage: str = "") -> Future[None]:
        """Queue one ledger entry (an LLMCall, or an `llm` LedgerEntry with `stage` saying what it was for)."""
        if not isinstance(call, LLMCall):
            call = LLMCall.from_entry(call, stage=stage)
        return self._writer.submit(_CallWrite({
            "run_id": run_id, "stage": call.stage or stage, "backend": redact(call.backend), "model": call.model,
            "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens,
            "cached_tokens": call.cached_tokens, "latency_s": float(call.latency_s),
            "cost_usd": float_or_none(call.cost_usd), "from_cache": bool(call.from_cache),
            "created_at": utc_iso(call.created_at), "operation": call.operation, "attempts": call.attempts}))

    # --- has-work checks (call flush() first if this process wrote recently) ------------------------------

    def explained_neurons(self, config_key: str) -> set[NeuronId]:
        """Neurons that already have an explanation under this explanation config key."""
        e, n = ExplanationRow.__table__, NeuronRow.__table__
        statement = (select(n.c.layer, n.c.neuron).select_from(e.join(n, n.c.id == e.c.neuron_id))
                     .where(e.c.config_key == config_key))
        with self._read_engine.connect() as connection:
            return {NeuronId(row.layer, row.neuron) for row in connection.execute(statement)}

    def scored_neurons(self, *, explanation_key: str, score_key: str) -> set[NeuronId]:
        """Neurons whose explanation under `explanation_key` already has a score under `score_key`."""
        s, e, n = ScoreRow.__table__, ExplanationRow.__table__, NeuronRow.__table__
        statement = (select(n.c.layer, n.c.neuron)
                     .select_from(s.join(e, e.c.id == s.c.explanation_id).join(n, n.c.id == s.c.neuron_id))
                     .where(e.c.config_key == explanation_key, s.c.config_key == score_key))
        with self._read_engine.connect() as connection:
            return {NeuronId(row.layer, row.neuron) for row in connection.execute(statement)}

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
            for chunk in _chunks(ids):
                connection.execute(w.delete().where(w.c.score_id.in_(list(chunk))))
                connection.execute(s.delete().where(s.c.id.in_(list(chunk))))
            return len(ids)

        self.flush()
        return self._writer.call(delete).result()

    def failed_neurons(self, *, stage: str, config_key: str) -> set[NeuronId]:
        """Neurons with a recorded failure at `stage` under `config_key` (in any run; subtract what succeeded)."""
        f = FailureRow.__table__
        statement = select(f.c.layer, f.c.neuron).where(f.c.stage == stage, f.c.config_key == config_key)
        with self._read_engine.connect() as connection:
            return {NeuronId(row.layer, row.neuron) for row in connection.execute(statement)}

    def load_explanations(self, config_key: str, *,
                          neurons: Iterable[NeuronId] | None = None) -> dict[NeuronId, Explanation]:
        """Stored explanations under `config_key` (e.g. to re-score them with a new simulator)."""
        e, n = ExplanationRow.__table__, NeuronRow.__table__
        statement = (select(e, n.c.layer, n.c.neuron).select_from(e.join(n, n.c.id == e.c.neuron_id))
                     .where(e.c.config_key == config_key))
        wanted = set(neurons) if neurons is not None else None
        with self._read_engine.connect() as connection:
            found = {}
            for row in connection.execute(statement):
                neuron = NeuronId(row.layer, row.neuron)
                if wanted is None or neuron in wanted:
                    found[neuron] = _explanation(row, neuron)
            return found

    def usage_totals(self, *, run_id: int | None = None) -> UsageTotals:
        """Summed ledger entries (of one run, or of all)."""
        c = LLMCallRow.__table__
        statement = select(func.count(c.c.id), func.coalesce(func.sum(case((c.c.from_cache, 1), else_=0)), 0),
                           func.coalesce(func.sum(c.c.prompt_tokens), 0),
                           func.coalesce(func.sum(c.c.completion_tokens), 0),
                           func.coalesce(func.sum(c.c.cached_tokens), 0), func.coalesce(func.sum(c.c.cost_usd), 0.0))
        if run_id is not None:
            statement = statement.where(c.c.run_id == run_id)
        with self._read_engine.connect() as connection:
            row = connection.execute(statement).one()
        return UsageTotals(calls=int(row[0]), cache_hits=int(row[1]), prompt_tokens=int(row[2]),
                           completion_tokens=int(row[3]), cached_tokens=int(row[4]), cost_usd=float(row[5]))

    def counts(self) -> dict[str, int]:
        """Rows per main table."""
        tables = {"subject_models": SubjectModelRow, "recordings": RecordingRow, "neurons": NeuronRow,
                  "explanations": ExplanationRow, "scores": ScoreRow, "failures": FailureRow,
                  "llm_calls": LLMCallRow, "runs": RunRow}
        with self._read_engine.connect() as connection:
            return {name: int(connection.execute(select(func.count()).select_from(model.__table__)).scalar_one())
                    for name, model in tables.items()}

    # --- queries -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self) -> Iterator[Connection]:
        """A read connection for bulk reads this API does not cover (exporters); never write through it."""
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
        n, m = NeuronRow.__table__, SubjectModelRow.__table__
        e, s, r, st = ExplanationRow.__table__, ScoreRow.__table__, RecordingRow.__table__, NeuronStatsRow.__table__
        statement = (select(n.c.id, m.c.model_id, m.c.fingerprint)
                     .select_from(n.join(m, m.c.id == n.c.subject_model_id))
                     .where(n.c.layer == neuron.layer, n.c.neuron == neuron.neuron).order_by(m.c.model_id))
        if model is not None:
            statement = statement.where(m.c.model_id == model)
        details = []
        with self._read_engine.connect() as connection:
            for neuron_row in connection.execute(statement).all():
                stats = tuple(
                    (row.manifest_hash, _neuron_stats(row._mapping))
                    for row in connection.execute(
                        select(st, r.c.manifest_hash).select_from(st.join(r, r.c.id == st.c.recording_id))
                        .where(st.c.neuron_id == neuron_row.id).order_by(st.c.id)))
                explanation_rows = connection.execute(
                    select(e, r.c.manifest_hash).select_from(e.join(r, r.c.id == e.c.recording_id))
                    .where(e.c.neuron_id == neuron_row.id).order_by(e.c.id)).all()
                texts = {row.id: row.text for row in explanation_rows}
                scores_by_explanation: dict[int, list[StoredScore]] = {}
                w = ScoreWindowsRow.__table__
                for row in connection.execute(select(s, w.c.windows_json)
                                              .select_from(s.outerjoin(w, w.c.score_id == s.c.id))
                                              .where(s.c.neuron_id == neuron_row.id)
                                              .order_by(s.c.sort_score.desc(), s.c.id)):
                    scores_by_explanation.setdefault(row.explanation_id, []).append(
                        _stored_score(row, neuron, texts.get(row.explanation_id, "")))
                explanations = [
                    StoredExplanation(id=row.id, config_key=row.config_key, run_id=row.run_id,
                                      manifest_hash=row.manifest_hash, explanation=_explanation(row, neuron),
                                      scores=tuple(scores_by_explanation.get(row.id, ())))
                    for row in explanation_rows]
                explanations.sort(key=lambda item: -_best_sort_score(item))
                details.append(NeuronDetail(neuron=neuron, model_id=neuron_row.model_id,
                                            model_fingerprint=neuron_row.fingerprint, stats=stats,
                                            explanations=tuple(explanations)))
        return details


def _best_sort_score(item: StoredExplanation) -> float:
    defined = [stored.score.metrics.pearson for stored in item.scores if math.isfinite(stored.score.metrics.pearson)]
    return max(defined) if defined else UNDEFINED_SORT_SCORE - (0 if item.scores else 1)


def _neuron_stats(values: Mapping[str, Any]) -> NeuronStats:
    # Mapping access: `count` on a Row would be tuple.count.
    return NeuronStats(
        count=values["count"], mean=none_to_nan(values["mean"]), std=none_to_nan(values["std"]),
        min=none_to_nan(values["min"]), max=none_to_nan(values["max"]),
        fraction_positive=none_to_nan(values["fraction_positive"]),
        quantiles=tuple((float(p), float(v)) for p, v in load_json(values["quantiles_json"], [])))


def _explanation(row: Any, neuron: NeuronId) -> Explanation:
    return Explanation(
        neuron=neuron, text=row.text, method=ExplainerKind(row.method), polarity=Polarity(row.polarity),
        explainer_backend=row.explainer_backend, explainer_model=row.explainer_model,
        prompt_hash=row.prompt_hash, parameters=load_json(row.parameters_json, {}),
        source_window_ids=tuple(load_json(row.source_window_ids_json, [])), split_seed=row.split_seed,
        created_at=row.created_at, prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        extra=load_json(row.extra_json, {}))


def _stored_score(row: Any, neuron: NeuronId, explanation_text: str) -> StoredScore:
    metrics = Metrics(
        pearson=none_to_nan(row.pearson), pearson_top=none_to_nan(row.pearson_top),
        pearson_random=none_to_nan(row.pearson_random), rsquared=none_to_nan(row.rsquared),
        absolute_dev_explained=none_to_nan(row.absolute_dev_explained), ci_low=none_to_nan(row.ci_low),
        ci_high=none_to_nan(row.ci_high), scored_tokens=row.scored_tokens, undefined_reason=row.undefined_reason)
    return StoredScore(id=row.id, config_key=row.config_key, run_id=row.run_id, score=Score(
        neuron=neuron, explanation_text=explanation_text, simulator=SimulatorKind(row.simulator),
        simulator_backend=row.simulator_backend, simulator_model=row.simulator_model,
        prompt_hash=row.prompt_hash, split_seed=row.split_seed, metrics=metrics,
        windows=_windows_from_json(row.windows_json or "[]"), parameters=load_json(row.parameters_json, {}),
        created_at=row.created_at, prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        baselines={key: none_to_nan(value) for key, value in load_json(row.baselines_json, {}).items()}))


def open_database(url: str, *, create: bool = True, batch_size: int = 500,
                  flush_interval_s: float = 0.5) -> Database:
    """Open (creating or upgrading as needed) the results database at `url`.

    `url` is any SQLAlchemy URL (`sqlite:///neurons.db`, `postgresql+psycopg://user@host/db`) or a plain file
    path (SQLite). With `create=False` a missing or empty database is a UserError. A file that is not SQLite,
    a database without our meta table, or a newer schema is refused with a UserError and left untouched.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:") or str(parsed.database).startswith("file::memory:"):
            raise UserError("an in-memory SQLite database cannot be shared by the writer and readers; use a file")
        _check_sqlite_file(Path(str(parsed.database)), create=create)
    return Database(parsed, create=create, batch_size=batch_size, flush_interval_s=flush_interval_s)
