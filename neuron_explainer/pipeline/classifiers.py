"""The run's detection and fuzzing scorers (`run --scorer`): which ones, their config keys and what is done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import config_key
from neuron_explainer.explain import SplitConfig
from neuron_explainer.scoring import SCORERS, Scorer, ScoreResources
from neuron_explainer.scoring_llm import ScorerKind


def scorer_kinds(names: Sequence[str]) -> list[ScorerKind]:
    """The scorers a configured list names (UserError naming the choices); at least one."""
    kinds = []
    for name in names:
        try:
            kinds.append(ScorerKind(name))
        except ValueError:
            choices = ", ".join(kind.value for kind in ScorerKind)
            raise UserError(f"unknown scorer {name!r}: choose from {choices}") from None
    if not kinds:
        raise UserError("--scorer names no scorer: use simulation, detection, fuzzing or a comma list of them")
    return kinds


@dataclass
class ClassifierJob:
    """One detection or fuzzing scorer of a run and what it has already stored per explanation key."""

    scorer: Scorer
    """The scorer (from the scoring registry)."""
    key: str
    """Its config key (with the explanation's own key it identifies one stored score)."""
    done: dict[str, set[NeuronId]] = field(default_factory=dict)
    """Explanation config key -> neurons already scored (or failed and not retried) by this scorer."""


def classifier_jobs(names: Sequence[str], resources: ScoreResources, *, manifest_hash: str,
                    split: SplitConfig) -> list[ClassifierJob]:
    """A job per configured classifier scorer (simulation is the pipeline's own scorer, not one of these)."""
    jobs = []
    for kind in scorer_kinds(names):
        if kind is ScorerKind.SIMULATION:
            continue
        scorer = SCORERS.get(kind.value)(resources)
        identity = scorer.identity()
        key = config_key("classifier-score", manifest_hash=manifest_hash, scorer=identity.kind,
                         backend=identity.backend, model=identity.model, prompt_hash=identity.prompt_hash,
                         split=split.as_dict(), parameters=identity.parameters)
        jobs.append(ClassifierJob(scorer=scorer, key=key))
    return jobs
