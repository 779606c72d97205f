"""Progress for logs: when stderr is a file (cron, nohup), one plain line per N units or per minute instead of
carriage-return bars, and third-party bars (tqdm, transformers, huggingface_hub) switched off."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

HEARTBEAT_S = 60.0
"""Longest silence between two progress lines."""


def quiet_progress_bars() -> None:
    """Turn off every tqdm-style bar of this process and the libraries it loads (call before they are imported):
    in a log file each redraw is another `\\r`-separated copy of the bar."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"


@dataclass(frozen=True)
class Snapshot:
    """Where a long job stands."""

    done: int
    """Units finished."""
    total: int
    """Units to do."""
    failed: int = 0
    """Units that ended in a failure."""
    cost_usd: float = 0.0
    """Estimated spend so far."""
    activity: str = ""
    """What a long step is doing now (e.g. SASC's phase), empty when nothing is worth saying."""


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class LineProgress:
    """Writes `what: done/total (pct), rate, ETA, spend` every `every` units and at least once a `heartbeat_s`
    (a background thread covers phases with no finished units: recording, loading a model, a slow first unit).
    Use as a context manager; `update` takes the latest snapshot."""

    def __init__(self, stream: TextIO, *, what: str = "neurons", every: int | None = None,
                 heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._what = what
        self._every = every
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._last_done = 0
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)

    def __enter__(self) -> LineProgress:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    def update(self, snapshot: Snapshot) -> None:
        """Record the latest state; print a line when another `every` units are done (or the last one)."""
        with self._lock:
            self._snapshot = snapshot
            every = self._every or max(1, snapshot.total // 10)
            if snapshot.done >= snapshot.total or snapshot.done - self._last_done >= every:
                self._write()

    def line(self) -> str:
        """The progress line for the latest snapshot."""
        elapsed = self._clock() - self._started
        snapshot = self._snapshot
        if snapshot is None:
            return f"{self._what}: preparing (recording or loading models), {_duration(elapsed)} elapsed"
        percent = 100.0 * snapshot.done / snapshot.total if snapshot.total else 100.0
        parts = [f"{self._what}: {snapshot.done}/{snapshot.total} ({percent:.0f}%)"]
        if snapshot.done and elapsed > 0:
            rate = snapshot.done / elapsed
            parts.append(f"{rate * 60:.1f}/min")
            parts.append(f"ETA {_duration((snapshot.total - snapshot.done) / rate)}")
        else:
            parts.append("rate -")
        parts.append(f"{snapshot.failed} failed")
        parts.append(f"${snapshot.cost_usd:.4f}")
        parts.append(f"{_duration(elapsed)} elapsed")
        if snapshot.activity:
            parts.append(snapshot.activity)
        return ", ".join(parts)

    def _write(self) -> None:
        self._stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.line()}\n")
        self._stream.flush()
        self._last_line = self._clock()
        if self._snapshot is not None:
            self._last_done = self._snapshot.done

    def _beat(self) -> None:
        while not self._stop.wait(min(5.0, self._heartbeat_s)):
            with self._lock:
                if self._clock() - self._last_line >= self._heartbeat_s:
                    self._write()


@contextlib.contextmanager
def progress_reporter(stream: TextIO, *, what: str = "neurons") -> Iterator[Callable[[Snapshot], None]]:
    """A callback taking Snapshots: a tqdm bar on a terminal, `LineProgress` lines otherwise."""
    if not stream.isatty():
        with LineProgress(stream, what=what) as lines:
            yield lines.update
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit=what.rstrip("s"), desc=what, file=stream, dynamic_ncols=True)

    def show(snapshot: Snapshot) -> None:
        bar.total = snapshot.total
        bar.set_postfix(failed=snapshot.failed, cost=f"${snapshot.cost_usd:.4f}", refresh=False)
        bar.set_description_str(snapshot.activity or what, refresh=False)
        bar.update(snapshot.done - bar.n)
        bar.refresh()

    try:
        yield show
    finally:
        bar.close()
