"""Running many units of work concurrently with a progress bar, handing each result to a callback as it finishes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from neuron_explainer.core.failures import Failure

ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class BatchSummary:
    """Counts of a batch run."""

    succeeded: int
    """Units that produced a result."""
    failed: int
    """Units that produced a Failure."""
    prompt_tokens: int
    """Prompt tokens spent."""
    completion_tokens: int
    """Completion tokens spent."""
    stop_reason: str | None = None
    """Why units were left unstarted (a budget was reached), or None when every unit ran."""


StopCheck = Callable[[], "str | None"]
"""Asked before each unit starts: a reason to start no more units (e.g. a budget reached), or None to go on."""

_SKIPPED = object()


async def run_units(units: Sequence[Callable[[], Awaitable[ResultT]]], *, concurrency: int,
                    on_result: Callable[[ResultT], None], description: str, progress: bool = True,
                    stop: StopCheck | None = None) -> BatchSummary:
    """The one unit-of-work runner: await every unit with at most `concurrency` in flight, calling `on_result` as
    each finishes (in the event loop thread, so the callback may write a file without locking); returns the counts
    (a Failure is a failed unit, anything else a success whose `prompt_tokens` / `completion_tokens` are added up).

    With `stop`, no unit starts once it has given a reason (units in flight finish). An exception from a unit or
    from `on_result` cancels the units still in flight and propagates."""
    from tqdm import tqdm

    semaphore = asyncio.Semaphore(max(1, concurrency))
    counts = {"succeeded": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}
    stop_reason: str | None = None

    async def guarded(unit: Callable[[], Awaitable[ResultT]]) -> Any:
        nonlocal stop_reason
        async with semaphore:
            if stop_reason is None and stop is not None:
                stop_reason = stop()
            if stop_reason is not None:
                return _SKIPPED
            return await unit()

    tasks = [asyncio.ensure_future(guarded(unit)) for unit in units]
    try:
        with tqdm(total=len(units), desc=description, unit="neuron", disable=not progress) as bar:
            for finished in asyncio.as_completed(tasks):
                result = await finished
                if result is _SKIPPED:
                    continue
                if isinstance(result, Failure):
                    counts["failed"] += 1
                else:
                    counts["succeeded"] += 1
                    counts["prompt_tokens"] += getattr(result, "prompt_tokens", 0)
                    counts["completion_tokens"] += getattr(result, "completion_tokens", 0)
                on_result(result)
                bar.update(1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return BatchSummary(**counts, stop_reason=stop_reason)
