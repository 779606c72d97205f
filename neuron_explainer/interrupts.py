"""Ctrl-C for long commands: the first press stops the work cleanly (units in flight are cancelled, finished ones
kept); a second press exits at once, saying what that loses."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

EXIT_INTERRUPTED = 130
"""The shell's code for a process ended by SIGINT."""


@contextlib.contextmanager
def second_interrupt_exits(message: str) -> Iterator[None]:
    """While inside: the first SIGINT raises KeyboardInterrupt as usual; a second one writes `message` (one line)
    to stderr and ends the process at once (os._exit), not waiting for worker threads or queued writes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            os.write(2, f"neuron-explainer: {message}\n".encode())
            os._exit(EXIT_INTERRUPTED)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
