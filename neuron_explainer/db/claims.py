"""Leases on units of work, so that any number of `run` workers on one PostgreSQL database split a night.

A plan (the run's explanation and score configurations and its neuron selection, hashed into `plan_key`) offers
one row per neuron with work left. A worker claims rows with `SELECT ... FOR UPDATE SKIP LOCKED`, so two workers
never take the same row; a claim is a lease the worker renews while it lives. A lease that expired, or whose
process is gone from this host, is taken over by the next worker that claims. Every result write of a claimed
neuron goes through `guard` inside the writer's transaction, which locks the neuron's claim row and drops the
write unless this worker still holds the lease: a slow worker whose lease was taken over writes nothing late,
and a worker taking over sees everything its predecessor committed. A finished neuron's row gets `done_at`.

Times are the database server's clock (`clock_timestamp()`), so workers on machines with skewed clocks agree.
SQLite has no row locks: there a night stays one process (the run lock in db/lock.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, inspect, text

from neuron_explainer.db.lock import this_host
from neuron_explainer.core.processes import process_alive
from neuron_explainer.core.neurons import NeuronId

logger = logging.getLogger(__name__)

DEFAULT_LEASE_S = 300.0
"""How long a claim lives without renewal; a dead worker's units wait this long (less on its own host)."""

_NOW = "extract(epoch from clock_timestamp())"
_CHUNK = 5000


def plan_key(unit_keys: Sequence[tuple[str, str]], *, selection: str, mode: str) -> str:
    """Identity of a plan: its (explanation key, score key) pairs, the selection spec and the re-do mode."""
    document = json.dumps({"units": sorted(unit_keys), "selection": selection, "mode": mode}, sort_keys=True)
    return hashlib.sha256(document.encode()).hexdigest()


def supports_claims(engine_or_url: Any) -> bool:
    """Whether the database can split a night between workers (PostgreSQL)."""
    name = engine_or_url.get_backend_name() if hasattr(engine_or_url, "get_backend_name") else str(engine_or_url)
    return name.startswith("postgresql")


class ClaimBoard:
    """One worker's view of a plan's claims: offer, claim, renew, guard writes, mark done."""

    def __init__(self, url: Any, *, plan: str, owner: str, run_id: int | None, lease_s: float = DEFAULT_LEASE_S):
        self.plan = plan
        self.owner = owner
        self.run_id = run_id
        self.lease_s = lease_s
        self._engine: Engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2)
        self._held: set[tuple[int, int]] = set()
        self._held_lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.plan_started_at = self._server_now()
        """Server time when this worker planned: claims finished before it are reopened if the plan lists them."""
        self.lost = 0
        """Writes dropped because this worker's lease had been taken over."""

    def _server_now(self) -> float:
        with self._engine.connect() as connection:
            return float(connection.execute(text(f"SELECT {_NOW}")).scalar_one())

    # --- offering and claiming ---------------------------------------------------------------------------------

    def offer(self, neurons: Iterable[NeuronId]) -> None:
        """Make sure each neuron has a claim row; reopen rows this plan lists that were finished before it began
        (a --rescore or --retry-failed night redoes them)."""
        keys = sorted({(neuron.layer, neuron.neuron) for neuron in neurons})
        with self._engine.begin() as connection:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start:start + _CHUNK]
                layers = [layer for layer, _ in chunk]
                indices = [index for _, index in chunk]
                connection.execute(text(
                    "INSERT INTO unit_claims (plan_key, layer, neuron, expires_at) "
                    "SELECT :plan, l, n, 0 FROM unnest(CAST(:layers AS integer[]), CAST(:neurons AS integer[])) "
                    "AS u(l, n) ON CONFLICT DO NOTHING"), {"plan": self.plan, "layers": layers, "neurons": indices})
                connection.execute(text(
                    "UPDATE unit_claims SET done_at = NULL, owner = NULL, expires_at = 0 FROM "
                    "unnest(CAST(:layers AS integer[]), CAST(:neurons AS integer[])) AS u(l, n) "
                    "WHERE plan_key = :plan AND layer = u.l AND neuron = u.n AND done_at < :planned"),
                    {"plan": self.plan, "layers": layers, "neurons": indices, "planned": self.plan_started_at})

    def _bound(self, connection: Connection) -> None:
        # A worker frozen inside a transaction (stopped, swapped out, cut off) would keep its claim rows locked, and
        # SKIP LOCKED would hide them from everyone for good: the server ends such a transaction after one lease.
        timeout_ms = max(int(self.lease_s * 1000), 1000)
        connection.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms}"))

    def claim(self, count: int = 1) -> list[tuple[NeuronId, bool]]:
        """Lease up to `count` open neurons; each comes with whether it was taken over from another worker (then
        the caller must re-read what that worker committed). An empty list: nothing left to claim now."""
        host, pid = this_host(), os.getpid()
        with self._engine.begin() as connection:
            self._bound(connection)
            candidates = connection.execute(text(
                f"SELECT layer, neuron, owner, host, pid, expires_at < {_NOW} AS expired FROM unit_claims "
                "WHERE plan_key = :plan AND done_at IS NULL AND owner IS DISTINCT FROM :owner AND (owner IS NULL "
                f"OR expires_at < {_NOW} OR host = :host) ORDER BY layer, neuron LIMIT :limit "
                "FOR UPDATE SKIP LOCKED"),
                {"plan": self.plan, "owner": self.owner, "host": host, "limit": max(count * 4, 8)}).all()
            taken: list[tuple[NeuronId, bool]] = []
            for row in candidates:
                takeover = row.owner is not None and row.owner != self.owner
                if takeover and not row.expired and (row.host != host or row.pid == pid or process_alive(row.pid)):
                    continue  # a live worker on this host still holds it
                if takeover:
                    logger.warning("taking over neuron %d:%d from worker pid %s on %s (%s)", row.layer, row.neuron,
                                   row.pid, row.host, "lease expired" if row.expired else "process gone")
                connection.execute(text(
                    f"UPDATE unit_claims SET owner = :owner, run_id = :run, host = :host, pid = :pid, "
                    f"expires_at = {_NOW} + :lease WHERE plan_key = :plan AND layer = :layer AND neuron = :neuron"),
                    {"owner": self.owner, "run": self.run_id, "host": host, "pid": pid, "lease": self.lease_s,
                     "plan": self.plan, "layer": row.layer, "neuron": row.neuron})
                taken.append((NeuronId(row.layer, row.neuron), takeover))
                if len(taken) == count:
                    break
        with self._held_lock:
            self._held.update((neuron.layer, neuron.neuron) for neuron, _ in taken)
        return taken

    def remaining(self) -> int:
        """Open neurons of the plan (unfinished, whoever holds them)."""
        with self._engine.connect() as connection:
            return int(connection.execute(text(
                "SELECT count(*) FROM unit_claims WHERE plan_key = :plan AND done_at IS NULL"),
                {"plan": self.plan}).scalar_one())

    # --- keeping and finishing ---------------------------------------------------------------------------------

    def start_renewing(self) -> None:
        """Renew this worker's leases every third of their lifetime, on a thread of its own."""
        def renew() -> None:
            while not self._stop.wait(self.lease_s / 3):
                try:
                    with self._engine.begin() as connection:
                        connection.execute(text(
                            f"UPDATE unit_claims SET expires_at = {_NOW} + :lease WHERE plan_key = :plan AND "
                            "owner = :owner AND done_at IS NULL"),
                            {"lease": self.lease_s, "plan": self.plan, "owner": self.owner})
                except Exception:  # noqa: BLE001 - a dropped connection: the next renewal reconnects
                    logger.warning("could not renew leases; retrying in %.0f s", self.lease_s / 3, exc_info=True)

        self._renewer = threading.Thread(target=renew, name="neuron-explainer-leases", daemon=True)
        self._renewer.start()

    def guard(self, connection: Connection, units: Sequence[tuple[int, int] | None]) -> set[int]:
        """Inside the writer's transaction: lock the claim rows of the units this worker holds and return the
        positions of writes to drop (their lease was taken over). None units (not neuron writes) always pass."""
        with self._held_lock:
            mine = {unit for unit in units if unit is not None and unit in self._held}
        if not mine:
            return set()
        self._bound(connection)
        held = sorted(mine)
        rows = connection.execute(text(
            "SELECT layer, neuron FROM unit_claims JOIN unnest(CAST(:layers AS integer[]), CAST(:neurons AS "
            "integer[])) AS u(l, n) ON layer = u.l AND neuron = u.n WHERE plan_key = :plan AND owner = :owner "
            "FOR UPDATE OF unit_claims"),
            {"plan": self.plan, "owner": self.owner, "layers": [layer for layer, _ in held],
             "neurons": [neuron for _, neuron in held]}).all()
        still = {(row.layer, row.neuron) for row in rows}
        lost = mine - still
        if not lost:
            return set()
        dropped = {position for position, unit in enumerate(units) if unit in lost}
        self.lost += len(dropped)
        logger.warning("dropped %d late write(s) for %d neuron(s) whose lease another worker took over",
                       len(dropped), len(lost))
        return dropped

    def finish(self, connection: Connection, neuron: NeuronId) -> None:
        """Inside the writer's transaction (after the neuron's writes): mark it done if this worker holds it."""
        connection.execute(text(
            f"UPDATE unit_claims SET done_at = {_NOW}, expires_at = 0 WHERE plan_key = :plan AND layer = :layer "
            "AND neuron = :neuron AND owner = :owner"),
            {"plan": self.plan, "layer": neuron.layer, "neuron": neuron.neuron, "owner": self.owner})
        with self._held_lock:
            self._held.discard((neuron.layer, neuron.neuron))

    def close(self) -> None:
        """Stop renewing and release the leases of unfinished neurons (another worker takes them at once)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            with self._engine.begin() as connection:
                connection.execute(text(
                    "UPDATE unit_claims SET owner = NULL, expires_at = 0 WHERE plan_key = :plan AND owner = :owner "
                    "AND done_at IS NULL"), {"plan": self.plan, "owner": self.owner})
        except Exception:  # noqa: BLE001 - the leases expire on their own
            logger.warning("could not release leases; they expire in %.0f s", self.lease_s)
        finally:
            self._engine.dispose()


def live_workers(connection: Connection) -> int:
    """Workers holding unexpired leases on this database (0 on databases without claims)."""
    if connection.dialect.name != "postgresql" or not inspect(connection).has_table("unit_claims"):
        return 0
    return int(connection.execute(text(
        f"SELECT count(DISTINCT owner) FROM unit_claims WHERE owner IS NOT NULL AND done_at IS NULL AND "
        f"expires_at > {_NOW}")).scalar_one())
