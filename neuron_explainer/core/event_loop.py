"""`run_async`: asyncio.run for our commands, except that Ctrl-C does not wait for work already in threads.

asyncio.run joins the default executor's threads when it closes, so a Ctrl-C during a model forward pass, a slot
scoring chunk or an n-gram sweep (all run through asyncio.to_thread) waited for that work to end: a minute or more
on a loaded CPU. Those threads only compute; what they would return is dropped with the cancelled task, and
everything finished is committed by the callers' own cleanup, so nothing is lost by not waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

WORKER_PREFIX = "neuron-explainer-work"
"""Name prefix of the threads that run a command's blocking work (shown by py-spy and faulthandler dumps)."""


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop; on an exception (KeyboardInterrupt included) cancel every task
    and return without joining worker threads still busy."""
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix=WORKER_PREFIX)
    loop.set_default_executor(executor)
    interrupted = True
    try:
        result = loop.run_until_complete(main)
        interrupted = False
        return result
    finally:
        try:
            _cancel_remaining(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor.shutdown(wait=not interrupted, cancel_futures=True)
            loop.close()


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

