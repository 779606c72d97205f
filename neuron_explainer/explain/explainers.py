"""The built-in explainers behind the `Explainer` interface: token-pairs (LLM), ngram (LLM-free) and SASC."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.prompts import load_prompt_files
from neuron_explainer.core.registry import Needs
from neuron_explainer.explain.api import ExplainConfig, explain_neuron
from neuron_explainer.explain.base import Explainer, ExplainerIdentity, ExplainerSettings, ExplainResources
from neuron_explainer.explain.ngrams import (NGRAM_EXPLANATION_DEFAULTS, NeuronNgrams, NgramConfig, NgramMode,
                                             explain_ngram, in_context_ngrams_for_record)
from neuron_explainer.explain.sasc import SascBatcher, SascConfig, sasc_prompt_files
from neuron_explainer.explain.types import Explanation


class TokenPairsExplainer(Explainer):
    """Shows an LLM the neuron's top windows as (token, activation) pairs and asks for one phrase."""

    name = "token-pairs"
    needs = Needs(llm=True)

    def __init__(self, settings: ExplainerSettings, resources: ExplainResources) -> None:
        super().__init__(settings, resources)
        self.backend = resources.llm()
        self.config = ExplainConfig(split=settings.split, polarity=settings.polarity, candidates=settings.candidates,
                                    with_weights=settings.with_weights)

    def identity(self) -> ExplainerIdentity:
        config = self.config
        parameters = config.identity_parameters()
        if config.candidates > 1:
            # Best-of-n is ranked by simulation on the calibrate split, so the ranker is part of the work.
            parameters["ranker"] = self.resources.ranker_identity()
        return ExplainerIdentity(parameters=parameters, backend=self.backend.name, model=self.backend.model,
                                 prompt_hash=load_prompt_files(config.prompt_files).hash)

    async def explain(self, record: NeuronRecord) -> Explanation | Failure:
        ranker = self.resources.ranker(record, self.config.polarity) if self.config.candidates > 1 else None
        view = self.resources.weight_view(record.neuron) if self.config.with_weights else None
        return await explain_neuron(record, self.backend, config=self.config, ranker=ranker, weight_view=view)


def ngram_source(settings: ExplainerSettings, resources: ExplainResources,
                 config: NgramConfig) -> Callable[[NeuronRecord], Awaitable[NeuronNgrams]]:
    """Where a neuron's n-grams come from: its own explain windows (in-context, free) or the cached isolated sweep."""

    async def ngrams_for(record: NeuronRecord) -> NeuronNgrams:
        if settings.ngram_mode is NgramMode.IN_CONTEXT:
            return in_context_ngrams_for_record(record, split=settings.split, polarity=settings.polarity,
                                                config=config)
        layer_responses = await resources.isolated_ngrams(record.neuron.layer, config)
        return layer_responses.for_neuron(record.neuron.neuron, top_k=config.top_k, polarity=settings.polarity)

    return ngrams_for


class NgramExplainer(Explainer):
    """The LLM-free baseline: the neuron's strongest n-grams, quoted."""

    name = "ngram"

    def __init__(self, settings: ExplainerSettings, resources: ExplainResources) -> None:
        super().__init__(settings, resources)
        self.ngram_config = NgramConfig()
        self.ngrams_for = ngram_source(settings, resources, self.ngram_config)

    def identity(self) -> ExplainerIdentity:
        return ExplainerIdentity(parameters={**self.settings.split.as_dict(), **self.ngram_config.identity(),
                                             "mode": self.settings.ngram_mode.value, **NGRAM_EXPLANATION_DEFAULTS})

    async def explain(self, record: NeuronRecord) -> Explanation | Failure:
        return explain_ngram(await self.ngrams_for(record), split_seed=self.settings.split.seed)


class SascExplainer(Explainer):
    """SASC: an LLM summarises the top n-grams into themes; the subject model reads synthetic text to pick one."""

    name = "sasc"
    needs = Needs(llm=True, subject=True)

    def __init__(self, settings: ExplainerSettings, resources: ExplainResources) -> None:
        super().__init__(settings, resources)
        self.backend = resources.llm()
        self.ngram_config = NgramConfig()
        self.sasc_config = SascConfig(seed=settings.split.seed)
        self.ngrams_for = ngram_source(settings, resources, self.ngram_config)
        self._batcher: SascBatcher | None = None

    def identity(self) -> ExplainerIdentity:
        return ExplainerIdentity(
            parameters={**self.settings.split.as_dict(), **self.ngram_config.identity(),
                        "mode": self.settings.ngram_mode.value, **self.sasc_config.as_dict()},
            backend=self.backend.name, model=self.backend.model, prompt_hash=sasc_prompt_files().hash)

    async def explain(self, record: NeuronRecord) -> Explanation | Failure:
        ngrams = await self.ngrams_for(record)
        if self._batcher is None:
            # Neurons explained concurrently share LLM batches and subject passes (same results, fewer calls).
            self._batcher = SascBatcher(self.resources.subject(), self.backend, config=self.sasc_config,
                                        split_seed=self.settings.split.seed, on_step=self._report)
        return await self._batcher.explain(ngrams)

    def _report(self, phase: str, neurons: int, items: int) -> None:
        self.resources.report_activity(f"sasc {phase}: {neurons} neuron(s), {items} item(s)")
