"""One `ExplainerJob` per (explainer, polarity) of a run: its config key and how it explains one neuron."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from neuron_explainer.activations import NeuronRecord
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.prompts import load_prompt_files
from neuron_explainer.db import explanation_config_key
from neuron_explainer.explain import (ExplainConfig, ExplainerKind, Explanation, NeuronNgrams, NgramConfig, NgramMode,
                                      Polarity, SascConfig, explain_neuron, explain_ngram, explain_sasc)
from neuron_explainer.explain.ngrams import NGRAM_EXPLANATION_DEFAULTS, in_context_ngrams_for_record
from neuron_explainer.explain.sasc import sasc_prompt_files
from neuron_explainer.explain.token_pairs import PROMPT_FILES as TOKEN_PAIR_PROMPTS
from neuron_explainer.scoring import ScoreConfig, calibrate_ranker
from neuron_explainer.simulate import Simulator

if TYPE_CHECKING:
    from neuron_explainer.pipeline.run import Pipeline

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
    texts: dict[NeuronId, str] = field(default_factory=dict)
    """Every stored explanation text under this key, for the shuffled baseline."""

    def shuffled_text(self, neuron: NeuronId) -> str | None:
        """Another neuron's explanation (seeded by the neuron id), or None when there is no other."""
        others = sorted(other for other in self.texts if other != neuron)
        if not others:
            return None
        return self.texts[random.Random(f"{neuron}").choice(others)]


def make_explainer_jobs(pipeline: Pipeline, simulator: Simulator) -> list[ExplainerJob]:
    """Jobs for every configured explainer and recorded polarity."""
    config = pipeline.config
    polarities = [Polarity.POSITIVE]
    if pipeline.store.manifest.polarity == "both" and config.polarity == "both":
        polarities.append(Polarity.NEGATIVE)
    jobs = []
    for name in config.explainers:
        method = explainer_kind(name)
        for polarity in polarities:
            jobs.append(_job(pipeline, simulator, method, polarity))
    return jobs


def explainer_kind(name: str) -> ExplainerKind:
    """The explainer a configured name means (UserError naming the choices)."""
    try:
        return ExplainerKind(name)
    except ValueError:
        names = ", ".join(kind.value for kind in ExplainerKind)
        raise UserError(f"unknown explainer {name!r}: choose one of {names}") from None


def _job(pipeline: Pipeline, simulator: Simulator, method: ExplainerKind, polarity: Polarity) -> ExplainerJob:
    config = pipeline.config
    split = pipeline.split
    ngram_config = NgramConfig()
    ngram_mode = NgramMode(config.extra.get("ngram_mode", NgramMode.IN_CONTEXT.value))
    backend_spec, model, prompt_hash = "none", "none", "none"
    parameters: dict[str, Any]

    if method is ExplainerKind.TOKEN_PAIRS:
        backend = pipeline.backend(config.llm)
        explain_config = ExplainConfig(split=split, polarity=polarity, candidates=config.candidates)
        backend_spec, model = backend.name, backend.model
        prompt_hash = load_prompt_files(TOKEN_PAIR_PROMPTS).hash
        parameters = {**split.as_dict(), "candidates": config.candidates,
                      "temperature": explain_config.effective_temperature,
                      "max_answer_tokens": explain_config.max_answer_tokens,
                      "nonzero_threshold": explain_config.nonzero_threshold}
        if config.candidates > 1:
            # Best-of-n is ranked by the run's simulator on the calibrate split, so the simulator is part of the work.
            parameters["ranker"] = [simulator.kind.value, simulator.backend_name, simulator.model, simulator.prompt_hash]

        async def explain(record: NeuronRecord) -> Explanation | Failure:
            ranker = (calibrate_ranker(record, simulator, config=ScoreConfig(split=split, polarity=polarity))
                      if config.candidates > 1 else None)
            return await explain_neuron(record, backend, config=explain_config, ranker=ranker)

    elif method is ExplainerKind.NGRAM:
        parameters = {**split.as_dict(), **ngram_config.identity(), "mode": ngram_mode.value,
                      **NGRAM_EXPLANATION_DEFAULTS}
        ngrams_for = _ngram_source(pipeline, ngram_mode, ngram_config, polarity)

        async def explain(record: NeuronRecord) -> Explanation | Failure:
            return explain_ngram(await ngrams_for(record), split_seed=split.seed)

    else:
        backend = pipeline.backend(config.llm)
        sasc_config = SascConfig(seed=split.seed)
        backend_spec, model = backend.name, backend.model
        prompt_hash = sasc_prompt_files().hash
        parameters = {**split.as_dict(), **ngram_config.identity(), "mode": ngram_mode.value,
                      **sasc_config.as_dict()}
        ngrams_for = _ngram_source(pipeline, ngram_mode, ngram_config, polarity)

        async def explain(record: NeuronRecord) -> Explanation | Failure:
            return await explain_sasc(await ngrams_for(record), pipeline.subject(), backend, config=sasc_config,
                                      split_seed=split.seed)

    manifest = pipeline.store.manifest
    key = explanation_config_key(
        subject_model=manifest.model_id, model_fingerprint=manifest.model_fingerprint,
        manifest_hash=manifest.recording_id, method=method.value, polarity=polarity.value, backend=backend_spec,
        model=model, prompt_hash=prompt_hash, split_seed=split.seed, parameters=parameters)
    return ExplainerJob(method=method, polarity=polarity, key=key, explain=explain)


def _ngram_source(pipeline: Pipeline, mode: NgramMode, ngram_config: NgramConfig,
                  polarity: Polarity) -> Callable[[NeuronRecord], Awaitable[NeuronNgrams]]:
    """Where a neuron's n-grams come from: its own explain windows (in-context, free) or the cached isolated sweep."""

    async def ngrams_for(record: NeuronRecord) -> NeuronNgrams:
        if mode is NgramMode.IN_CONTEXT:
            return in_context_ngrams_for_record(record, split=pipeline.split, polarity=polarity, config=ngram_config)
        layer_responses = await pipeline.isolated_ngrams(record.neuron.layer, ngram_config)
        return layer_responses.for_neuron(record.neuron.neuron, top_k=ngram_config.top_k, polarity=polarity)

    return ngrams_for
