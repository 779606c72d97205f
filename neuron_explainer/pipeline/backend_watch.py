"""Gives up on a night whose backend keeps failing: N units in a row lost to transient errors stop the run, so
cron reports a dead endpoint instead of a night of stored failures."""

from __future__ import annotations

from neuron_explainer.core.failures import Failure, FailureKind


class BackendDown(Exception):
    """Raised by `BackendWatch.check` when too many units in a row failed for the backend's sake; `str()` is the
    one-line reason."""


class BackendWatch:
    """Counts units that ended in a transient failure since the last unit that worked (or failed on its merits)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """Consecutive transient failures that stop the run; 0 never stops it."""
        self.consecutive = 0
        """Units in a row that failed transiently."""
        self.last_reason = ""
        """The latest transient failure's reason."""

    def unit_failed(self, failure: Failure) -> None:
        """Count a transient failure; a permanent one proves the backend answered."""
        if failure.kind is FailureKind.TRANSIENT:
            self.consecutive += 1
            self.last_reason = failure.reason
        else:
            self.consecutive = 0

    def unit_succeeded(self) -> None:
        """A result was stored: the backend works."""
        self.consecutive = 0

    def check(self) -> None:
        """Raise BackendDown once the limit is reached."""
        if self.limit and self.consecutive >= self.limit:
            raise BackendDown(f"backend failing: {self.consecutive} units in a row failed; last: {self.last_reason}")
