"""Where a run's workers get their next neuron: a local queue (one process owns the night), or leases on a
PostgreSQL database that several `run` processes share (db/claims.py), so they split the night without duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence

from neuron_explainer.db import Database
from neuron_explainer.db.claims import ClaimBoard, plan_key, supports_claims
from neuron_explainer.core.neurons import NeuronId

logger = logging.getLogger(__name__)

TakeoverHook = Callable[[NeuronId], None]
"""Called (in a thread) with a neuron taken over from another worker, before it is processed."""


class LocalUnits:
    """The neurons of one process's plan, in order."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[NeuronId] = asyncio.Queue()

    def offer(self, todo: Sequence[NeuronId]) -> None:
        """The plan's neurons with work left."""
        for neuron in todo:
            self._queue.put_nowait(neuron)

    async def next(self) -> NeuronId | None:
        """The next neuron, or None when there is none left."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def finished(self, neuron: NeuronId) -> None:
        """The neuron's writes are queued."""

    def close(self) -> None:
        """Nothing to release."""


class SharedUnits:
    """Leased neurons of a plan shared by every worker on the same PostgreSQL database and selection."""

    def __init__(self, database: Database, board: ClaimBoard, on_takeover: TakeoverHook) -> None:
        self._database = database
        self._board = board
        self._on_takeover = on_takeover
        self._todo: set[NeuronId] = set()

    def offer(self, todo: Sequence[NeuronId]) -> None:
        """Add the plan's neurons with work left to the shared board (made before planning, so that neurons other
        workers finish while this one plans are not reopened) and start holding leases."""
        self._todo = set(todo)
        self._board.offer(todo)
        self._database.set_write_guard(self._board.guard)
        self._board.start_renewing()

    async def next(self) -> NeuronId | None:
        """Claim the next open neuron (taking over expired leases); while other workers hold the last open ones,
        wait (their leases may expire); None once every neuron of the plan is done."""
        while True:
            taken = await asyncio.to_thread(self._board.claim, 1)
            if taken and taken[0][0] not in self._todo:
                # Complete when this worker planned (a dead worker stored it all but did not mark it done): close it
                # without spending one of this worker's units on it.
                self.finished(taken[0][0])
                continue
            if taken:
                break
            if await asyncio.to_thread(self._board.remaining) == 0:
                return None
            await asyncio.sleep(min(self._board.lease_s / 4, 1.0))
        neuron, takeover = taken[0]
        if takeover:
            await asyncio.to_thread(self._on_takeover, neuron)
        return neuron

    def finished(self, neuron: NeuronId) -> None:
        """Mark the neuron done in the same order as its writes (after them, only if this worker still holds it)."""
        board = self._board
        self._database.call_in_writer(lambda connection: board.finish(connection, neuron))

    def close(self) -> None:
        """Commit, stop renewing, release unfinished leases, drop the write guard."""
        try:
            self._database.flush()
        finally:
            self._board.close()
            self._database.set_write_guard(None)
            if self._board.lost:
                logger.warning("%d late write(s) of this worker were dropped: other workers had taken over "
                               "those neurons after their leases expired", self._board.lost)


def shares_work(database: Database) -> bool:
    """Whether runs on this database split their night between workers (PostgreSQL) or run alone (SQLite)."""
    return supports_claims(database.url)


def make_units(database: Database, *, unit_keys: Sequence[tuple[str, str]], selection: str, mode: str,
               run_id: int | None, lease_s: float, on_takeover: TakeoverHook) -> LocalUnits | SharedUnits:
    """The unit source of a run (call before planning, then `offer` the plan): shared leases on PostgreSQL, a
    local queue elsewhere."""
    if not shares_work(database):
        return LocalUnits()
    board = ClaimBoard(database.url, plan=plan_key(unit_keys, selection=selection, mode=mode),
                       owner=uuid.uuid4().hex, run_id=run_id, lease_s=lease_s)
    return SharedUnits(database, board, on_takeover)
