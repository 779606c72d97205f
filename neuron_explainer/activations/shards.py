"""Recording in shards: contiguous runs of the corpus's batches recorded by separate workers (Ray tasks) and merged
into exactly the store one streaming pass writes.

Exact, not approximately equal: a shard starts its random-sample and quantile-sample generators where the single
pass would be at its first window (the draws depend only on how many items came before, never on activations),
keeps its top-k lists with the single pass's order (score descending, earlier window first), and keeps every
batch's float64 sums separately so the merge adds them in the single pass's order (float addition is not
associative). Minimum, maximum and counts merge exactly anyway. The merged arrays go through the recorder's own
summary and store writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.activations.accumulate import LayerAccumulator, RecordingAccumulator, Reservoir
from neuron_explainer.activations.recorder import (RecordConfig, RecordPolarity, RecordSummary,
                                                   _accumulate_into_store, prepare_recording, record_batch,
                                                   resolve_polarity)
from neuron_explainer.activations.store import RecordStore

Batch = tuple[np.ndarray, "np.ndarray | None"]
"""Text token ids [windows, length] and their (document, position) rows, as the corpus yields them."""

_SKIP_CHUNK = 1 << 20
"""Reservoir draws skipped per step when a shard fast-forwards (bounds the memory of a far start)."""


class _ShardLayer(LayerAccumulator):
    """A layer accumulator that also keeps every float64 addend of the running sums, in order (the merge adds them
    in the single pass's order): one per batch on the torch path, one per window with the C kernel, which adds each
    window's sums to the totals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sums: list[np.ndarray] = []

    def update(self, activations: Any, picks: Any, *, parts: int = 1) -> None:
        if not self.uses_kernel(activations):
            self._keep_addend(lambda: super(_ShardLayer, self).update(activations, picks, parts=parts))
            return
        # The kernel folds windows in id order, so one window at a time changes nothing but what can be kept.
        counted = self.count
        for offset in range(activations.shape[0]):
            window = replace(picks, first_window_id=picks.first_window_id + offset, size=1,
                             random_offsets=picks.random_offsets[:0], random_slots=picks.random_slots[:0],
                             token_offsets=picks.token_offsets[:0], token_slots=picks.token_slots[:0])
            self._keep_addend(lambda: self._update_native(activations[offset:offset + 1], window, parts))
        self.count = counted + activations.shape[0] * activations.shape[1]
        self._sample(activations, picks)

    def _keep_addend(self, fold: Callable[[], None]) -> None:
        import torch

        # From zero, `total += addend` is exactly the addend.
        for running in (self.total, self.total_squares, self.positives):
            running.zero_()
        fold()
        self.batch_sums.append(torch.stack([self.total, self.total_squares, self.positives]).cpu().numpy())


class ShardAccumulator(RecordingAccumulator):
    """A RecordingAccumulator for the windows from `first_window` on, sampling as the single pass would there."""

    layer_class = _ShardLayer

    def __init__(self, neurons_per_layer: dict[int, int], *, first_window: int, **settings: Any) -> None:
        super().__init__(neurons_per_layer, **settings)
        _skip(self.window_reservoir, first_window)
        _skip(self.token_reservoir, first_window * self.positions)
        self.windows = self.first_window = first_window


def _skip(reservoir: Reservoir, count: int) -> None:
    while count > 0:
        step = min(count, _SKIP_CHUNK)
        reservoir.offer(step)
        count -= step


@dataclass(frozen=True)
class LayerPart:
    """One layer of one shard: what the merge needs, as numpy arrays."""

    top_scores: np.ndarray
    """float32 [neurons, k]: window maxima of the shard's top windows, rank order."""
    top_ids: np.ndarray
    """int64 [neurons, k]: their global window ids (-1: empty)."""
    top_activations: np.ndarray
    """float32 [neurons, k, positions]."""
    bottom: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    """The same for the bottom windows (scores are negated minima), polarity both only."""
    random_slots: np.ndarray
    """Random-sample slots whose window lies in this shard."""
    random_rows: np.ndarray
    """float32 [slots, positions, neurons]: their activations."""
    token_slots: np.ndarray
    """Quantile-sample slots whose token lies in this shard."""
    token_rows: np.ndarray
    """float32 [slots, neurons]: their activations."""
    batch_sums: np.ndarray
    """float64 [addends, 3, neurons]: each batch's (torch path) or window's (C kernel) sum, sum of squares and
    positive count, in order."""
    minimum: np.ndarray
    """float32 [neurons]."""
    maximum: np.ndarray
    """float32 [neurons]."""
    count: int
    """Token activations seen."""
    has_nan: bool
    """Whether a NaN or infinity was seen."""


@dataclass(frozen=True)
class ShardResult:
    """A recorded shard: its window range and its layers."""

    first_window: int
    """Global id of its first window."""
    windows: int
    """Windows recorded."""
    layers: dict[int, LayerPart]
    """Per layer."""


def _top_part(top: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, activations = top.result(top.k)
    return top.scores.cpu().numpy(), ids, activations


def _part(accumulator: ShardAccumulator, layer: int) -> LayerPart:
    state = accumulator.layers[layer]
    first, last = accumulator.first_window, accumulator.windows
    positions = accumulator.positions
    random_slots = np.nonzero((accumulator.window_reservoir.items >= first)
                              & (accumulator.window_reservoir.items < last))[0]
    token_slots = np.nonzero((accumulator.token_reservoir.items >= first * positions)
                             & (accumulator.token_reservoir.items < last * positions))[0]
    empty = np.zeros((0, 3, state.total.shape[0]))
    return LayerPart(
        *_top_part(state.top), bottom=None if state.bottom is None else _top_part(state.bottom),
        random_slots=random_slots, random_rows=state.random[random_slots].cpu().numpy(),
        token_slots=token_slots, token_rows=state.token_sample[token_slots].cpu().numpy(),
        batch_sums=np.stack(state.batch_sums) if state.batch_sums else empty,
        minimum=state.minimum.cpu().numpy(), maximum=state.maximum.cpu().numpy(), count=state.count,
        has_nan=not bool(np.isfinite(state.total_squares.cpu().numpy()).all()))


def record_shard(config: RecordConfig, batches: Sequence[Batch], *, first_window: int, layers: Sequence[int],
                 subject: Any = None) -> ShardResult:
    """Record one shard (a contiguous run of the corpus's batches starting at window `first_window`)."""
    from neuron_explainer.subject.subject import Subject

    if subject is None:
        subject = Subject.load(config.model, device=config.device, dtype=config.dtype,
                               hook_template=config.hook_template)
    accumulator = ShardAccumulator(
        {layer: subject.neurons_per_layer for layer in layers}, first_window=first_window,
        positions=config.window_length, top_k=config.top_k, random_k=config.random_k,
        quantile_tokens=config.quantile_sample_tokens,
        both=resolve_polarity(config.polarity, subject.hook_point.template) is RecordPolarity.BOTH,
        seed=config.seed, device=subject.loaded.device)
    for token_ids, _ in batches:
        record_batch(subject, accumulator, token_ids, layers)
    return ShardResult(first_window=first_window, windows=accumulator.windows - first_window,
                       layers={layer: _part(accumulator, layer) for layer in layers})


class MergedShards:
    """The merged shards behind the recorder's accumulator interface (what `_accumulate_into_store` reads)."""

    def __init__(self, shards: Sequence[ShardResult], config: RecordConfig, *, neurons: int, both: bool) -> None:
        self.shards = sorted(shards, key=lambda shard: shard.first_window)
        self.config = config
        self.neurons = neurons
        self.both = both
        self.windows = sum(shard.windows for shard in self.shards)
        window_stream, token_stream = np.random.SeedSequence(config.seed).spawn(2)
        # The single pass's final samples: the draws depend only on how many items there were.
        self.window_reservoir = Reservoir(config.random_k, np.random.Generator(np.random.PCG64(window_stream)))
        self.token_reservoir = Reservoir(config.quantile_sample_tokens,
                                         np.random.Generator(np.random.PCG64(token_stream)))
        _skip(self.window_reservoir, self.windows)
        _skip(self.token_reservoir, self.windows * config.window_length)

    def has_nan(self) -> bool:
        return any(part.has_nan for shard in self.shards for part in shard.layers.values())

    def random_window_ids(self) -> np.ndarray:
        return np.sort(self.window_reservoir.items[:self.window_reservoir.filled], kind="stable")

    def pop_layer(self, layer: int) -> Any:
        import torch

        config = self.config
        parts = [shard.layers[layer] for shard in self.shards]
        merged = LayerAccumulator(self.neurons, positions=config.window_length, top_k=config.top_k,
                                  random_k=config.random_k, quantile_tokens=config.quantile_sample_tokens,
                                  both=self.both, device="cpu", scratch=None)  # type: ignore[arg-type]
        _merge_top(merged.top, [(part.top_scores, part.top_ids, part.top_activations) for part in parts])
        if merged.bottom is not None:
            _merge_top(merged.bottom, [part.bottom for part in parts if part.bottom is not None])
        for part in parts:
            merged.random[torch.tensor(part.random_slots)] = torch.tensor(part.random_rows)
            merged.token_sample[torch.tensor(part.token_slots)] = torch.tensor(part.token_rows)
            for sums in part.batch_sums:
                merged.total += torch.tensor(sums[0])
                merged.total_squares += torch.tensor(sums[1])
                merged.positives += torch.tensor(sums[2])
            merged.minimum = torch.minimum(merged.minimum, torch.tensor(part.minimum))
            merged.maximum = torch.maximum(merged.maximum, torch.tensor(part.maximum))
            merged.count += part.count
        filled = self.window_reservoir.filled
        random_order = np.argsort(self.window_reservoir.items[:filled], kind="stable")
        return merged.summary(self.windows, random_order, self.token_reservoir.filled)


def _merge_top(top: Any, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Fill a TopK with the best k of the shards' lists, ordered as the single pass orders them."""
    import torch

    scores = np.concatenate([part[0] for part in parts], axis=1)
    ids = np.concatenate([part[1] for part in parts], axis=1)
    rows = np.concatenate([part[2] for part in parts], axis=1)
    empty = ids < 0
    # Score descending, then earlier window first; empty entries last.
    order = np.lexsort((np.where(empty, np.iinfo(np.int64).max, ids), np.where(empty, np.inf, -scores)),
                       axis=-1)[:, :top.k]
    top.scores = torch.from_numpy(np.take_along_axis(scores, order, axis=1).copy())
    top.window_ids = torch.from_numpy(np.take_along_axis(ids, order, axis=1).copy())
    top.activations = torch.from_numpy(np.take_along_axis(rows, order[:, :, None], axis=1).copy())
    top.slots = torch.arange(top.k).expand(top.activations.shape[0], top.k).clone()


ShardRunner = Callable[[list[tuple[Sequence[Batch], int]], Sequence[int]], list[ShardResult]]
"""Records every (batches, first window) shard of the given layers and returns their results (on Ray workers, or
here)."""


def record_sharded(config: RecordConfig, out_dir: Path | str, *, shards: int, run: ShardRunner | None = None,
                   subject: Any = None) -> RecordSummary:
    """Record (or reuse) a store at out_dir by `shards` shards recorded by `run` (default: one after the other in
    this process) and merged; the store equals the one `record` writes for the same request."""
    from neuron_explainer.subject.subject import token_strings

    started = time.perf_counter()
    prepared = prepare_recording(config, out_dir, subject=subject, device="cpu", started=started)
    if isinstance(prepared, RecordSummary):
        return prepared
    target, subject, layers, manifest = prepared.target, prepared.subject, prepared.layers, prepared.manifest
    polarity = RecordPolarity(manifest.polarity)
    batches = list(prepared.batches)
    plan: list[tuple[Sequence[Batch], int]] = []
    first = 0
    for part in np.array_split(np.arange(len(batches)), min(shards, len(batches))):
        chosen = [batches[index] for index in part]
        plan.append((chosen, first))
        first += sum(len(token_ids) for token_ids, _ in chosen)
    if run is None:
        results = [record_shard(config, chosen, first_window=start, layers=layers, subject=subject)
                   for chosen, start in plan]
    else:
        results = run(plan, layers)
    merged = MergedShards(results, config, neurons=subject.neurons_per_layer, both=polarity is RecordPolarity.BOTH)
    path = _accumulate_into_store(
        target, manifest, batches, lambda _batch, _merged: None,
        neurons={layer: subject.neurons_per_layer for layer in layers}, config=config, device="cpu",
        vocab=lambda: token_strings(subject.tokenizer), progress=False, accumulator=merged)
    return RecordSummary(path=path, manifest=RecordStore.open(path).manifest, reused=False,
                         seconds=time.perf_counter() - started)


def ray_shard_runner(config: RecordConfig, *, runtime_env: dict[str, Any] | None = None) -> ShardRunner:
    """A ShardRunner recording each shard in its own Ray task (one GPU each where the cluster has GPUs), in
    `runtime_env` (e.g. the one that ships this package to the nodes)."""

    def run(plan: list[tuple[Sequence[Batch], int]], layers: Sequence[int]) -> list[ShardResult]:
        import ray

        gpus = 1 if config.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(record_shard).options(num_cpus=1, num_gpus=gpus, runtime_env=runtime_env)
        return ray.get([task.remote(config, chosen, first_window=start, layers=list(layers))
                        for chosen, start in plan])

    return run
