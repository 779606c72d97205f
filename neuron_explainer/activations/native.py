"""The recorder's fused CPU kernel (fold.c): built on first use with the system C compiler, None without one.

The torch operations of the bookkeeping read a layer's activations about nine times per batch (max, min, sum, square,
sum, compare, sum, and strided gathers for the top-k rows); fold.c reads them once for the statistics and copies
only the rows that enter a top-k list. The shared library is cached under the user's cache directory by a hash of
the source, compiler and flags, so it is built once per machine (well under a second). It is built with OpenMP
where the compiler has it, so its threads are torch's own (see record_layer in fold.c); otherwise it runs on one
thread. Set NEURON_EXPLAINER_NATIVE=0 to use the torch operations instead (they give the same top-k lists and
activations).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.core.paths import cache_dir

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fold.c")
FLAGS = ("-O3", "-shared", "-fPIC", "-std=gnu11")
OPENMP = "-fopenmp"
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
    # torch loads its OpenMP runtime first, so the kernel's OpenMP symbols bind to it (one thread team, not two).
    import torch  # noqa: F401

    compiler = _compiler()
    if compiler is None:
        logger.info("no C compiler found: the recorder's bookkeeping uses torch operations")
        return None
    try:
        library = ctypes.CDLL(str(_built(compiler)))
    except (OSError, subprocess.SubprocessError) as error:
        logger.info("could not build the recorder's kernel (%s): using torch operations", error)
        return None
    library.record_layer.restype = None
    library.record_layer.argtypes = [_PTR, _INT] + [_I64] * 5 + [_PTR] * 5 + [_I64] * 2 + [_PTR] * 8 + [_PTR, _PTR, _I64, _PTR] * 2 + [_I64]
    return library


def _built(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join((*FLAGS, OPENMP)).encode(),
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
        try:
            subprocess.run([compiler, *FLAGS, OPENMP, "-o", partial, str(SOURCE), "-lm"], check=True,
                           capture_output=True, timeout=300)
        except subprocess.CalledProcessError:
            logger.info("the C compiler has no OpenMP: the recorder's kernel runs on one thread")
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


@dataclass(frozen=True)
class Samples:
    """A batch's picks (see accumulate.BatchPicks) and the shared samples they go into, updated in place."""

    window_offsets: np.ndarray
    """Batch offsets of the windows entering the random sample."""
    window_slots: np.ndarray
    """Their slots."""
    random: Any
    """float32 [slots, positions, neurons], contiguous."""
    token_offsets: np.ndarray
    """Flat offsets (window * positions + position) of the tokens entering the token sample."""
    token_slots: np.ndarray
    """Their slots."""
    token_sample: Any
    """float32 [slots, neurons], contiguous."""


def record_layer(activations: Any, totals: Totals, top: TopLists, bottom: TopLists | None, samples: Samples, *,
                 first_window_id: int, parts: int = 1) -> None:
    """Fold one batch of one layer (activations [batch, positions, neurons]) into its totals and top-k lists, and
    copy its picks into the samples (converting to float32 on the way), in one call.

    Neurons are independent, so `parts` > 1 splits them into that many ranges done at once on torch's OpenMP
    threads (the GIL is released meanwhile).
    """
    import torch

    batch, positions, neurons = activations.shape
    indices = [np.ascontiguousarray(array, dtype=np.int64) for array in
               (samples.window_offsets, samples.window_slots, samples.token_offsets, samples.token_slots)]
    sides = [top] if bottom is None else [top, bottom]
    lists = [pointer for side in sides for pointer in (side.scores.data_ptr(), side.window_ids.data_ptr(),
                                                        side.slots.data_ptr(), side.rows.data_ptr())]
    lists += [None] * (8 - len(lists))
    fold_library().record_layer(
        activations.data_ptr(), int(activations.dtype == torch.bfloat16), batch, positions, neurons,
        activations.stride(0), activations.stride(1), totals.total.data_ptr(), totals.total_squares.data_ptr(),
        totals.positives.data_ptr(), totals.minimum.data_ptr(), totals.maximum.data_ptr(), top.scores.shape[1],
        first_window_id, *lists, indices[0].ctypes.data, indices[1].ctypes.data, len(indices[0]),
        samples.random.data_ptr(), indices[2].ctypes.data, indices[3].ctypes.data, len(indices[2]),
        samples.token_sample.data_ptr(), max(1, parts))
