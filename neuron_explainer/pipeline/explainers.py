"""One `ExplainerJob` per (explainer, polarity) of a run: its config key and how it explains one neuron."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from neuron_explainer.activations import Manifest, NeuronRecord, RecordStore
from neuron_explainer.activations.weight_views import require_weight_views
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import explanation_config_key
from neuron_explainer.explain import (ExplainerKind, ExplainerSettings, Explanation, ExplainResources, Polarity,
                                      explainer_class)

ExplainFunction = Callable[[NeuronRecord], Awaitable[Explanation | Failure]]


@dataclass
class ExplainerJob:
    """How a run explains neurons with one explainer on one polarity, and what is already stored for it."""

    method: ExplainerKind
    """The explainer."""
    polarity: Polarity
    """The side explained."""
    key: str
    """Explanation config key: equal keys mean the same explanation work."""
    explain: ExplainFunction
    """Explains one neuron."""
    existing: dict[NeuronId, Explanation] = field(default_factory=dict)
    """Stored explanations still waiting for a score under the run's simulator."""
    done: set[NeuronId] = field(default_factory=set)
    """Neurons with nothing left to do for this job (explained and scored, or failed and not retried)."""


def check_weight_view_inputs(explainers: Sequence[str], store: RecordStore, neurons: Sequence[NeuronId]) -> None:
    """`--explain-with-weights`: a UserError unless a token-pairs explainer runs and the store has weight views of
    every selected layer."""
    if ExplainerKind.TOKEN_PAIRS.value not in explainers:
        raise UserError(f"--explain-with-weights shows weight views to the token-pairs explainer only (explainers: "
                        f"{', '.join(explainers)})")
    require_weight_views(store, {neuron.layer for neuron in neurons})


def make_explainer_jobs(names: Sequence[str], polarities: Sequence[Polarity], settings: ExplainerSettings,
                        resources: ExplainResources, manifest: Manifest) -> list[ExplainerJob]:
    """Jobs for every named explainer and polarity, built from the registry with the run's resources."""
    jobs = []
    for name in names:
        explainer_type = explainer_class(name)
        for polarity in polarities:
            explainer = explainer_type(replace(settings, polarity=polarity), resources)
            identity = explainer.identity()
            key = explanation_config_key(
                subject_model=manifest.model_id, model_fingerprint=manifest.model_fingerprint,
                manifest_hash=manifest.recording_id, method=explainer_type.name, polarity=polarity.value,
                backend=identity.backend, model=identity.model, prompt_hash=identity.prompt_hash,
                split_seed=settings.split.seed, parameters=identity.parameters)
            jobs.append(ExplainerJob(method=ExplainerKind(explainer_type.name), polarity=polarity, key=key,
                                     explain=explainer.explain))
    return jobs
