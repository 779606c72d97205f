"""The single database writer: one thread that owns the write connection and commits queued records in batches.

Any number of producers (threads or asyncio tasks) call `submit`, which only appends to a queue, so no producer
ever waits on the database or sees "database is locked". The thread commits a batch when `batch_size` records are
waiting or `flush_interval_s` has passed since the oldest one arrived, whichever comes first; `flush()` commits
everything queued so far and waits for it. Callables (`call`) run on the same connection in queue order, which is
how run bookkeeping and the lock share the one writer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Record = Any


class DatabaseWriteError(RuntimeError):
    """Records could not be written (the database refused them); raised by `flush()` and `close()`."""


class BatchApplier:
    """Writes a batch of records inside an open transaction; subclassed by the database."""

    def apply(self, connection: Connection, records: Sequence[Record]) -> list[BaseException | None]:
        """Write `records`; return, per record, an exception for records that were skipped (others None)."""
        raise NotImplementedError

    def committed(self) -> None:
        """The last `apply` was committed (promote anything staged during it)."""

    def rolled_back(self) -> None:
        """The last `apply` was rolled back (forget anything staged during it)."""


@dataclass
class _Entry:
    record: Record
    future: Future[None]


@dataclass
class _Call(Generic[T]):
    function: Callable[[Connection], T]
    future: Future[T]


@dataclass
class _Barrier:
    future: Future[None] = field(default_factory=Future)


_STOP = object()


def _is_busy(error: OperationalError) -> bool:
    message = str(error.orig).lower() if error.orig is not None else str(error).lower()
    return "locked" in message or "busy" in message


class Writer:
    """A background thread that serialises every write to one database connection."""

    def __init__(self, engine: Engine, applier: BatchApplier, *, batch_size: int = 500,
                 flush_interval_s: float = 0.5, busy_retries: int = 5, name: str = "neuron-explainer-db-writer"):
        self._engine = engine
        self._applier = applier
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._busy_retries = busy_retries
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._errors: list[BaseException] = []
        self._errors_lock = threading.Lock()
        self._periodic: tuple[float, Callable[[Connection], None]] | None = None
        self._next_periodic = float("inf")
        self._closed = False
        self._crash: BaseException | None = None
        self.records_written = 0
        """Records committed so far (for benchmarks and summaries)."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- producer side ----------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._crash is not None:
            raise DatabaseWriteError(f"the database writer stopped: {self._crash}") from self._crash
        if self._closed:
            raise DatabaseWriteError("the database is closed")

    def submit(self, record: Record) -> Future[None]:
        """Queue a record; the future completes when it is committed (or fails with the reason it was not)."""
        self._check_open()
        future: Future[None] = Future()
        self._queue.put(_Entry(record, future))
        return future

    def call(self, function: Callable[[Connection], T]) -> Future[T]:
        """Run `function(connection)` in its own transaction on the writer thread, after everything queued so far."""
        self._check_open()
        future: Future[T] = Future()
        self._queue.put(_Call(function, future))
        return future

    def set_periodic(self, function: Callable[[Connection], None] | None, interval_s: float = 0.0) -> None:
        """Run `function` in its own transaction every `interval_s` seconds on the writer thread (None stops it)."""
        self._check_open()
        self._queue.put(_Call(lambda _connection: self._install_periodic(function, interval_s), Future()))

    def _install_periodic(self, function: Callable[[Connection], None] | None, interval_s: float) -> None:
        self._periodic = (interval_s, function) if function is not None else None
        self._next_periodic = time.monotonic() + interval_s if function is not None else float("inf")

    def flush(self, timeout: float | None = None) -> None:
        """Commit everything queued so far; raise DatabaseWriteError if any record since the last flush failed."""
        self._check_open()
        barrier = _Barrier()
        self._queue.put(barrier)
        barrier.future.result(timeout)
        self._raise_errors()

    def check(self) -> None:
        """Raise DatabaseWriteError now if a record failed since the last check or flush (does not wait)."""
        self._raise_errors()

    def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, stop the thread; raise DatabaseWriteError for records that failed."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._raise_errors()

    def _raise_errors(self) -> None:
        with self._errors_lock:
            errors, self._errors = self._errors, []
        if self._crash is not None:
            raise DatabaseWriteError(f"the database writer stopped: {self._crash}") from self._crash
        if errors:
            raise DatabaseWriteError(f"{len(errors)} record(s) were not written; first: {errors[0]}") from errors[0]

    # --- writer thread ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[_Entry] = []
        deadline = float("inf")
        try:
            while True:
                now = time.monotonic()
                timeout = max(min(deadline, self._next_periodic) - now, 0.0)
                try:
                    item = self._queue.get(timeout=None if timeout == float("inf") else timeout)
                except queue.Empty:
                    item = None
                stop = False
                while item is not None:
                    if isinstance(item, _Entry):
                        if not pending:
                            deadline = time.monotonic() + self._flush_interval_s
                        pending.append(item)
                        if len(pending) >= self._batch_size:
                            self._write(pending)
                            pending, deadline = [], float("inf")
                    else:
                        if pending:
                            self._write(pending)
                            pending, deadline = [], float("inf")
                        if item is _STOP:
                            stop = True
                            break
                        if isinstance(item, _Barrier):
                            item.future.set_result(None)
                        else:
                            self._run_call(item)
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        item = None
                if stop:
                    return
                if pending and time.monotonic() >= deadline:
                    self._write(pending)
                    pending, deadline = [], float("inf")
                if self._periodic is not None and time.monotonic() >= self._next_periodic:
                    interval_s, function = self._periodic
                    self._next_periodic = time.monotonic() + interval_s
                    self._run_call(_Call(function, Future()))
        except BaseException as exc:  # noqa: BLE001 - the thread must report, never vanish silently
            logger.exception("database writer crashed")
            self._crash = exc
            for entry in pending:
                entry.future.set_exception(exc)
            self._fail_queued(exc)
        finally:
            self._engine.dispose()

    def _fail_queued(self, error: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, (_Entry, _Call)):
                item.future.set_exception(error)
            elif isinstance(item, _Barrier):
                item.future.set_result(None)

    def _run_call(self, call: _Call[Any]) -> None:
        for attempt in range(self._busy_retries + 1):
            try:
                with self._engine.begin() as connection:
                    result = call.function(connection)
            except OperationalError as exc:
                if _is_busy(exc) and attempt < self._busy_retries:
                    time.sleep(0.2 * 2 ** attempt)
                    continue
                call.future.set_exception(exc)
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                call.future.set_exception(exc)
                return
            call.future.set_result(result)
            return

    def _apply(self, entries: Sequence[_Entry]) -> list[BaseException | None]:
        try:
            with self._engine.begin() as connection:
                outcomes = self._applier.apply(connection, [entry.record for entry in entries])
        except BaseException:
            self._applier.rolled_back()
            raise
        self._applier.committed()
        return outcomes

    def _write(self, entries: list[_Entry]) -> None:
        for attempt in range(self._busy_retries + 1):
            try:
                outcomes = self._apply(entries)
            except OperationalError as exc:
                if _is_busy(exc) and attempt < self._busy_retries:
                    logger.warning("database busy, retrying a batch of %d records", len(entries))
                    time.sleep(0.2 * 2 ** attempt)
                    continue
                self._write_one_by_one(entries)
                return
            except Exception:  # noqa: BLE001 - isolate the record that broke the batch
                self._write_one_by_one(entries)
                return
            self._settle(entries, outcomes)
            return

    def _write_one_by_one(self, entries: list[_Entry]) -> None:
        if len(entries) == 1:
            try:
                outcomes = self._apply(entries)
            except Exception as exc:  # noqa: BLE001 - reported through the future and flush()
                # One line: SQLAlchemy's message continues with the SQL, its parameters and a help link.
                logger.error("could not write %s: %s", type(entries[0].record).__name__,
                             (str(exc).strip().splitlines() or [type(exc).__name__])[0])
                outcomes = [exc]
            self._settle(entries, outcomes)
            return
        for entry in entries:
            self._write_one_by_one([entry])

    def _settle(self, entries: Sequence[_Entry], outcomes: Sequence[BaseException | None]) -> None:
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome is None:
                self.records_written += 1
                entry.future.set_result(None)
            else:
                with self._errors_lock:
                    self._errors.append(outcome)
                entry.future.set_exception(outcome)
