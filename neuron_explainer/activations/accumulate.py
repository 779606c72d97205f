"""Streaming summaries of MLP activations: per-neuron top-k windows, a shared random sample, statistics.

Everything here is O(neurons x (k + sample)) in memory whatever the number of windows: batches of activations
[batch, positions, neurons] are folded in and dropped. Window ids are assigned in arrival order (0, 1, ...).

Top-k order: by the window's max activation, descending; ties go to the earlier window. The merge keeps each
neuron's list sorted and writes a window's activations only when it enters a list, so after the first batches
the per-batch cost is a small sort of [neurons, k + batch] values.

Random sample: reservoir sampling (Algorithm R) over window ids, driven by a generator seeded from the
recording seed, so the sample is uniform over however many windows the corpus yields, needs no second pass and
is the same for every neuron and layer. A second reservoir over token positions feeds the quantile sketch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.activations import native

# (probability, value) grid of the quantile sketch; 0 and 1 are the exact min and max.
QUANTILE_PROBABILITIES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
STATS_COLUMNS = ("count", "mean", "std", "min", "max", "fraction_positive")


@dataclass(frozen=True)
class LayerSummary:
    """One layer's recorded arrays (numpy), in the layout the record store keeps on disk."""

    top_window_ids: np.ndarray
    """int64 [neurons, k]: window ids by descending max activation."""
    top_activations: np.ndarray
    """float32 [neurons, k, positions]: each neuron's activations on its top windows."""
    random_activations: np.ndarray
    """float32 [neurons, random_k, positions]: activations on the shared random windows (store order)."""
    stats: np.ndarray
    """float64 [neurons, len(STATS_COLUMNS)]: count, mean, std, min, max, fraction_positive."""
    quantiles: np.ndarray
    """float32 [neurons, len(QUANTILE_PROBABILITIES)]: token-activation quantiles."""
    bottom_window_ids: np.ndarray | None = None
    """int64 [neurons, k]: window ids by ascending min activation (polarity both only)."""
    bottom_activations: np.ndarray | None = None
    """float32 [neurons, k, positions]: activations on the bottom windows (polarity both only)."""


@dataclass(frozen=True)
class BatchPicks:
    """One batch's sampling decisions, shared by every layer."""

    first_window_id: int
    """Window id of the batch's first window."""
    size: int
    """Windows in the batch."""
    random_offsets: np.ndarray
    """Batch offsets of windows entering the random sample."""
    random_slots: np.ndarray
    """Their reservoir slots."""
    token_offsets: np.ndarray
    """Flat offsets (window * positions + position) of tokens entering the quantile sample."""
    token_slots: np.ndarray
    """Their reservoir slots."""


class Reservoir:
    """Seeded reservoir sampling over a stream of items; says which arriving item replaces which slot."""

    def __init__(self, size: int, generator: np.random.Generator) -> None:
        self.size = size
        self.generator = generator
        self.items = np.full(size, -1, dtype=np.int64)
        self.seen = 0

    def offer(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Take the next `count` items; returns (offsets within them, slots) of the ones to store, one per slot."""
        # One uniform draw per item keeps the sample independent of how the stream is batched.
        draws = self.generator.random(count)
        indices = self.seen + np.arange(count, dtype=np.int64)
        self.seen += count
        slots = np.where(indices < self.size, indices, np.floor(draws * (indices + 1)).astype(np.int64))
        chosen = np.nonzero(slots < self.size)[0]
        if chosen.size == 0:
            return chosen, chosen
        # Within one batch a later item replaces an earlier one in the same slot, as sequential sampling would.
        reversed_slots = slots[chosen][::-1]
        _, first = np.unique(reversed_slots, return_index=True)
        keep = chosen[::-1][first]
        self.items[slots[keep]] = indices[keep]
        return keep, slots[keep]

    @property
    def filled(self) -> int:
        """Slots holding an item."""
        return min(self.seen, self.size)


class TopK:
    """Per neuron, the k best-scoring windows so far, their ids and the neuron's activations on them."""

    def __init__(self, neurons: int, k: int, positions: int, device: Any) -> None:
        import torch

        self.k = k
        self.scores = torch.full((neurons, k), float("-inf"), device=device)
        self.window_ids = torch.full((neurons, k), -1, dtype=torch.long, device=device)
        # Activation rows live in fixed slots; `slots` maps sorted rank -> slot so entering windows overwrite
        # only the rows of windows that left.
        self.slots = torch.arange(k, device=device).expand(neurons, k).clone()
        self.activations = torch.zeros((neurons, k, positions), device=device)

    def update(self, scores: Any, activations: Any, first_window_id: int) -> None:
        """Merge a batch: scores [batch, neurons] (higher is better), activations [batch, positions, neurons]."""
        import torch

        # Only neurons where some window beats the current k-th score can change (an equal score loses to the
        # earlier window already listed); late in a long recording that is a small fraction of them.
        beats = scores.T > self.scores[:, -1:]
        rows = beats.any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        every_row = rows.numel() == beats.shape[0]
        subset = slice(None) if every_row else rows
        old_scores, old_ids, old_slots = self.scores[subset], self.window_ids[subset], self.slots[subset]
        k = self.k
        candidates = torch.cat([old_scores, scores.T[subset]], dim=1)
        # Stable sort: the kept list comes first and is itself sorted with earlier windows first among ties,
        # and batch windows follow in id order, so ties always resolve to the earlier window.
        order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, :k]
        entering = order >= k
        old_rank = order.clamp(max=k - 1)
        batch_offset = order - k
        new_ids = torch.where(entering, batch_offset + first_window_id, old_ids.gather(1, old_rank))
        # Kept entries are a prefix of the old sorted list, so the slots they vacate are slots[kept:].
        kept = k - entering.sum(dim=1, keepdim=True)
        rank_among_new = entering.cumsum(dim=1) - 1
        free = old_slots.gather(1, (kept + rank_among_new).clamp(0, k - 1))
        new_slots = torch.where(entering, free, old_slots.gather(1, old_rank))
        self.scores[subset] = candidates.gather(1, order)
        self.window_ids[subset] = new_ids
        self.slots[subset] = new_slots
        local_row, position = entering.nonzero(as_tuple=True)
        neuron_index = local_row if every_row else rows[local_row]
        entering_rows = activations[batch_offset[local_row, position], :, neuron_index]
        # index_copy_ on the flattened [neuron * k + slot, position] view copies whole rows; a two-index
        # assignment computes an offset per element and was the costliest step of the merge.
        flat_index = neuron_index * k + new_slots[local_row, position]
        self.activations.view(-1, self.activations.shape[-1]).index_copy_(0, flat_index, entering_rows)

    def lists(self) -> "native.TopLists":
        """The state, for fold.c to merge into in place."""
        return native.TopLists(scores=self.scores, window_ids=self.window_ids, slots=self.slots, rows=self.activations)

    def result(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(window ids [neurons, count], activations [neurons, count, positions]) in rank order."""
        import torch

        rows = torch.arange(self.slots.shape[0], device=self.slots.device)[:, None]
        ordered = self.activations[rows, self.slots[:, :count]]
        return self.window_ids[:, :count].cpu().numpy(), ordered.cpu().numpy()


class Scratch:
    """A ones vector and float32 scratch tensors shaped like one batch of one layer, shared by all layers."""

    def __init__(self) -> None:
        self._ones: Any = None
        self._buffer: Any = None
        self._converted: Any = None

    def buffers(self, activations: Any) -> tuple[Any, Any]:
        """(ones [positions], scratch [batch, positions, neurons]) matching `activations`."""
        import torch

        if self._buffer is None or self._buffer.shape != activations.shape:
            self._buffer = torch.empty(activations.shape, device=activations.device)
            self._ones = torch.ones(activations.shape[1], device=activations.device)
        return self._ones, self._buffer

    def as_float32(self, activations: Any) -> Any:
        """`activations` itself when float32, else a float32 copy in a buffer reused across layers and batches.

        A fresh 10 MB tensor per layer and batch costs page faults on every allocation (glibc hands large blocks
        back to the kernel); with a bfloat16 model this copy was a fifth of the recorder's overhead.
        """
        import torch

        if activations.dtype == torch.float32:
            return activations
        if self._converted is None or self._converted.shape != activations.shape:
            self._converted = torch.empty(activations.shape, device=activations.device)
        return self._converted.copy_(activations)


class LayerAccumulator:
    """Everything recorded for one layer, updated batch by batch."""

    def __init__(self, neurons: int, *, positions: int, top_k: int, random_k: int, quantile_tokens: int,
                 both: bool, device: Any, scratch: Scratch, use_kernel: bool = True) -> None:
        import torch

        self.top = TopK(neurons, top_k, positions, device)
        self.bottom = TopK(neurons, top_k, positions, device) if both else None
        self.random = torch.zeros((random_k, positions, neurons), device=device)
        self.token_sample = torch.zeros((quantile_tokens, neurons), device=device)
        self.total = torch.zeros(neurons, dtype=torch.float64, device=device)
        self.total_squares = torch.zeros(neurons, dtype=torch.float64, device=device)
        self.positives = torch.zeros(neurons, dtype=torch.float64, device=device)
        self.scratch = scratch
        self.use_kernel = use_kernel
        self.minimum = torch.full((neurons,), float("inf"), device=device)
        self.maximum = torch.full((neurons,), float("-inf"), device=device)
        self.count = 0

    def update(self, activations: Any, picks: "BatchPicks", *, parts: int = 1) -> None:
        """Fold in activations [batch, positions, neurons] (any float dtype; a strided view is fine) of one batch;
        `parts` threads share the CPU kernel's work."""
        import torch

        if self.uses_kernel(activations):
            self._update_native(activations, picks, parts)
            return
        # Extremes are exact in any dtype, and reading the narrow dtype moves half the bytes.
        window_max = activations.amax(dim=1).float()
        window_min = activations.amin(dim=1).float()
        activations = self.scratch.as_float32(activations)
        # Sums over positions as a product with a ones vector: BLAS reads the data once, several times faster
        # than a reduction over the middle dimension. One reused float scratch buffer holds x*x and then the
        # indicator x > 0 (fresh 10 MB temporaries cost page faults; a bool tensor would need a slow cast).
        ones, scratch = self.scratch.buffers(activations)
        self.total += (ones @ activations).sum(dim=0, dtype=torch.float64)
        squares = torch.mul(activations, activations, out=scratch)
        self.total_squares += (ones @ squares).sum(dim=0, dtype=torch.float64)
        self.positives += (ones @ torch.gt(activations, 0, out=scratch)).sum(dim=0, dtype=torch.float64)
        self.minimum = torch.minimum(self.minimum, window_min.amin(dim=0))
        self.maximum = torch.maximum(self.maximum, window_max.amax(dim=0))
        self.count += activations.shape[0] * activations.shape[1]
        self.top.update(window_max, activations, picks.first_window_id)
        if self.bottom is not None:
            self.bottom.update(-window_min, activations, picks.first_window_id)
        self._sample(activations, picks)

    def uses_kernel(self, activations: Any) -> bool:
        """True when `update` folds these activations with fold.c."""
        return self.use_kernel and native.supports(activations)

    def _update_native(self, activations: Any, picks: "BatchPicks", parts: int) -> None:
        # One read of the layer for the totals and extremes; only rows entering a top-k list are copied (fold.c).
        totals = native.Totals(total=self.total, total_squares=self.total_squares, positives=self.positives,
                               minimum=self.minimum, maximum=self.maximum)
        samples = native.Samples(window_offsets=picks.random_offsets, window_slots=picks.random_slots,
                                 random=self.random, token_offsets=picks.token_offsets,
                                 token_slots=picks.token_slots, token_sample=self.token_sample)
        native.record_layer(activations, totals, self.top.lists(), None if self.bottom is None else self.bottom.lists(),
                            samples, first_window_id=picks.first_window_id, parts=parts)
        self.count += activations.shape[0] * activations.shape[1]

    def _sample(self, activations: Any, picks: "BatchPicks") -> None:
        import torch

        device = activations.device
        if picks.random_slots.size:
            self.random[torch.as_tensor(picks.random_slots, device=device)] = \
                activations[torch.as_tensor(picks.random_offsets, device=device)]
        if picks.token_slots.size:
            positions = activations.shape[1]
            offsets = torch.as_tensor(picks.token_offsets, device=device)
            self.token_sample[torch.as_tensor(picks.token_slots, device=device)] = \
                activations[offsets // positions, offsets % positions]

    def summary(self, windows: int, random_order: np.ndarray, sampled_tokens: int) -> LayerSummary:
        """The layer's arrays; `random_order` lists reservoir slots in store order."""
        import torch

        count = min(self.top.k, windows)
        top_ids, top_acts = self.top.result(count)
        mean = self.total / self.count
        variance = (self.total_squares / self.count - mean.square()).clamp(min=0)
        stats = torch.stack([torch.full_like(mean, self.count), mean, variance.sqrt(), self.minimum.double(),
                             self.maximum.double(), self.positives / self.count], dim=1)
        picked = self.random[torch.as_tensor(random_order, device=self.random.device)]
        samples, positions, neurons = picked.shape
        # [sample, position, neuron] -> [neuron, sample, position] as one 2-D transpose (fast) of the flat rows.
        random = picked.reshape(samples * positions, neurons).T.contiguous().reshape(neurons, samples, positions)
        bottom_ids = bottom_acts = None
        if self.bottom is not None:
            bottom_ids, bottom_acts = self.bottom.result(count)
        return LayerSummary(
            top_window_ids=top_ids, top_activations=top_acts, random_activations=random.cpu().numpy(),
            stats=stats.cpu().numpy(), quantiles=self._quantiles(sampled_tokens), bottom_window_ids=bottom_ids,
            bottom_activations=bottom_acts)

    def _quantiles(self, sampled_tokens: int) -> np.ndarray:
        # numpy sorts contiguous rows an order of magnitude faster than torch does on CPU.
        values = np.sort(self.token_sample[:sampled_tokens].T.contiguous().cpu().numpy(), axis=1)
        position = np.asarray(QUANTILE_PROBABILITIES) * (values.shape[1] - 1)
        below = np.floor(position).astype(np.int64)
        above = np.ceil(position).astype(np.int64)
        weight = (position - below).astype(np.float32)
        quantiles = values[:, below] * (1 - weight) + values[:, above] * weight
        quantiles[:, 0] = self.minimum.cpu().numpy()
        quantiles[:, -1] = self.maximum.cpu().numpy()
        return quantiles.astype(np.float32)


class RecordingAccumulator:
    """Streams batches of several layers' activations into per-layer summaries with shared window sampling."""

    layer_class: type[LayerAccumulator] = LayerAccumulator
    """What accumulates one layer (a shard of a recording keeps more: activations/shards.py)."""

    def __init__(self, neurons_per_layer: Mapping[int, int], *, positions: int, top_k: int, random_k: int,
                 quantile_tokens: int, both: bool, seed: int, device: Any = "cpu", use_kernel: bool = True) -> None:
        """`use_kernel`: fold CPU batches with fold.c when it builds (False: torch operations only, for comparison)."""
        window_stream, token_stream = np.random.SeedSequence(seed).spawn(2)
        self.positions = positions
        self.window_reservoir = Reservoir(random_k, np.random.Generator(np.random.PCG64(window_stream)))
        self.token_reservoir = Reservoir(quantile_tokens, np.random.Generator(np.random.PCG64(token_stream)))
        scratch = Scratch()
        self.layers = {layer: self.layer_class(neurons, positions=positions, top_k=top_k, random_k=random_k,
                                               quantile_tokens=quantile_tokens, both=both, device=device,
                                               scratch=scratch, use_kernel=use_kernel)
                       for layer, neurons in neurons_per_layer.items()}
        self.windows = 0

    def begin_batch(self, batch_size: int) -> "BatchPicks":
        """Draw the batch's random-sample and quantile-sample decisions (shared by every layer)."""
        random_offsets, random_slots = self.window_reservoir.offer(batch_size)
        token_offsets, token_slots = self.token_reservoir.offer(batch_size * self.positions)
        return BatchPicks(first_window_id=self.windows, size=batch_size, random_offsets=random_offsets,
                          random_slots=random_slots, token_offsets=token_offsets, token_slots=token_slots)

    def add_layer(self, layer: int, activations: Any, picks: "BatchPicks") -> None:
        """Fold in one layer's activations [batch, positions, neurons] (any float dtype) for the current batch."""
        import torch

        accumulator = self.layers[layer]
        if activations.device.type != "cpu":
            accumulator.update(activations, picks)
            return
        threads = torch.get_num_threads()
        if accumulator.uses_kernel(activations):
            # fold.c splits its work by neuron over the forward pass's own OpenMP threads.
            accumulator.update(activations, picks, parts=threads)
            return
        # The torch bookkeeping is many small memory-bound ops: extra threads add little, and on a busy CPU their
        # OpenMP barriers stall on descheduled threads (measured 0.63 vs 0.83 of bare-forward throughput on a
        # loaded 2-core machine). A quarter of the forward pass's threads keeps memory bandwidth saturated.
        torch.set_num_threads(max(1, threads // 4))
        try:
            accumulator.update(activations, picks)
        finally:
            torch.set_num_threads(threads)

    def end_batch(self, picks: "BatchPicks") -> None:
        """Close the batch: its windows now count as recorded."""
        self.windows = picks.first_window_id + picks.size

    def add(self, activations: Mapping[int, Any]) -> None:
        """Fold in one batch of every layer: {layer: tensor [batch, positions, neurons]}."""
        picks = self.begin_batch(next(iter(activations.values())).shape[0])
        for layer in self.layers:
            self.add_layer(layer, activations[layer], picks)
        self.end_batch(picks)

    def random_window_ids(self) -> np.ndarray:
        """The random sample's window ids, ascending (the store order)."""
        filled = self.window_reservoir.filled
        return np.sort(self.window_reservoir.items[:filled], kind="stable")

    def pop_layer(self, layer: int) -> LayerSummary:
        """One layer's arrays; the layer's accumulator is released (summarise layers one at a time)."""
        if self.windows == 0:
            raise ValueError("no windows were recorded")
        filled = self.window_reservoir.filled
        random_order = np.argsort(self.window_reservoir.items[:filled], kind="stable")
        return self.layers.pop(layer).summary(self.windows, random_order, self.token_reservoir.filled)

    def has_nan(self) -> bool:
        """True when some activation seen so far was NaN or infinite (either poisons the running sums: the sum of
        squares stays non-finite once one is seen)."""
        return any(not bool(accumulator.total_squares.isfinite().all()) for accumulator in self.layers.values())
