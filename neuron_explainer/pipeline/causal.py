"""`run --causal`: after scoring, the causal score of every stored score of the selected neurons that lacks one.

One layer at a time, every score of the layer in one batched set of forward passes (causal/runner.py). Resumable
like the rest of the run: scores that already have a causal row are skipped.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.activations import RecordStore
from neuron_explainer.activations.weight_views import check_loadable_model, load_loadable_model
from neuron_explainer.causal import Ablation, CausalRequest, CausalRunner
from neuron_explainer.db import Database
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain import SplitConfig
from neuron_explainer.scoring.correlation import SCORE_SPLITS, LinearMap
from neuron_explainer.simulate import Score
from neuron_explainer.subject.hooks import resolve_hook_point
from neuron_explainer.core.neurons import NeuronId

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CausalSummary:
    """What the causal phase did."""

    scored: int
    """Causal scores written."""
    undefined: int
    """Of those, how many are undefined (ablation changed nothing)."""
    mean: float | None
    """Mean of the defined ones."""
    seconds: float
    """Wall time of the forward passes (model loading excluded)."""
    load_seconds: float
    """Time to load the subject with its LM head."""
    seconds_per_layer: dict[int, float]
    """Forward-pass time per layer."""
    stop_reason: str | None = None
    """The run's limit that stopped the phase early (its pending scores wait for the next run), None if it ran out."""
    left: int = 0
    """Scores left without a causal score because of that stop."""


def check_causal_inputs(store: RecordStore, split: SplitConfig) -> None:
    """Refuse before any work: a store whose model cannot be loaded with an LM head, or a split that leaves no
    windows to calibrate the simulator on (the replacement activations must be in the neuron's units)."""
    manifest = store.manifest
    check_loadable_model(manifest.model_id)
    top_left = manifest.top_k - split.explain_top - split.score_top
    random_left = min(manifest.random_k, manifest.num_windows) - split.score_random
    if split.calibrate_top == 0 and split.calibrate_random == 0 or max(top_left, 0) + max(random_left, 0) <= 0:
        raise UserError("--causal needs calibrated simulations, but the split leaves no calibrate windows "
                        f"({manifest.top_k} top and {manifest.random_k} random windows recorded; lower "
                        "--explain-windows, --score-top-windows or --score-random-windows)")


def causal_requests(store: RecordStore, scores: Sequence[tuple[int, Score]], *,
                    ablation: Ablation) -> list[CausalRequest]:
    """One request per (score id, score): the scored windows with the calibrated simulation in true units."""
    requests = []
    for score_id, score in scores:
        calibration = score.parameters.get("calibration")
        if calibration is None:
            raise UserError(f"the score of {score.neuron} by {score.simulator.value} has no calibration (its split "
                            "had no calibrate windows); --causal needs calibrated simulations")
        mapping = LinearMap(slope=float(calibration["slope"]), intercept=float(calibration["intercept"]))
        # Scores of negative explanations are in negated units (explain/splits.py oriented_record).
        sign = -1.0 if score.parameters.get("polarity") == "negative" else 1.0
        windows = tuple((window.window_id, sign * mapping.apply(window.simulated_activations))
                        for window in score.windows
                        if window.split in SCORE_SPLITS and window.error is None
                        and len(window.simulated_activations) == store.window_length)
        value = store.neuron_stats(score.neuron.layer, score.neuron.neuron).mean if ablation == Ablation.MEAN else 0.0
        requests.append(CausalRequest(score_id, score.neuron, windows, ablation_value=float(value)))
    return requests


def pending_scores(database: Database, store: RecordStore, neurons: Sequence[NeuronId]) -> list[tuple[int, Score]]:
    """Stored scores of these neurons, made from this recording, that have no causal score yet."""
    from neuron_explainer.db.causal import load_causal_scores

    found = []
    for neuron in neurons:
        for detail in database.neuron_details(neuron, model=store.manifest.model_id):
            for stored in detail.explanations:
                if stored.manifest_hash == store.manifest.recording_id:
                    found.extend((item.id, item.score) for item in stored.scores)
    done = load_causal_scores(database, [score_id for score_id, _ in found])
    return [(score_id, score) for score_id, score in found if score_id not in done]


def run_causal(database: Database, store: RecordStore, neurons: Sequence[NeuronId], *, run_id: int | None,
               device: str = "auto", dtype: str = "auto", ablation: Ablation = Ablation.MEAN,
               batch_size: int = 8, seed: int = 0,
               should_stop: Callable[[], str | None] | None = None) -> CausalSummary:
    """Compute and store the causal score of every pending score of `neurons` (see the module docstring).

    `should_stop` (the run's budget: deadline, max-minutes) is asked before each group of `REQUESTS_PER_GROUP`
    scores of a layer; a reason stops the phase with what is stored kept, and the next run does the rest."""
    from neuron_explainer.db.causal import record_causal_scores

    database.flush()
    pending = pending_scores(database, store, neurons)
    requests = causal_requests(store, pending, ablation=ablation)
    if not requests:
        return CausalSummary(0, 0, None, 0.0, 0.0, {})
    started = time.monotonic()
    manifest = store.manifest
    loaded = load_loadable_model(manifest.model_id, device=device, dtype=dtype)
    if loaded.fingerprint != manifest.model_fingerprint:
        raise UserError(f"the weights of {manifest.model_id!r} changed since {store.path} was recorded; "
                        "--causal needs the recorded model")
    hook_point = resolve_hook_point(loaded.model.base_model, hook_template=manifest.hook_point)
    runner = CausalRunner(loaded.model, hook_point, prefix_ids=manifest.tokenizer.get("prefix_token_ids", ()),
                          batch_size=batch_size)
    load_seconds = time.monotonic() - started
    values: list[float] = []
    undefined = 0
    per_layer: dict[int, float] = {}
    tokens: Any = store.token_ids
    stop_reason = None
    scored = 0
    groups = [(layer, group) for layer in sorted({request.neuron.layer for request in requests})
              for group in _groups([request for request in requests if request.neuron.layer == layer])]
    for layer, group in groups:
        if should_stop is not None and (stop_reason := should_stop()) is not None:
            break
        group_started = time.monotonic()
        results = runner.score_layer(layer, group, lambda window_id: np.asarray(tokens[window_id]),
                                     ablation=ablation, seed=seed)
        record_causal_scores(database, results, run_id=run_id)
        per_layer[layer] = round(per_layer.get(layer, 0.0) + time.monotonic() - group_started, 2)
        scored += len(results)
        for result in results.values():
            if math.isnan(result.value):
                undefined += 1
            else:
                values.append(result.value)
        logger.info("causal scores of layer %d: %d in %.1f s", layer, len(results), per_layer[layer])
    return CausalSummary(scored=scored, undefined=undefined, mean=statistics.fmean(values) if values else None,
                         seconds=round(sum(per_layer.values()), 2), load_seconds=round(load_seconds, 2),
                         seconds_per_layer=per_layer, stop_reason=stop_reason, left=len(requests) - scored)


REQUESTS_PER_GROUP = 16
"""Scores run together between two looks at the run's budget: larger groups share more unchanged rows (random
windows are common to all neurons), smaller ones stop closer to a deadline."""


def _groups(requests: list[CausalRequest]) -> list[list[CausalRequest]]:
    return [requests[start:start + REQUESTS_PER_GROUP] for start in range(0, len(requests), REQUESTS_PER_GROUP)]
