"""Running many units of work concurrently with a progress bar, handing each result to a callback as it finishes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

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


async def run_units(units: Sequence[Callable[[], Awaitable[ResultT]]], *, concurrency: int,
                    on_result: Callable[[ResultT], None], description: str, progress: bool = True) -> BatchSummary:
    """Await every unit with at most `concurrency` in flight, calling `on_result` as each finishes (in the
    event loop thread, so the callback may write a file without locking); returns the counts (a Failure is a
    failed unit, anything else a success whose `prompt_tokens` / `completion_tokens` are added up)."""
    from tqdm import tqdm

    semaphore = asyncio.Semaphore(max(1, concurrency))
    counts = {"succeeded": 0, "failed": 0, "prompt_tokens": 0, "completion_tokens": 0}

    async def guarded(unit: Callable[[], Awaitable[ResultT]]) -> ResultT:
        async with semaphore:
            return await unit()

    with tqdm(total=len(units), desc=description, unit="neuron", disable=not progress) as bar:
        for finished in asyncio.as_completed([guarded(unit) for unit in units]):
            result = await finished
            if isinstance(result, Failure):
                counts["failed"] += 1
            else:
                counts["succeeded"] += 1
                counts["prompt_tokens"] += getattr(result, "prompt_tokens", 0)
                counts["completion_tokens"] += getattr(result, "completion_tokens", 0)
            on_result(result)
            bar.update(1)
    return BatchSummary(**counts)
