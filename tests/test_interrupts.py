"""Ctrl-C: a cancelled local generation stops within a token instead of finishing its batch, and a second SIGINT
ends a command at once with one line saying what that loses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from neuron_explainer.llm.local_backend import LocalBackend


def test_a_cancelled_local_generation_stops_after_one_token(tiny_llama: Path) -> None:
    backend = LocalBackend(str(tiny_llama), batch_size=4)
    prompts = [f"word {index} " * 3 for index in range(4)]
    whole = backend._generate_batch(prompts, 1, 0.0, 40, [], None, 0, threading.Event())
    cancelled = threading.Event()
    cancelled.set()
    stopped = backend._generate_batch(prompts, 1, 0.0, 40, [], None, 0, cancelled)
    # Uncancelled, the random-init model runs on to max_tokens (unless it happens to say EOS); cancelled, every row
    # stops at the first check.
    assert max(result.usage.completion_tokens for result in whole) == 40
    assert [result.usage.completion_tokens for result in stopped] == [1] * 4


def test_a_second_interrupt_exits_at_once_with_one_line() -> None:
    script = textwrap.dedent("""
        import os, signal, time
        from neuron_explainer.interrupts import second_interrupt_exits
        with second_interrupt_exits("interrupted twice: stopped at once"):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            except KeyboardInterrupt:
                print("first interrupt: cleaning up", flush=True)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
                print("never printed", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130
    assert done.stdout == "first interrupt: cleaning up\n"
    assert done.stderr == "neuron-explainer: interrupted twice: stopped at once\n"


def test_an_interrupt_does_not_wait_for_work_running_in_a_thread() -> None:
    """A night's blocking work (a forward pass, a slot-scoring chunk) runs in threads; Ctrl-C must not join them."""
    script = textwrap.dedent("""
        import asyncio, os, signal, threading, time
        from neuron_explainer.core.event_loop import run_async
        started, finished = threading.Event(), threading.Event()

        def forward_pass():
            started.set()
            time.sleep(60)
            finished.set()

        async def night():
            work = asyncio.ensure_future(asyncio.to_thread(forward_pass))
            await asyncio.to_thread(started.wait)
            os.kill(os.getpid(), signal.SIGINT)
            await work

        try:
            run_async(night())
        except KeyboardInterrupt:
            print("interrupted; work still running:", started.is_set() and not finished.is_set(), flush=True)
            os._exit(130)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert done.returncode == 130, done.stderr
    assert done.stdout == "interrupted; work still running: True\n"
