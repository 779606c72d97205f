"""The recorder's fused CPU kernel (fold.c): built on first use with the system C compiler, None without one.

The torch operations of the bookkeeping read a layer's activations about nine times per batch (max, min, sum, square,
sum, compare, sum, and strided gathers for the top-k rows); fold.c reads them once for the statistics and copies
only the rows that enter a top-k list. The shared library is cached under the user's cache directory by a hash of
the source, compiler and flags, so it is built once per machine (well under a second). Set
NEURON_EXPLAINER_NATIVE=0 to use the torch operations instead (they give the same top-k lists and activations).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.core.paths import cache_dir

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fold.c")
FLAGS = ("-O3", "-shared", "-fPIC", "-std=gnu11")
DISABLE_VARIABLE = "NEURON_EXPLAINER_NATIVE"

_INT = ctypes.c_int
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p


def _compiler() -> str | None:
    configured = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "").split(" ")[0]
    for candidate in (configured, "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@functools.cache
def fold_library() -> Any | None:
    """The loaded kernel library, or None (disabled, no compiler, or the build failed; the reason is logged)."""
    if os.environ.get(DISABLE_VARIABLE, "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        logger.info("no C compiler found: the recorder's bookkeeping uses torch operations")
        return None
    try:
        library = ctypes.CDLL(str(_built(compiler)))
    except (OSError, subprocess.SubprocessError) as error:
        logger.info("could not build the recorder's kernel (%s): using torch operations", error)
        return None
    library.fold_batch.restype = None
    library.fold_batch.argtypes = [_PTR, _INT, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64,
                                   _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
    library.copy_samples.restype = None
    library.copy_samples.argtypes = [_PTR, _INT, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _PTR]
    return library


def _built(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS).encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        directory = Path(tempfile.gettempdir())
    target = directory / f"fold-{key}.so"
    if target.is_file():
        return target
    # Build beside the target and rename, so concurrent recorders never load a half-written library.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(handle)
    try:
        subprocess.run([compiler, *FLAGS, "-o", partial, str(SOURCE), "-lm"], check=True, capture_output=True,
                       timeout=300)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def supports(activations: Any) -> bool:
    """True when the kernel can read `activations` [batch, positions, neurons] in place."""
    import torch

    return (activations.device.type == "cpu" and activations.dtype in (torch.float32, torch.bfloat16)
            and activations.dim() == 3 and activations.stride(2) == 1 and fold_library() is not None)


@dataclass(frozen=True)
class TopLists:
    """One side's top-k state (see accumulate.TopK), contiguous CPU tensors the kernel updates in place."""

    scores: Any
    """float32 [neurons, k], descending per neuron."""
    window_ids: Any
    """int64 [neurons, k]."""
    slots: Any
    """int64 [neurons, k]: rank -> row slot."""
    rows: Any
    """float32 [neurons, k, positions]."""


@dataclass(frozen=True)
class Totals:
    """A layer's running per-neuron statistics, contiguous CPU tensors the kernel updates in place."""

    total: Any
    """float64 [neurons]: sum of activations."""
    total_squares: Any
    """float64 [neurons]: sum of squared activations."""
    positives: Any
    """float64 [neurons]: count of positive activations."""
    minimum: Any
    """float32 [neurons]."""
    maximum: Any
    """float32 [neurons]."""


def fold_batch(activations: Any, totals: Totals, top: TopLists, bottom: TopLists | None, *, first_window_id: int,
               parts: int = 1) -> None:
    """Fold one batch of one layer (activations [batch, positions, neurons]) into its totals and top-k lists.

    Neurons are independent, so `parts` > 1 splits them into ranges folded on that many threads at once (ctypes
    releases the GIL). They wait on each other only at the end, never spinning, so a busy machine costs no more
    CPU than one thread would.
    """
    batch, positions, neurons = activations.shape
    step = -(-neurons // max(1, parts) // 16) * 16  # ranges of whole 64-byte vectors
    ranges = [(start, min(start + step, neurons)) for start in range(0, neurons, step)]
    calls = [functools.partial(_fold_range, activations, totals, top, bottom, first_window_id, start, stop)
             for start, stop in ranges]
    if len(calls) == 1:
        calls[0]()
        return
    futures = [_pool(len(calls) - 1).submit(call) for call in calls[1:]]
    calls[0]()
    for future in futures:
        future.result()


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="record-fold")


def _fold_range(activations: Any, totals: Totals, top: TopLists, bottom: TopLists | None, first_window_id: int,
                start: int, stop: int) -> None:
    import torch

    batch, positions, _ = activations.shape
    k = top.scores.shape[1]

    def at(tensor: Any, per_neuron: int = 1) -> int:
        return tensor.data_ptr() + start * per_neuron * tensor.element_size()

    lists = [at(top.scores, k), at(top.window_ids, k), at(top.slots, k), at(top.rows, k * positions)]
    lists += [None] * 4 if bottom is None else [at(bottom.scores, k), at(bottom.window_ids, k), at(bottom.slots, k),
                                                 at(bottom.rows, k * positions)]
    fold_library().fold_batch(
        at(activations), int(activations.dtype == torch.bfloat16), batch, positions, stop - start,
        activations.stride(0), activations.stride(1), at(totals.total), at(totals.total_squares),
        at(totals.positives), at(totals.minimum), at(totals.maximum), k, first_window_id, *lists)


def copy_samples(activations: Any, *, window_offsets: np.ndarray, window_slots: np.ndarray, random: Any,
                 token_offsets: np.ndarray, token_slots: np.ndarray, token_sample: Any) -> None:
    """Copy a batch's picks into the random-window sample [slots, positions, neurons] and the token sample [slots,
    neurons] (see accumulate.BatchPicks), converting to float32 on the way."""
    import torch

    arrays = [np.ascontiguousarray(array, dtype=np.int64)
              for array in (window_offsets, window_slots, token_offsets, token_slots)]
    pointers = [array.ctypes.data for array in arrays]
    _, positions, neurons = activations.shape
    fold_library().copy_samples(
        activations.data_ptr(), int(activations.dtype == torch.bfloat16), positions, neurons, activations.stride(0),
        activations.stride(1), pointers[0], pointers[1], len(arrays[0]), random.data_ptr(), pointers[2], pointers[3],
        len(arrays[2]), token_sample.data_ptr())
