"""The record store: one directory per recording, a JSON manifest and memory-mapped .npy arrays.

Layout (documented in docs/record-format.md):

    manifest.json                       what was recorded, how, from what; `complete: true` once finalised
    tokens.npy                          int32 [windows, length]: text token ids of every recorded window
    vocab.json                          display string of every token id
    random_windows.npy                  int64 [random_k]: the shared random sample, ascending window ids
    documents.npy                       int64 [windows, 2]: document id and position in it of every window
    near_duplicates.npy                 int64 [windows]: near-duplicate component of every window (groups.py)
    layer_003/top_windows.npy           int64 [neurons, k]: window ids by descending max activation
    layer_003/top_activations.npy       float16|float32 [neurons, k, length]
    layer_003/random_activations.npy    float16|float32 [neurons, random_k, length]
    layer_003/stats.npy                 float64 [neurons, 6]: count, mean, std, min, max, fraction_positive
    layer_003/quantiles.npy             float32 [neurons, len(quantile_probabilities)]
    layer_003/bottom_windows.npy        (polarity both) int64 [neurons, k]: ascending min activation
    layer_003/bottom_activations.npy    (polarity both) float16|float32 [neurons, k, length]

Writers fill a staging directory next to the target (`.NAME.partial-PID-XXXX`) and finalise with os.replace,
so a store at the target path is always complete; a killed writer leaves only a staging directory, which the
next writer for that target removes. Stores written before documents.npy existed still open: their windows are
grouped by adjacent ids (and near-duplicate text) instead of by document, and opening one says so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer import __version__
from neuron_explainer.activations.accumulate import QUANTILE_PROBABILITIES, STATS_COLUMNS, LayerSummary
from neuron_explainer.activations.groups import near_duplicate_labels, neuron_groups
from neuron_explainer.activations.records import NeuronRecord, NeuronStats, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.processes import process_alive

logger = logging.getLogger(__name__)

FORMAT_NAME = "neuron-explainer-records"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENS_FILE = "tokens.npy"
VOCAB_FILE = "vocab.json"
RANDOM_WINDOWS_FILE = "random_windows.npy"
DOCUMENTS_FILE = "documents.npy"
NEAR_DUPLICATES_FILE = "near_duplicates.npy"
_RAW_TOKENS_FILE = "tokens.partial.bin"
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# Fields that describe a run rather than what was recorded; they do not enter the recording id.
_RUN_ONLY_FIELDS = frozenset({"created_at", "complete", "elapsed_seconds", "device", "tool_version", "recording_id",
                              "activation_dtypes"})
# Config fields that do not change the content, or whose resolved values are identity fields of their own
# (`layers` -> Manifest.layers, `dtype` -> Manifest.compute_dtype).
RUN_ONLY_CONFIG_FIELDS = frozenset({"device", "batch_size", "dtype", "layers"})


@dataclass(frozen=True)
class Manifest:
    """Everything needed to know what a store holds and whether it answers a given recording request."""

    model_id: str
    """The subject model's name (`default`, an HF id, a path), or e.g. `synthetic` for planted neurons."""
    model_fingerprint: str
    """Revision or content hash of the weights."""
    hook_point: str
    """Module path template whose input is the MLP neurons."""
    corpus_spec: str
    """The corpus spec as given."""
    corpus_hash: str
    """Content hash of the corpus."""
    window_length: int
    """Text tokens per window."""
    num_windows: int
    """Windows recorded (rows of tokens.npy)."""
    seed: int
    """Seed of the random-window and quantile samples."""
    layers: tuple[int, ...]
    """Recorded layers, ascending."""
    neurons_per_layer: int
    """Neurons in each recorded layer."""
    top_k: int
    """Top (and bottom) windows kept per neuron (fewer when there were fewer windows)."""
    random_k: int
    """Size of the shared random window sample requested."""
    polarity: str
    """`positive` (top windows) or `both` (top and bottom windows)."""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    """Tokenizer name, class, vocab size and the special-token ids wrapped around windows."""
    quantile_probabilities: tuple[float, ...] = QUANTILE_PROBABILITIES
    """Probabilities of the columns of quantiles.npy."""
    stats_columns: tuple[str, ...] = STATS_COLUMNS
    """Names of the columns of stats.npy."""
    config: dict[str, Any] = field(default_factory=dict)
    """The recording request as given (RecordConfig fields); empty for stores written from given activations."""
    num_model_layers: int = 0
    """Layers the model has (resolves layer specs such as `all`)."""
    compute_dtype: str = ""
    """Torch dtype the model ran in."""
    device: str = ""
    """Device the model ran on."""
    activation_dtypes: dict[str, str] = field(default_factory=dict)
    """Stored activation dtype per layer (float16 unless a value overflows it)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form JSON for writers other than the recorder (e.g. planted-neuron definitions)."""
    created_at: str = ""
    """ISO-8601 UTC time the store was finalised."""
    elapsed_seconds: float = 0.0
    """Wall time of the streaming pass and writing the store (not model loading)."""
    tool_version: str = __version__
    """neuron-explainer version that wrote the store."""
    recording_id: str = ""
    """Hash of every field that defines the content (not run details such as device or time)."""
    complete: bool = False
    """True only in a finalised store."""
    format: str = FORMAT_NAME
    """Marks the directory as a neuron-explainer record store."""
    format_version: int = FORMAT_VERSION
    """Layout version; readers refuse newer versions."""

    def identity(self) -> dict[str, Any]:
        """The fields that define what was recorded (the input of recording_id)."""
        values = {key: value for key, value in asdict(self).items() if key not in _RUN_ONLY_FIELDS}
        values["config"] = {key: value for key, value in self.config.items() if key not in RUN_ONLY_CONFIG_FIELDS}
        return values

    def with_recording_id(self) -> "Manifest":
        """A copy with recording_id computed from identity()."""
        canonical = json.dumps(self.identity(), sort_keys=True, default=str)
        return replace(self, recording_id=hashlib.sha256(canonical.encode()).hexdigest()[:16])

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(asdict(self), indent=2, default=str) + "\n"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Manifest":
        """Parse a manifest dict (unknown keys from newer minor writers are ignored)."""
        known = {item.name for item in fields(cls)}
        kwargs = {key: value for key, value in values.items() if key in known}
        for key in ("layers", "quantile_probabilities", "stats_columns"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def layer_directory(layer: int) -> str:
    """Name of a layer's subdirectory."""
    return f"layer_{layer:03d}"


class StoreWriter:
    """Builds a store in a staging directory next to `target` and moves it into place atomically on finish.

    Use as a context manager: leaving the block with an exception removes the staging directory.
    """

    def __init__(self, target: Path | str) -> None:
        self.target = Path(target)
        if self.target.exists() and not self.target.is_dir():
            raise UserError(f"--out {self.target} exists and is not a directory")
        if self.target.is_dir() and any(self.target.iterdir()) and not (self.target / MANIFEST_FILE).is_file():
            raise UserError(f"refusing to write into {self.target}: it is a non-empty directory that is not a "
                            "record store")
        name = f".{self.target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        self.staging = self.target.parent / name
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.target)
            self.staging.mkdir()
            self._raw_tokens = open(self.staging / _RAW_TOKENS_FILE, "wb")
        except OSError as exc:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise UserError(f"cannot write the record store {self.target}: {exc.strerror or exc}") from None
        self.window_length: int | None = None
        self.num_windows = 0
        self._documents: list[np.ndarray] | None = None
        self.activation_dtypes: dict[str, str] = {}

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is not None:
            self.abort()

    def write_pending_manifest(self, manifest: Manifest) -> None:
        """Describe the recording in progress inside the staging directory (never loadable: complete is false)."""
        _write_text(self.staging / MANIFEST_FILE, replace(manifest, complete=False).to_json())

    def append_windows(self, token_ids: np.ndarray, documents: np.ndarray | None = None) -> None:
        """Append windows of text token ids [batch, length], with their (document id, position) rows [batch, 2]
        when known (give them for every batch or for none)."""
        token_ids = np.ascontiguousarray(token_ids, dtype=np.int32)
        if token_ids.ndim != 2:
            raise ValueError(f"expected token ids [batch, length], got shape {token_ids.shape}")
        if (documents is None) != (self._documents is None) and self.num_windows:
            raise ValueError("document ids must be given with every batch of windows or with none")
        if documents is not None:
            documents = np.asarray(documents, dtype=np.int64).reshape(len(token_ids), 2)
            self._documents = [*(self._documents or []), documents]
        if self.window_length is None:
            self.window_length = token_ids.shape[1]
        elif token_ids.shape[1] != self.window_length:
            raise ValueError(f"window length changed from {self.window_length} to {token_ids.shape[1]}")
        self._raw_tokens.write(token_ids.tobytes())
        self.num_windows += token_ids.shape[0]

    def write_layer(self, layer: int, summary: LayerSummary, *, activation_dtype: str = "float16") -> None:
        """Save one layer's arrays; float16 activations fall back to float32 when a value would overflow."""
        directory = self.staging / layer_directory(layer)
        directory.mkdir()
        activation_arrays = {"top_activations": summary.top_activations,
                             "random_activations": summary.random_activations}
        if summary.bottom_activations is not None:
            activation_arrays["bottom_activations"] = summary.bottom_activations
        dtype = np.dtype(activation_dtype)
        if dtype == np.float16 and any(array.size and float(np.abs(array).max()) > _FLOAT16_MAX
                                       for array in activation_arrays.values()):
            logger.warning("layer %d has activations beyond float16 range; storing float32", layer)
            dtype = np.dtype(np.float32)
        self.activation_dtypes[str(layer)] = dtype.name
        for name, array in activation_arrays.items():
            np.save(directory / f"{name}.npy", array.astype(dtype, copy=False))
        np.save(directory / "top_windows.npy", summary.top_window_ids.astype(np.int64, copy=False))
        if summary.bottom_window_ids is not None:
            np.save(directory / "bottom_windows.npy", summary.bottom_window_ids.astype(np.int64, copy=False))
        np.save(directory / "stats.npy", summary.stats.astype(np.float64, copy=False))
        np.save(directory / "quantiles.npy", summary.quantiles.astype(np.float32, copy=False))

    def finish(self, manifest: Manifest, *, vocab: Sequence[str], random_window_ids: np.ndarray) -> Path:
        """Write tokens, vocab and the complete manifest, then move the store into place; returns its path."""
        self._raw_tokens.close()
        if self.num_windows == 0 or self.window_length is None:
            raise ValueError("a store needs at least one window")
        raw = np.memmap(self.staging / _RAW_TOKENS_FILE, dtype=np.int32, mode="r",
                        shape=(self.num_windows, self.window_length))
        tokens = np.lib.format.open_memmap(self.staging / TOKENS_FILE, mode="w+", dtype=np.int32,
                                           shape=(self.num_windows, self.window_length))
        step = max(1, (1 << 24) // (4 * self.window_length))
        for start in range(0, self.num_windows, step):
            tokens[start:start + step] = raw[start:start + step]
        tokens.flush()
        del tokens, raw
        (self.staging / _RAW_TOKENS_FILE).unlink()
        _write_text(self.staging / VOCAB_FILE, json.dumps(list(vocab), ensure_ascii=False))
        np.save(self.staging / RANDOM_WINDOWS_FILE, np.asarray(random_window_ids, dtype=np.int64))
        if self._documents is not None:
            documents = np.concatenate(self._documents)
            np.save(self.staging / DOCUMENTS_FILE, documents)
            tokens = np.load(self.staging / TOKENS_FILE, mmap_mode="r")
            np.save(self.staging / NEAR_DUPLICATES_FILE, near_duplicate_labels(tokens))
            del tokens
        final = replace(manifest, num_windows=self.num_windows, window_length=self.window_length,
                        activation_dtypes=dict(self.activation_dtypes), complete=True,
                        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        _write_text(self.staging / MANIFEST_FILE, final.with_recording_id().to_json())
        _fsync_tree(self.staging)
        _move_into_place(self.staging, self.target)
        return self.target

    def abort(self) -> None:
        """Remove the staging directory (nothing at the target changes)."""
        if not self._raw_tokens.closed:
            self._raw_tokens.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def write_store(target: Path | str, manifest: Manifest, *, token_ids: np.ndarray, vocab: Sequence[str],
                random_window_ids: np.ndarray, layers: Mapping[int, LayerSummary],
                activation_dtype: str = "float16", documents: np.ndarray | None = None) -> Path:
    """Write a complete store in one call from in-memory arrays (atomic like the recorder); `documents` is the
    (document id, position) of every window, None for a store without document ids."""
    with StoreWriter(target) as writer:
        writer.append_windows(token_ids, documents)
        for layer in sorted(layers):
            writer.write_layer(layer, layers[layer], activation_dtype=activation_dtype)
        return writer.finish(manifest, vocab=vocab, random_window_ids=random_window_ids)


def remove_stale_staging(target: Path) -> None:
    """Remove staging/old directories for `target` left by writers that are no longer running."""
    prefix = f".{target.name}."
    for candidate in target.parent.iterdir():
        if not candidate.name.startswith(prefix):
            continue
        kind, _, rest = candidate.name[len(prefix):].partition("-")
        pid_text = rest.split("-", 1)[0]
        if kind not in ("partial", "old") or not pid_text.isdigit() or not candidate.is_dir():
            continue
        if int(pid_text) != os.getpid() and process_alive(int(pid_text)):
            continue
        logger.info("removing leftover %s", candidate)
        shutil.rmtree(candidate, ignore_errors=True)


class RecordStore:
    """A finalised record store opened for reading; arrays are memory-mapped, so opening reads almost nothing."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays: dict[tuple[int, str], np.ndarray] = {}
        self._vocab: list[str] | None = None
        self._tokens: np.ndarray | None = None
        self._random_ids: np.ndarray | None = None
        self._near_labels: np.ndarray | None = None
        self._document_windows: np.ndarray | None = None

    @classmethod
    def open(cls, path: Path | str) -> "RecordStore":
        """Open a complete store; UserError for a missing, foreign, newer-format or unfinished one."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"no record store at {path}: not a directory")
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise UserError(f"{path} is not a record store (no {MANIFEST_FILE})")
        try:
            values = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {manifest_path}: {exc}") from None
        if not isinstance(values, dict) or values.get("format") != FORMAT_NAME:
            raise UserError(f"{path} is not a neuron-explainer record store")
        version = values.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(f"{path} has record format version {version}; this neuron-explainer reads up to "
                            f"{FORMAT_VERSION}")
        if values.get("complete") is not True:
            raise UserError(f"the recording at {path} is incomplete (interrupted?); run record again")
        try:
            manifest = Manifest.from_dict(values)
        except TypeError as exc:
            raise UserError(f"malformed manifest {manifest_path}: {exc}") from None
        return cls(path, manifest)

    @property
    def layers(self) -> tuple[int, ...]:
        """Recorded layers."""
        return self.manifest.layers

    @property
    def neurons_per_layer(self) -> int:
        """Neurons per recorded layer."""
        return self.manifest.neurons_per_layer

    @property
    def num_windows(self) -> int:
        """Windows recorded."""
        return self.manifest.num_windows

    @property
    def window_length(self) -> int:
        """Tokens per window."""
        return self.manifest.window_length

    @property
    def token_ids(self) -> np.ndarray:
        """int32 [windows, length], memory-mapped."""
        if self._tokens is None:
            self._tokens = load_array(self.path / TOKENS_FILE, mmap=True)
        return self._tokens

    @property
    def vocab(self) -> list[str]:
        """Display string of every token id."""
        if self._vocab is None:
            self._vocab = json.loads((self.path / VOCAB_FILE).read_text(encoding="utf-8"))
        return self._vocab

    @property
    def random_window_ids(self) -> np.ndarray:
        """The shared random sample, ascending window ids."""
        if self._random_ids is None:
            self._random_ids = load_array(self.path / RANDOM_WINDOWS_FILE, mmap=False)
        return self._random_ids

    @property
    def has_document_ids(self) -> bool:
        """Whether the store knows each window's document (stores recorded before document ids did not)."""
        return (self.path / DOCUMENTS_FILE).is_file()

    @property
    def document_ids(self) -> np.ndarray | None:
        """int64 [windows, 2]: document id and position of every window; None for a store without them."""
        if not self.has_document_ids:
            return None
        return np.load(self.path / DOCUMENTS_FILE, mmap_mode="r")

    @property
    def near_duplicate_labels(self) -> np.ndarray:
        """int64 [windows]: near-duplicate component of every window (computed on first use in stores recorded
        before they were stored)."""
        if self._near_labels is None:
            if (self.path / NEAR_DUPLICATES_FILE).is_file():
                self._near_labels = np.load(self.path / NEAR_DUPLICATES_FILE, mmap_mode="r")
            else:
                self._near_labels = near_duplicate_labels(self.token_ids)
        return self._near_labels

    def groups_of(self, window_ids: Sequence[int]) -> dict[int, int]:
        """Split group of each of one neuron's windows (activations/groups.py); a store without document ids
        groups adjacent window ids and says so once."""
        documents = self.document_ids
        if documents is None:
            _warn_no_documents(self.path)
        elif self._document_windows is None:
            self._document_windows = np.bincount(np.asarray(documents[:, 0]))
        return neuron_groups(list(window_ids), near_labels=self.near_duplicate_labels, documents=documents,
                             document_windows=self._document_windows)

    def neurons(self) -> list[NeuronId]:
        """Every recorded neuron."""
        return [NeuronId(layer, neuron) for layer in self.layers for neuron in range(self.neurons_per_layer)]

    def window_tokens(self, window_id: int) -> tuple[str, ...]:
        """Display strings of one window's tokens."""
        vocab = self.vocab
        return tuple(vocab[index] for index in self.token_ids[window_id].tolist())

    def neuron_stats(self, layer: int, neuron: int) -> NeuronStats:
        """Summary statistics of one neuron."""
        self._check(layer, neuron)
        row = self._array(layer, "stats")[neuron]
        columns = dict(zip(self.manifest.stats_columns, row.tolist()))
        quantiles = self._array(layer, "quantiles")[neuron].tolist()
        return NeuronStats(count=int(columns["count"]), mean=columns["mean"], std=columns["std"],
                           min=columns["min"], max=columns["max"], fraction_positive=columns["fraction_positive"],
                           quantiles=tuple(zip(self.manifest.quantile_probabilities, quantiles)))

    def load_neuron(self, layer: int, neuron: int) -> NeuronRecord:
        """Everything recorded for one neuron, read through memory maps (the rest of the layer stays on disk)."""
        self._check(layer, neuron)
        top = self._windows(self._array(layer, "top_windows")[neuron],
                            self._array(layer, "top_activations")[neuron])
        random = self._windows(self.random_window_ids, self._array(layer, "random_activations")[neuron])
        bottom: tuple[Window, ...] = ()
        if (self.path / layer_directory(layer) / "bottom_windows.npy").is_file():
            bottom = self._windows(self._array(layer, "bottom_windows")[neuron],
                                   self._array(layer, "bottom_activations")[neuron])
        groups = self.groups_of([window.window_id for window in top + random + bottom])
        return NeuronRecord(neuron=NeuronId(layer, neuron), top_windows=top, random_windows=random,
                            stats=self.neuron_stats(layer, neuron), bottom_windows=bottom, window_groups=groups)

    def verify(self) -> None:
        """Open every array of the store (memory-mapped: nothing is read): UserError naming a file that is
        missing, truncated or not an array, before a run relies on it."""
        for path in sorted(self.path.glob("*.npy")) + sorted(self.path.glob("layer_*/*.npy")):
            load_array(path, mmap=True)

    def _windows(self, window_ids: np.ndarray, activations: np.ndarray) -> tuple[Window, ...]:
        values = np.asarray(activations, dtype=np.float32)
        return tuple(Window(window_id=int(window_id), tokens=self.window_tokens(int(window_id)),
                            activations=tuple(values[index].tolist()))
                     for index, window_id in enumerate(window_ids.tolist()))

    def _array(self, layer: int, name: str) -> np.ndarray:
        key = (layer, name)
        if key not in self._arrays:
            self._arrays[key] = load_array(self.path / layer_directory(layer) / f"{name}.npy", mmap=True)
        return self._arrays[key]

    def _check(self, layer: int, neuron: int) -> None:
        if layer not in self.layers:
            recorded = ", ".join(str(item) for item in self.layers)
            raise UserError(f"layer {layer} was not recorded in {self.path} (recorded layers: {recorded})")
        if not 0 <= neuron < self.neurons_per_layer:
            raise UserError(f"neuron {neuron} out of range: layers have neurons 0-{self.neurons_per_layer - 1}")


_WARNED_NO_DOCUMENTS: set[str] = set()


def _warn_no_documents(path: Path) -> None:
    """Say once per store that its splits fall back to grouping adjacent window ids."""
    key = str(path.resolve())
    if key not in _WARNED_NO_DOCUMENTS:
        _WARNED_NO_DOCUMENTS.add(key)
        logger.warning("the record store %s has no document ids (recorded before they existed): splits group "
                       "adjacent window ids and near-duplicate windows instead of whole documents; record again "
                       "to group by document", path)


def load_array(path: Path, *, mmap: bool) -> np.ndarray:
    """np.load with damage reported as a UserError naming the file (a truncated copy, a disk that filled up)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"the record store is missing {path}; record again") from None
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} is damaged (truncated or not a .npy array: {exc}); record again") from None


def load_neuron(store: RecordStore | Path | str, layer: int, neuron: int) -> NeuronRecord:
    """Read one neuron's record from a store (or a store path)."""
    opened = store if isinstance(store, RecordStore) else RecordStore.open(store)
    return opened.load_neuron(layer, neuron)


def _write_text(path: Path, text: str) -> None:
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


def _fsync_tree(directory: Path) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*sorted(p for p in directory.rglob("*") if p.is_dir()), directory]:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _move_into_place(staging: Path, target: Path) -> None:
    if target.exists():
        # A directory cannot be renamed over a non-empty one: move the old store aside first.
        old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, target)
    descriptor = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
