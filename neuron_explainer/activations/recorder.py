"""The recorder: one streaming pass of a subject model over corpus windows into a record store.

`record(config, out_dir)` reuses a complete store at out_dir whose manifest answers the same request (same model
weights, corpus content, layers, window length, sizes, seed, polarity, dtype); anything else is recorded afresh
into a staging directory and swapped in atomically, so a store never mixes two recordings.
`record_activations(...)` writes a store from activations computed elsewhere (planted synthetic neurons) through
the same accumulator, so its top-k, random sample and statistics follow exactly the recorder's rules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.activations.accumulate import RecordingAccumulator
from neuron_explainer.activations.limits import check_buffers_fit, check_window_fits, first_batch_or_error
from neuron_explainer.activations.store import (
    MANIFEST_FILE,
    RUN_ONLY_CONFIG_FIELDS,
    Manifest,
    RecordStore,
    StoreWriter,
)
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import parse_layers

logger = logging.getLogger(__name__)

DEFAULT_WINDOWS = 2000
MAX_COUNT = 10**12
"""Largest window count, length or k a recording accepts (far beyond any corpus; keeps numbers sane)."""
_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class RecordPolarity(str, Enum):
    """Which extreme windows are kept per neuron."""

    POSITIVE = "positive"
    BOTH = "both"
    AUTO = "auto"
    """`both` on gated MLPs (about half their neurons are negative-dominant), `positive` elsewhere."""


def resolve_polarity(polarity: RecordPolarity | str, hook_template: str) -> RecordPolarity:
    """The recorded side(s) a request means for a model whose neurons sit at `hook_template`."""
    from neuron_explainer.subject.hooks import is_gated_mlp

    chosen = RecordPolarity(polarity)
    if chosen is RecordPolarity.AUTO:
        return RecordPolarity.BOTH if is_gated_mlp(hook_template) else RecordPolarity.POSITIVE
    return chosen


@dataclass(frozen=True)
class RecordConfig:
    """A recording request (the `record` command's flags)."""

    model: str = "default"
    """Model spec: `default`, an HF id, a directory or a .gguf file."""
    corpus: str = "python-docs"
    """Corpus spec (see corpus.open_corpus)."""
    layers: str = "all"
    """Layer SPEC: `all`, `N`, `A-B` or a comma list."""
    window_length: int = 64
    """Text tokens per window."""
    windows: int = DEFAULT_WINDOWS
    """Most windows to record (fewer if the corpus runs out)."""
    top_k: int = 40
    """Top windows kept per neuron (and bottom windows with polarity both)."""
    random_k: int = 100
    """Size of the shared random window sample (each neuron draws its own random split windows from it)."""
    seed: int = 0
    """Seed of the random window sample and the quantile sample."""
    dtype: str = "auto"
    """Model dtype: auto, float32, bfloat16, float16."""
    device: str = "auto"
    """Device: auto, cpu, cuda, cuda:N."""
    polarity: RecordPolarity = RecordPolarity.POSITIVE
    """`positive`, `both` to also keep each neuron's most negative windows, or `auto` (both on gated MLPs)."""
    hook_template: str | None = None
    """Explicit module path with {layer} for architectures not resolved automatically."""
    batch_size: int = 32
    """Windows per forward pass."""
    text_field: str = "text"
    """JSONL field / parquet or dataset column holding the text."""
    pack: bool = False
    """Let windows straddle documents (EOS-separated) instead of dropping each document's tail."""
    quantile_sample_tokens: int = 2048
    """Token positions in the reservoir behind the quantile sketch."""
    store_dtype: str = "float16"
    """Stored activation dtype (float16 falls back to float32 per layer on overflow)."""

    def validate(self) -> None:
        """UserError for values no recording can use."""
        for name in ("window_length", "windows", "top_k", "random_k", "batch_size", "quantile_sample_tokens"):
            flag = "--ctx" if name == "window_length" else f"--{name.replace('_', '-')}"
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"{flag} must be a whole number, got {value!r}")
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
            if value > MAX_COUNT:
                raise UserError(f"{flag} must be at most {MAX_COUNT:.0e}, got {value}")
        if self.store_dtype not in ("float16", "float32"):
            raise UserError(f"store dtype must be float16 or float32, got {self.store_dtype!r}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass(frozen=True)
class RecordSummary:
    """What a `record` call did."""

    path: Path
    """The store directory."""
    manifest: Manifest
    """Its manifest."""
    reused: bool
    """True when an existing complete store already answered the request."""
    seconds: float
    """Wall time of this call."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        manifest = self.manifest
        return {"path": str(self.path), "reused": self.reused, "recording_id": manifest.recording_id,
                "model": manifest.model_id, "hook_point": manifest.hook_point, "corpus": manifest.corpus_spec,
                "layers": list(manifest.layers), "neurons_per_layer": manifest.neurons_per_layer,
                "neurons": len(manifest.layers) * manifest.neurons_per_layer, "windows": manifest.num_windows,
                "tokens": manifest.num_windows * manifest.window_length, "window_length": manifest.window_length,
                "top_k": manifest.top_k, "random_k": manifest.random_k, "polarity": manifest.polarity,
                "dtype": manifest.compute_dtype, "device": manifest.device,
                "recording_seconds": round(manifest.elapsed_seconds, 2), "seconds": round(self.seconds, 2)}


def manifest_matches(manifest: Manifest, config: RecordConfig, *, model_fingerprint: str | None = None,
                     corpus_hash: str | None = None, compute_dtype: str | None = None) -> bool:
    """True when a complete store answers `config`.

    Compares every content-defining field of the request; fingerprint and corpus hash only when given (they
    need the model and corpus at hand), dtype when given or when the config names one (`auto` resolves per
    machine). Device and batch size never matter.
    """
    if not manifest.complete:
        return False
    requested = {key: value for key, value in config.as_dict().items() if key not in RUN_ONLY_CONFIG_FIELDS}
    recorded = {key: value for key, value in manifest.config.items() if key not in RUN_ONLY_CONFIG_FIELDS}
    if requested != recorded:
        return False
    try:
        if tuple(parse_layers(config.layers, manifest.num_model_layers)) != manifest.layers:
            return False
    except UserError:
        return False
    if compute_dtype is None and config.dtype != "auto":
        compute_dtype = _DTYPE_NAMES.get(config.dtype, config.dtype)
    checks = ((model_fingerprint, manifest.model_fingerprint), (corpus_hash, manifest.corpus_hash),
              (compute_dtype, manifest.compute_dtype))
    return all(wanted is None or wanted == recorded_value for wanted, recorded_value in checks)


@dataclass(frozen=True)
class PreparedRecording:
    """A checked recording request, ready to feed its batches (shared by `record` and the sharded recorder)."""

    target: Path
    """Where the store goes."""
    subject: Any
    """The loaded model."""
    layers: list[int]
    """Layers to record."""
    manifest: Manifest
    """The store's manifest before any window is counted."""
    batches: Iterator[Any]
    """The corpus's batches of windows (the first one already read, so an empty corpus fails before any work)."""


def prepare_recording(config: RecordConfig, out_dir: Path | str, *, subject: Any, device: str,
                      started: float) -> PreparedRecording | RecordSummary:
    """Check the request and load the model; a RecordSummary when a complete matching store is already there."""
    from neuron_explainer.corpus import document_batches, open_corpus
    from neuron_explainer.subject.info import max_positions
    from neuron_explainer.subject.subject import Subject

    config.validate()
    target = Path(out_dir)
    corpus = open_corpus(config.corpus, text_field=config.text_field)
    _check_target(target)
    if subject is None:
        subject = Subject.load(config.model, device=device, dtype=config.dtype, hook_template=config.hook_template)
    layers = parse_layers(config.layers, subject.num_layers)
    special = len(subject.special_tokens.prefix) + len(subject.special_tokens.suffix)
    check_window_fits(config.window_length, special, max_positions(subject.model.config),
                      subject.loaded.model_id)
    check_buffers_fit(layers=len(layers), neurons_per_layer=subject.neurons_per_layer,
                      window_length=config.window_length, top_k=config.top_k, random_k=config.random_k,
                      both=RecordPolarity(config.polarity) is RecordPolarity.BOTH)
    compute_dtype = str(subject.dtype).removeprefix("torch.")
    existing = _existing_manifest(target)
    if existing is not None and manifest_matches(existing, config, model_fingerprint=subject.loaded.fingerprint,
                                                 corpus_hash=corpus.content_hash, compute_dtype=compute_dtype):
        logger.info("reusing the complete recording at %s", target)
        return RecordSummary(path=target, manifest=existing, reused=True, seconds=time.perf_counter() - started)
    manifest = Manifest(
        model_id=subject.loaded.model_id, model_fingerprint=subject.loaded.fingerprint,
        hook_point=subject.hook_point.template, corpus_spec=corpus.spec, corpus_hash=corpus.content_hash,
        window_length=config.window_length, num_windows=0, seed=config.seed, layers=tuple(layers),
        neurons_per_layer=subject.neurons_per_layer, top_k=config.top_k, random_k=config.random_k,
        polarity=resolve_polarity(config.polarity, subject.hook_point.template).value,
        tokenizer=subject.tokenizer_info(),
        config=config.as_dict(), num_model_layers=subject.num_layers, compute_dtype=compute_dtype,
        device=str(subject.loaded.device))
    batches = first_batch_or_error(
        document_batches(corpus.documents(), subject.tokenizer, length=config.window_length,
                         max_windows=config.windows, batch_size=config.batch_size, pack=config.pack),
        corpus=corpus.spec, window_length=config.window_length)
    return PreparedRecording(target=target, subject=subject, layers=layers, manifest=manifest, batches=batches)


def record(config: RecordConfig, out_dir: Path | str, *, progress: bool = True, subject: Any = None) -> RecordSummary:
    """Record (or reuse) a store at out_dir; `subject` may pass an already loaded Subject for config.model."""
    from neuron_explainer.subject.subject import token_strings

    started = time.perf_counter()
    prepared = prepare_recording(config, out_dir, subject=subject, device=config.device, started=started)
    if isinstance(prepared, RecordSummary):
        return prepared
    target, subject, layers, manifest, batches = (prepared.target, prepared.subject, prepared.layers,
                                                  prepared.manifest, prepared.batches)

    def feed(token_ids: np.ndarray, accumulator: RecordingAccumulator) -> None:
        record_batch(subject, accumulator, token_ids, layers)

    path = _accumulate_into_store(
        target, manifest, batches, feed, neurons={layer: subject.neurons_per_layer for layer in layers},
        config=config, device=subject.loaded.device, vocab=lambda: token_strings(subject.tokenizer),
        progress=progress)
    return RecordSummary(path=path, manifest=RecordStore.open(path).manifest, reused=False,
                         seconds=time.perf_counter() - started)


def record_batch(subject: Any, accumulator: RecordingAccumulator, token_ids: np.ndarray,
                 layers: Sequence[int]) -> None:
    """Run one batch through the subject, folding each layer in from inside its hook while it is cache-hot."""
    picks = accumulator.begin_batch(len(token_ids))
    subject.run(token_ids, layers=layers,
                consume=lambda layer, activations: accumulator.add_layer(layer, activations, picks))
    accumulator.end_batch(picks)


def record_activations(target: Path | str, *, token_ids: np.ndarray, vocab: Sequence[str],
                       activations: Mapping[int, np.ndarray], top_k: int = 40, random_k: int = 40, seed: int = 0,
                       polarity: RecordPolarity = RecordPolarity.POSITIVE, model_id: str = "synthetic",
                       model_fingerprint: str = "", hook_point: str = "", corpus_spec: str = "",
                       quantile_sample_tokens: int = 2048, store_dtype: str = "float32",
                       extra: Mapping[str, Any] | None = None, batch_size: int = 64,
                       documents: np.ndarray | None = None) -> Path:
    """Write a store from given windows and activations, with the recorder's top-k / sampling / stats rules.

    token_ids: int [windows, length]; vocab: display string per token id; activations: {layer: float array
    [windows, length, neurons]} (all layers the same width); documents: int [windows, 2] document id and position
    of every window (None writes a store without document ids). The corpus hash is the hash of token_ids.
    """
    import torch

    token_ids = np.asarray(token_ids, dtype=np.int32)
    if token_ids.ndim != 2 or token_ids.shape[0] == 0:
        raise ValueError(f"token_ids must be a non-empty [windows, length] array, got shape {token_ids.shape}")
    widths = {array.shape[2] for array in activations.values()}
    if not activations or len(widths) != 1:
        raise ValueError("activations must hold at least one layer, all of the same width")
    for layer, array in activations.items():
        if array.shape[:2] != token_ids.shape:
            raise ValueError(f"layer {layer} activations have shape {array.shape}, expected {token_ids.shape} + "
                             "(neurons,)")
    if token_ids.size and int(token_ids.max()) >= len(vocab):
        raise ValueError("token_ids refer to ids beyond the vocab")
    config = RecordConfig(model=model_id, corpus=corpus_spec, layers=",".join(map(str, sorted(activations))),
                          window_length=token_ids.shape[1], windows=token_ids.shape[0], top_k=top_k,
                          random_k=random_k, seed=seed, polarity=polarity, batch_size=batch_size,
                          quantile_sample_tokens=quantile_sample_tokens, store_dtype=store_dtype)
    config.validate()
    manifest = Manifest(
        model_id=model_id, model_fingerprint=model_fingerprint, hook_point=hook_point, corpus_spec=corpus_spec,
        corpus_hash=hashlib.sha256(token_ids.tobytes()).hexdigest(), window_length=token_ids.shape[1],
        num_windows=0, seed=seed, layers=tuple(sorted(activations)), neurons_per_layer=widths.pop(), top_k=top_k,
        random_k=random_k, polarity=resolve_polarity(polarity, hook_point).value, config=config.as_dict(),
        num_model_layers=max(activations) + 1, compute_dtype="float32", device="cpu", extra=dict(extra or {}))
    if documents is not None:
        documents = np.asarray(documents, dtype=np.int64)
        if documents.shape != (token_ids.shape[0], 2):
            raise ValueError(f"documents must have shape ({token_ids.shape[0]}, 2), got {documents.shape}")
    batches = ((token_ids[start:start + batch_size],
                None if documents is None else documents[start:start + batch_size])
               for start in range(0, token_ids.shape[0], batch_size))

    def feed(batch: np.ndarray, accumulator: RecordingAccumulator) -> None:
        start, stop = accumulator.windows, accumulator.windows + len(batch)
        accumulator.add({layer: torch.from_numpy(np.ascontiguousarray(array[start:stop], dtype=np.float32))
                         for layer, array in activations.items()})

    return _accumulate_into_store(Path(target), manifest, batches, feed,
                                  neurons={layer: manifest.neurons_per_layer for layer in activations},
                                  config=config, device="cpu", vocab=lambda: list(vocab), progress=False)


def _accumulate_into_store(target: Path, manifest: Manifest, batches: Iterable[tuple[np.ndarray, np.ndarray | None]],
                           feed: Callable[[np.ndarray, RecordingAccumulator], None], *, neurons: Mapping[int, int],
                           config: RecordConfig, device: Any,
                           vocab: Callable[[], Sequence[str]], progress: bool, accumulator: Any = None) -> Path:
    """The streaming pass and the store; the manifest's elapsed_seconds covers exactly this. `accumulator`: one
    that already holds every window (merged shards), which `feed` leaves as it is."""
    from tqdm import tqdm

    started = time.perf_counter()
    accumulator = accumulator or RecordingAccumulator(
        neurons, positions=config.window_length, top_k=config.top_k, random_k=config.random_k,
        quantile_tokens=config.quantile_sample_tokens, both=manifest.polarity == RecordPolarity.BOTH.value,
        seed=config.seed, device=device)
    with StoreWriter(target) as writer:
        writer.write_pending_manifest(manifest)
        with tqdm(total=config.windows, unit="win", desc="record", disable=not progress, dynamic_ncols=True) as bar:
            for batch, documents in batches:
                feed(batch, accumulator)
                writer.append_windows(batch, documents)
                bar.update(len(batch))
        if accumulator.has_nan():
            raise UserError("the model produced NaN or infinite activations (float16 overflow?); try --dtype float32")
        if accumulator.windows < config.windows:
            logger.info("the corpus ran out after %d of %d windows", accumulator.windows, config.windows)
        random_window_ids = accumulator.random_window_ids()
        for layer in sorted(neurons):
            writer.write_layer(layer, accumulator.pop_layer(layer), activation_dtype=config.store_dtype)
        final = replace(manifest, elapsed_seconds=time.perf_counter() - started)
        return writer.finish(final, vocab=vocab(), random_window_ids=random_window_ids)


def _check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise UserError(f"refusing to write into {target}: it is a non-empty directory that is not a record store")


def _existing_manifest(target: Path) -> Manifest | None:
    if not (target / MANIFEST_FILE).is_file():
        return None
    try:
        return RecordStore.open(target).manifest
    except UserError:
        return None
