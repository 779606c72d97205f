"""Limits a recording request must meet before anything is allocated: the window fits the model's positions, the
corpus yields at least one window, and the per-neuron buffers fit in this machine's memory."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from neuron_explainer.core.errors import UserError

T = TypeVar("T")

def check_window_fits(window_length: int, special_tokens: int, positions: int | None, model_id: str) -> None:
    """UserError naming --ctx when a window and its special tokens exceed the model's `positions`."""
    if positions is not None and window_length + special_tokens > positions:
        taken = f", {special_tokens} of them for special tokens: use --ctx {positions - special_tokens} or less" \
            if special_tokens else ""
        raise UserError(f"--ctx {window_length} does not fit {model_id}: it has {positions} positions{taken}")


def physical_memory_bytes() -> int | None:
    """RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_buffers_fit(*, layers: int, neurons_per_layer: int, window_length: int, top_k: int, random_k: int,
                      both: bool) -> None:
    """UserError naming the flags when the top-k and random-window buffers (float32) exceed this machine's RAM."""
    neurons = layers * neurons_per_layer
    kept = top_k * (2 if both else 1) + random_k
    needed = neurons * kept * window_length * 4
    available = physical_memory_bytes()
    if available is not None and needed > available:
        raise UserError(
            f"--ctx {window_length} x --top-k {top_k} (+ --random {random_k}) windows for {neurons} neurons need "
            f"{needed / 2**30:.1f} GiB of buffers, more than this machine's {available / 2**30:.1f} GiB; "
            "record fewer layers or use a smaller --ctx or --top-k")


def first_batch_or_error(batches: Iterable[T], *, corpus: str, window_length: int) -> Iterator[T]:
    """`batches` with its first batch read ahead: UserError naming --ctx when the corpus yields no window at all,
    before any per-neuron buffer exists."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise UserError(f"corpus {corpus!r} yields no window of {window_length} tokens: its documents are all "
                        "shorter; use a smaller --ctx or --pack")
    return itertools.chain([first], iterator)
