"""Running many coroutines together so that a failure surfaces as itself and nothing is left running."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def run_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Results in order; on the first failure the others are cancelled and that failure is raised unwrapped.

    asyncio.TaskGroup guarantees no orphaned tasks (also on cancellation); unwrapping its ExceptionGroup keeps
    one-line errors (LLMError, UserError) what callers and the CLI expect.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(awaitable)) for awaitable in awaitables]
    except BaseExceptionGroup as failures:
        raise _first_leaf(failures) from None
    return [task.result() for task in tasks]


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
