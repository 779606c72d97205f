"""The run lock: one row that says which process may run against this database, until when.

The holder refreshes `expires_at` with a heartbeat. A lock whose heartbeat stopped (crash, kill -9, lost
machine) expires after its time-to-live; on the same host a lock whose process is gone is taken over at once.
Taking over is a compare-and-swap on the owner token, so two processes racing for a stale lock cannot both win.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, update
from sqlalchemy.exc import IntegrityError

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.processes import process_alive
from neuron_explainer.db.codec import utc_iso
from neuron_explainer.db.models import RunLockRow, RunRow

LOCK_ROW_ID = 1


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) the run lock."""

    owner: str
    """Random token of the holding Database object."""
    run_id: int | None
    """The run it belongs to."""
    host: str
    """Host name of the holding process."""
    pid: int
    """Process id of the holding process."""
    heartbeat_at: float
    """Epoch seconds of the last heartbeat."""
    expires_at: float
    """Epoch seconds after which anyone may take the lock."""


def this_host() -> str:
    """The host name recorded in locks and runs."""
    return socket.gethostname()


def _holder(row: Row[Any]) -> LockHolder:
    return LockHolder(owner=row.owner, run_id=row.run_id, host=row.host, pid=row.pid,
                      heartbeat_at=row.heartbeat_at, expires_at=row.expires_at)


def stale_reason(holder: LockHolder, now: float) -> str | None:
    if holder.expires_at <= now:
        return f"its heartbeat stopped at {utc_iso(dt.datetime.fromtimestamp(holder.heartbeat_at, dt.timezone.utc))}"
    if holder.host == this_host() and holder.pid != os.getpid() and not process_alive(holder.pid):
        return f"its process {holder.pid} is gone"
    return None


def locked_message(where: str, holder: LockHolder, now: float) -> str:
    return (f"{where} is in use by run {holder.run_id} (pid {holder.pid} on {holder.host}, last heartbeat "
            f"{now - holder.heartbeat_at:.0f} s ago); wait for it to finish, or if it crashed for its lock to "
            f"expire in {max(holder.expires_at - now, 0):.0f} s")


def acquire(connection: Connection, *, owner: str, run_id: int | None, ttl_s: float, where: str) -> LockHolder | None:
    """Take the lock for `owner` inside the caller's transaction; return the stale holder it replaced, if any.

    Raises UserError when a live process holds it.
    """
    now = time.time()
    values = dict(owner=owner, run_id=run_id, host=this_host(), pid=os.getpid(), acquired_at=now,
                  heartbeat_at=now, expires_at=now + ttl_s)
    row = connection.execute(select(RunLockRow.__table__).where(RunLockRow.id == LOCK_ROW_ID)).first()
    if row is None:
        try:
            with connection.begin_nested():
                connection.execute(RunLockRow.__table__.insert().values(id=LOCK_ROW_ID, **values))
        except IntegrityError:
            raise UserError(f"{where} is in use by another run that started a moment ago") from None
        return None
    holder = _holder(row)
    if holder.owner == owner:
        connection.execute(update(RunLockRow).where(RunLockRow.id == LOCK_ROW_ID).values(**values))
        return None
    reason = stale_reason(holder, now)
    if reason is None:
        raise UserError(locked_message(where, holder, now))
    swapped = connection.execute(
        update(RunLockRow).where(RunLockRow.id == LOCK_ROW_ID, RunLockRow.owner == holder.owner).values(**values))
    if swapped.rowcount != 1:
        raise UserError(f"{where} is in use by another run that took over a stale lock a moment ago")
    if holder.run_id is not None:
        connection.execute(
            update(RunRow).where(RunRow.id == holder.run_id, RunRow.status == "running")
            .values(status="failed", ended_at=utc_iso(), error=f"abandoned: {reason}"))
    return holder


def attach_run(connection: Connection, *, owner: str, run_id: int) -> None:
    """Record which run the owner's lock belongs to."""
    connection.execute(update(RunLockRow).where(RunLockRow.id == LOCK_ROW_ID, RunLockRow.owner == owner)
                       .values(run_id=run_id))


def heartbeat(connection: Connection, *, owner: str, ttl_s: float) -> bool:
    """Extend the owner's lock; False when it is no longer the owner's (taken over after expiring)."""
    now = time.time()
    result = connection.execute(update(RunLockRow).where(RunLockRow.id == LOCK_ROW_ID, RunLockRow.owner == owner)
                                .values(heartbeat_at=now, expires_at=now + ttl_s))
    return result.rowcount == 1


def release(connection: Connection, *, owner: str) -> None:
    """Drop the owner's lock (a no-op if someone else holds it)."""
    connection.execute(RunLockRow.__table__.delete().where(RunLockRow.id == LOCK_ROW_ID,
                                                           RunLockRow.owner == owner))


def current_holder(connection: Connection) -> LockHolder | None:
    """Who holds the lock now (expired or not), or None."""
    row = connection.execute(select(RunLockRow.__table__).where(RunLockRow.id == LOCK_ROW_ID)).first()
    return _holder(row) if row is not None else None


def close_abandoned_runs(connection: Connection) -> None:
    """Mark failed the `running` runs of this host whose process is gone (workers without the lock, that died)."""
    host = this_host()
    for row in connection.execute(select(RunRow.id, RunRow.pid).where(RunRow.status == "running",
                                                                        RunRow.host == host)).all():
        if row.pid != os.getpid() and not process_alive(row.pid):
            connection.execute(update(RunRow).where(RunRow.id == row.id, RunRow.status == "running").values(
                status="failed", ended_at=utc_iso(), error=f"abandoned: its process {row.pid} is gone"))
