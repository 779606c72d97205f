"""What a run lends its stages: LLM backends, the simulator, the subject model and the isolated n-gram sweep.

Explainers and scorers get this object, never the pipeline; an evaluation can hand it an in-process subject (the
planted one) instead of the model the recording names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neuron_explainer.activations import NeuronRecord, RecordStore
from neuron_explainer.activations.weight_views import NeuronWeightView, WeightViews, require_weight_views
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain import CandidateRanker, LayerNgramResponses, NgramConfig, Polarity, SplitConfig
from neuron_explainer.llm import LLMBackend, ResponseCache, UsageLedger, make_backend
from neuron_explainer.llm.batch_api import BatchJournal
from neuron_explainer.scoring import ScoreConfig, calibrate_ranker
from neuron_explainer.simulate import Simulator, make_simulator, simulator_needs


@dataclass(frozen=True)
class BackendSettings:
    """How a run builds its LLM backends."""

    llm: str | None
    """Backend spec of the explainer (and, by default, the simulator); None: no LLM (the `score` command without
    --llm: LLM-free simulators only)."""
    simulator: str | None = None
    """Simulator name; None = the best the backend allows."""
    simulator_llm: str | None = None
    """Backend spec of the simulator when it differs from `llm`."""
    concurrency: int | None = None
    """Requests in flight per remote backend."""
    rpm: float | None = None
    """Requests-per-minute limit for API backends."""
    tpm: float | None = None
    """Tokens-per-minute limit for API backends."""
    device: str = "auto"
    """Device of the subject model when it has to be loaded."""
    dtype: str = "auto"
    """Dtype of the subject model when it has to be loaded."""
    batch: bool = False
    """Send remote requests through the OpenAI Batch API (journaled in the results database, so resumable)."""


class RunResources:
    """Everything a run's stages may ask for, each built on first use and shared (a local model loads once)."""

    def __init__(self, settings: BackendSettings, store: RecordStore, *, split: SplitConfig,
                 cache: ResponseCache | None = None, ledger: UsageLedger | None = None, subject: Any = None,
                 batch_journal: Callable[[], BatchJournal] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.split = split
        self.cache = cache
        self.ledger = ledger
        self.selected_layers: set[int] = set()
        """Layers the run works on: one isolated n-gram sweep covers them all."""
        self._subject = subject
        self._batch_journal = batch_journal
        self._backends: dict[str, LLMBackend] = {}
        self._simulator: Simulator | None = None
        self._layer_ngrams: dict[int, LayerNgramResponses] = {}
        self._ngram_lock = asyncio.Lock()
        self._weight_views: WeightViews | None = None
        self.on_activity: Callable[[str], None] | None = None
        """Called with what a long step is doing now (the run's progress callback)."""
        self.make_backend: Callable[..., LLMBackend] = make_backend
        """Builds a spec's backend (a Ray worker's reaches a `local:` model in the night's model actor)."""

    def backend(self, spec: str) -> LLMBackend:
        """One backend object per spec."""
        if spec not in self._backends:
            settings = self.settings
            # Batch ids go to the journal (the results database), so a later run picks up what this one submitted.
            journal = self._batch_journal() if settings.batch and self._batch_journal is not None else None
            self._backends[spec] = self.make_backend(spec, concurrency=settings.concurrency, rpm=settings.rpm,
                                                     tpm=settings.tpm, cache=self.cache, ledger=self.ledger,
                                                     batch_journal=journal)
        return self._backends[spec]

    def llm(self) -> LLMBackend:
        """The explainer backend."""
        return self.backend(_required(self.settings.llm))

    def scoring_llm(self) -> LLMBackend:
        """The backend of scorers that ask an LLM directly (detection, fuzzing): the simulator's."""
        return self.backend(_required(self.settings.simulator_llm or self.settings.llm))

    def simulator(self) -> Simulator:
        """The run's simulator; LLM-free kinds (and every kind when no backend is set) get no backend."""
        if self._simulator is None:
            kind = self.settings.simulator
            spec = self.settings.simulator_llm or self.settings.llm
            backend = self.backend(spec) if spec is not None and simulator_needs(kind).llm else None
            self._simulator = make_simulator(kind, backend)
        return self._simulator

    def ranker(self, record: NeuronRecord, polarity: Polarity) -> CandidateRanker:
        """Best-of-n ranking by the run's simulator on the calibrate split."""
        return calibrate_ranker(record, self.simulator(), config=ScoreConfig(split=self.split, polarity=polarity))

    def ranker_identity(self) -> list[str]:
        """The ranking simulator's kind, backend, model and prompt hash."""
        simulator = self.simulator()
        return [simulator.kind.value, simulator.backend_name, simulator.model, simulator.prompt_hash]

    def subject(self) -> Any:
        """The subject model of the recording, loaded once (unless one was given)."""
        if self._subject is None:
            from neuron_explainer.subject import Subject

            manifest = self.store.manifest
            self._subject = Subject.load(manifest.model_id, device=self.settings.device, dtype=self.settings.dtype,
                                         hook_template=manifest.config.get("hook_template"))
        return self._subject

    async def isolated_ngrams(self, layer: int, config: NgramConfig) -> LayerNgramResponses:
        """Every neuron's response to every corpus n-gram read alone: one cached sweep covering all of the run's
        layers (computed once, off the event loop; later layers come from the same pass)."""
        async with self._ngram_lock:
            if layer not in self._layer_ngrams:
                from neuron_explainer.corpus import open_corpus
                from neuron_explainer.explain import isolated_ngram_responses

                manifest = self.store.manifest
                texts = list(open_corpus(manifest.corpus_spec,
                                         text_field=manifest.config.get("text_field", "text")).documents())
                layers = sorted((self.selected_layers | {layer}) - set(self._layer_ngrams))
                self._layer_ngrams.update(await asyncio.to_thread(
                    isolated_ngram_responses, self.subject(), layers, texts, config, progress=True))
        return self._layer_ngrams[layer]

    def weight_view(self, neuron: NeuronId) -> NeuronWeightView | None:
        """The neuron's weight view from the record store (opened once)."""
        if self._weight_views is None:
            self._weight_views = require_weight_views(self.store, [neuron.layer])
        return self._weight_views.neuron(neuron.layer, neuron.neuron)

    def report_activity(self, activity: str) -> None:
        """Pass a long step's current activity on to the run's progress callback, if any."""
        if self.on_activity is not None:
            self.on_activity(activity)

    async def aclose(self) -> None:
        """Release the backends and the response cache file."""
        for backend in self._backends.values():
            await backend.aclose()
        if self.cache is not None:
            self.cache.close()


def _required(spec: str | None) -> str:
    if spec is None:
        raise UserError("this step needs an LLM backend: give one with --llm")
    return spec
