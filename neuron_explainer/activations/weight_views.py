"""Weight views kept inside a record store: computing them for every recorded layer, reading one neuron's back.

Layout (docs/record-format.md): `weight_views/layer_003.npz` per layer (eight [neurons, k] arrays, see
`LayerWeightViews`) and `weight_views/meta.json` (top_k, how the output side was computed, the model fingerprint,
seconds per layer), written last. Each file is replaced atomically, so a store never holds half a file; a layer
file without a meta entry for it is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.activations.store import RecordStore
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId

logger = logging.getLogger(__name__)

DIRECTORY = "weight_views"
META_FILE = "meta.json"
VIEW_FORMAT_VERSION = 1
KINDS = ("promoted", "suppressed", "exciting", "inhibiting")
"""Output tokens raised / lowered, input tokens exciting / inhibiting."""


@dataclass(frozen=True)
class TokenWeight:
    """One token of a weight view."""

    token_id: int
    """Vocabulary id."""
    token: str
    """Display string."""
    weight: float
    """Logit weight (output side) or activation (input side)."""


@dataclass(frozen=True)
class NeuronWeightView:
    """What one neuron's weights say, strongest first in each list."""

    neuron: NeuronId
    """The neuron."""
    promoted: tuple[TokenWeight, ...]
    """Output tokens whose logits it raises most."""
    suppressed: tuple[TokenWeight, ...]
    """Output tokens whose logits it lowers most."""
    exciting: tuple[TokenWeight, ...]
    """Input tokens whose embeddings alone activate it most."""
    inhibiting: tuple[TokenWeight, ...]
    """Input tokens whose embeddings alone give the most negative activation."""

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        """JSON-ready form, each list cut to `limit` entries."""
        return {kind: [[item.token, round(item.weight, 4)] for item in getattr(self, kind)[:limit]]
                for kind in KINDS}


@dataclass(frozen=True)
class WeightViewsSummary:
    """What computing the views did."""

    path: Path
    """The store directory."""
    layers: tuple[int, ...]
    """Layers written."""
    seconds_per_layer: float
    """Mean wall time per layer (model loading excluded)."""
    load_seconds: float
    """Time to load the model."""


def compute_weight_views(store_path: Path | str, *, top_k: int = 20, device: str = "auto",
                         dtype: str = "float32") -> WeightViewsSummary:
    """Load the store's model with its LM head and write the weight views of every recorded layer."""
    from neuron_explainer.subject.hooks import resolve_hook_point
    from neuron_explainer.subject.weights import WeightReader, layer_weight_views

    if top_k < 1:
        raise UserError(f"--top must be positive (got {top_k})")
    store = RecordStore.open(store_path)
    manifest = store.manifest
    started = time.monotonic()
    loaded = load_loadable_model(manifest.model_id, device=device, dtype=dtype)
    if loaded.fingerprint != manifest.model_fingerprint:
        raise UserError(f"the weights of {manifest.model_id!r} changed since {store.path} was recorded "
                        "(fingerprints differ); record again")
    hook_point = resolve_hook_point(loaded.model.base_model, hook_template=manifest.hook_point)
    reader = WeightReader(loaded.model, hook_point, vocab_size=len(store.vocab))
    load_seconds = time.monotonic() - started
    directory = store.path / DIRECTORY
    directory.mkdir(exist_ok=True)
    timings = []
    for layer in store.layers:
        layer_started = time.monotonic()
        views = layer_weight_views(reader, layer, top_k=top_k)
        arrays = {name: value for name, value in asdict(views).items() if name != "layer"}
        _atomic(directory / f"layer_{layer:03d}.npz", lambda path: np.savez(path, **arrays))
        timings.append(time.monotonic() - layer_started)
        logger.info("weight views of layer %d: %.2f s", layer, timings[-1])
    meta = {"format_version": VIEW_FORMAT_VERSION, "top_k": top_k, "layers": list(store.layers),
            "model_id": manifest.model_id, "model_fingerprint": manifest.model_fingerprint,
            **asdict(reader.basis), "seconds_per_layer": round(sum(timings) / len(timings), 3),
            "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _atomic(directory / META_FILE, lambda path: Path(path).write_text(json.dumps(meta, indent=2), encoding="utf-8"))
    return WeightViewsSummary(path=store.path, layers=tuple(store.layers),
                              seconds_per_layer=meta["seconds_per_layer"], load_seconds=round(load_seconds, 2))


def check_loadable_model(model_id: str) -> None:
    """A UserError unless the store's model can be loaded with an LM head (reads its config, not its weights):
    refuses synthetic stores, missing directories and encoders."""
    from neuron_explainer.subject.loading import is_encoder_config, load_config, model_directory

    try:
        _, location = model_directory(model_id)
        config = load_config(location)
    except UserError as exc:
        raise UserError(f"the store's model is not loadable: {exc}") from None
    if is_encoder_config(config):
        raise UserError(f"the store's model {model_id!r} is an encoder without an LM head; weight views and "
                        "causal scores need a causal LM")


def load_loadable_model(model_id: str, *, device: str = "auto", dtype: str = "auto") -> Any:
    """The store's model with its LM head (see check_loadable_model)."""
    from neuron_explainer.subject.loading import load_model

    check_loadable_model(model_id)
    return load_model(model_id, device=device, dtype=dtype, causal_lm=True)


def _atomic(path: Path, write: Any) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


class WeightViews:
    """The weight views of a store, opened for reading (None from `open` when the store has none)."""

    def __init__(self, store: RecordStore, meta: dict[str, Any]) -> None:
        self.store = store
        self.meta = meta
        self._layers: dict[int, dict[str, np.ndarray]] = {}

    @classmethod
    def open(cls, store: RecordStore) -> WeightViews | None:
        """The store's views, or None when they were never computed."""
        path = store.path / DIRECTORY / META_FILE
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        if meta.get("format_version", 0) > VIEW_FORMAT_VERSION:
            raise UserError(f"{path} has weight-view format {meta.get('format_version')}; upgrade neuron-explainer")
        return cls(store, meta)

    def has_layer(self, layer: int) -> bool:
        """Whether this layer's views exist."""
        return layer in self.meta.get("layers", ())

    def neuron(self, layer: int, neuron: int) -> NeuronWeightView | None:
        """One neuron's views, None when its layer has none."""
        if not self.has_layer(layer):
            return None
        if layer not in self._layers:
            with np.load(self.store.path / DIRECTORY / f"layer_{layer:03d}.npz") as data:
                self._layers[layer] = {name: data[name] for name in data.files}
        arrays = self._layers[layer]
        vocab = self.store.vocab

        def items(kind: str) -> tuple[TokenWeight, ...]:
            ids, weights = arrays[f"{kind}_ids"][neuron], arrays[f"{kind}_weights"][neuron]
            return tuple(TokenWeight(int(index), vocab[int(index)], float(weight))
                         for index, weight in zip(ids.tolist(), weights.tolist()))

        return NeuronWeightView(NeuronId(layer, neuron), *(items(kind) for kind in KINDS))


def require_weight_views(store: RecordStore, layers: Iterable[int]) -> WeightViews:
    """The store's views, or a UserError saying how to compute them when they miss any of `layers`."""
    views = WeightViews.open(store)
    missing = sorted({layer for layer in layers if views is None or not views.has_layer(layer)})
    if views is None or missing:
        which = "" if views is None else f" of layer(s) {', '.join(map(str, missing))}"
        raise UserError(f"the record store {store.path} has no weight views{which} to show the explainer; compute "
                        f"them first with `neuron-explainer weights --records {store.path}`")
    return views


def neuron_weight_view(store: RecordStore, neuron: NeuronId) -> NeuronWeightView | None:
    """One neuron's weight view from a store, None when the store has none for its layer."""
    views = WeightViews.open(store)
    return views.neuron(neuron.layer, neuron.neuron) if views is not None else None


def format_weight_view(view: NeuronWeightView, *, limit: int = 10) -> str:
    """Four lines for a terminal: output tokens raised and lowered, input tokens exciting and inhibiting."""
    labels = {"promoted": "output up  ", "suppressed": "output down", "exciting": "input +    ",
              "inhibiting": "input -    "}
    lines = [f"weight view of {view.neuron} (direct path, from the weights):"]
    for kind in KINDS:
        items = " ".join(f"{item.token!r}({item.weight:+.3g})" for item in getattr(view, kind)[:limit])
        lines.append(f"  {labels[kind]} {items}")
    return "\n".join(lines) + "\n"


def export_weight_views(store: RecordStore, out: Path | str, *, limit: int | None = None) -> int:
    """Write every neuron's views as JSON lines (`{"layer", "neuron", "promoted": [[token, weight], ...], ...}`);
    returns the number of neurons written."""
    views = WeightViews.open(store)
    if views is None:
        raise UserError(f"{store.path} has no weight views; compute them with `neuron-explainer weights`")
    written = 0
    staging = Path(out).with_name(f".{Path(out).name}.{os.getpid()}.tmp")
    try:
        with open(staging, "w", encoding="utf-8") as handle:
            for neuron in store.neurons():
                view = views.neuron(neuron.layer, neuron.neuron)
                if view is None:
                    continue
                row = {"layer": neuron.layer, "neuron": neuron.neuron, **view.as_dict(limit)}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += 1
        os.replace(staging, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        staging.unlink(missing_ok=True)
    return written
