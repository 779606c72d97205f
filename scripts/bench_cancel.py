"""How long a cancelled `local:` generation keeps its worker thread busy after Ctrl-C (the task is cancelled), beside
the time of the whole batch: the gap is what a user waits for when a night is interrupted.

    .venv/bin/python scripts/bench_cancel.py --model DIR_OR_HF_ID [--tokens 240] [--batch 8] [--after 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from neuron_explainer.llm.local_backend import LocalBackend


async def _whole(backend: LocalBackend, prompts: list[str], tokens: int) -> float:
    started = time.monotonic()
    await backend.generate_many(prompts, max_tokens=tokens)
    return time.monotonic() - started


async def _cancelled(backend: LocalBackend, prompts: list[str], tokens: int, after: float) -> float:
    task = asyncio.ensure_future(backend.generate_many(prompts, max_tokens=tokens))
    await asyncio.sleep(after)
    task.cancel()
    pressed = time.monotonic()
    try:
        await task
    except asyncio.CancelledError:
        pass
    while backend._lock.locked():  # the worker thread is still generating
        await asyncio.sleep(0.005)
    return time.monotonic() - pressed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=240)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--after", type=float, default=0.3, help="seconds before the cancel")
    args = parser.parse_args()
    backend = LocalBackend(args.model, batch_size=args.batch)
    prompts = [f"word {index} " * 3 for index in range(args.batch)]
    whole = asyncio.run(_whole(backend, prompts, args.tokens))
    busy = asyncio.run(_cancelled(backend, prompts, args.tokens, args.after))
    print(f"load average {os.getloadavg()[0]:.1f}: whole batch {whole:.2f} s; worker busy after cancel {busy:.3f} s")


if __name__ == "__main__":
    main()
