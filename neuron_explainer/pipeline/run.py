"""The nightly run: record (or reuse) activations, then explain, simulate and score every selected neuron.

A unit of work is one neuron under one configuration (explainer x polarity, then simulator). Each unit is a
pure function of the record store, the prompts and the backends, and is committed to the database the moment it
finishes, under a config key; so a second run with the same configuration skips it, a crash loses at most the
units in flight, and several processes could share the work (see DESIGN.md, Scale).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import random
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_explainer.activations import RecordConfig, RecordPolarity, RecordStore, record
from neuron_explainer.core.database_url import sqlite_path
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.event_loop import run_async
from neuron_explainer.core.failures import Failure, FailureKind
from neuron_explainer.core.neurons import NeuronId, parse_neuron_spec
from neuron_explainer.db import (Database, DatabaseBatchJournal, ExplanationQuery, RecordingRef, RunStatus,
                                  open_database, score_config_key)
from neuron_explainer.core.units import run_units
from neuron_explainer.explain import ExplainerSettings, Polarity, check_split_groups, explainer_class
from neuron_explainer.llm import CacheMode, ResponseCache, UsageLedger, check_backend, usage_scope
from neuron_explainer.llm.cache import CACHE_SUFFIX
from neuron_explainer.pipeline.classifiers import ClassifierJob, classifier_jobs, scorer_kinds
from neuron_explainer.pipeline.preflight import check_recording_request
from neuron_explainer.pipeline.backend_watch import BackendDown, BackendWatch
from neuron_explainer.pipeline.causal import check_causal_inputs, run_causal
from neuron_explainer.pipeline.config import RunConfig, parse_deadline
from neuron_explainer.pipeline.explainers import ExplainerJob, check_weight_view_inputs, make_explainer_jobs
from neuron_explainer.pipeline.resources import BackendSettings, RunResources
from neuron_explainer.pipeline.units import LocalUnits, SharedUnits, make_units, shares_work
from neuron_explainer.scoring import (LEXICAL_CEILING, SCORERS, ScoreConfig, Scorer, SimulationScorer, donor_assignment,
                                      lexical_ceiling, score_mean)
from neuron_explainer.scoring_llm import ScorerKind
from neuron_explainer.simulate import simulator_needs

logger = logging.getLogger(__name__)

ProgressCallback = Callable[["RunProgress"], None]


@dataclass(frozen=True)
class RunProgress:
    """A snapshot for progress bars."""

    done: int
    """Neurons finished this run (explained and scored, or failed)."""
    total: int
    """Neurons with work to do this run."""
    failed: int
    """Units that ended in a stored failure."""
    cost_usd: float
    """Estimated spend so far."""
    tokens: int
    """Prompt + completion tokens so far."""
    activity: str = ""
    """What a long step is doing now (e.g. SASC's phase), empty when nothing is worth saying."""


@dataclass(frozen=True)
class RunSummary:
    """What a run did; printed at the end and stored with the run."""

    run_id: int
    """Database id of the run."""
    status: str
    """`completed`, `stopped: budget`, `stopped: backend failing`, `stopped: interrupted` or `failed`."""
    records: str
    """The record store used."""
    selected: int
    """Neurons selected."""
    done: int
    """Neurons processed this run."""
    skipped: int
    """Neurons whose every unit was already stored."""
    explained: int
    """Explanations written this run."""
    scored: int
    """Scores written this run."""
    failed: int
    """Failures written this run."""
    prompt_tokens: int
    """Prompt tokens spent this run."""
    completion_tokens: int
    """Completion tokens spent this run."""
    cost_usd: float
    """Estimated spend this run."""
    scores: dict[str, dict[str, Any]]
    """Per polarity: this run's scores (pooled Pearson) as `ScoreMean.as_dict()` plus `median` of the defined ones."""
    shuffled: dict[str, dict[str, Any]]
    """Per polarity: the shuffled baselines this run computed, the same way (empty without baselines)."""
    seconds: float
    """Wall time."""
    stop_reason: str | None = None
    """Which budget stopped the run, or why its backend was given up on, if either happened."""
    failures: tuple[str, ...] = ()
    """One line per failure written this run: the neuron, the method's stage and why, in words."""
    causal: dict[str, Any] | None = None
    """What `--causal` did (pipeline/causal.py CausalSummary), None without it."""
    stored: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per polarity, when the run found nothing to do: the best stored score of each selected neuron, summarised
    like `scores`, so a night that only confirms the database still reports what the database holds."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclass
class _Tally:
    explained: int = 0
    scored: int = 0
    failed: int = 0
    done: int = 0
    scores: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    baselines: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)

    def by_polarity(self, values: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
        """`ScoreMean` and median per polarity of (polarity, value) pairs."""
        found: dict[str, dict[str, Any]] = {}
        for polarity in sorted({polarity for polarity, _ in values}):
            chosen = [value for side, value in values if side == polarity]
            defined = [value for value in chosen if value == value]
            found[polarity] = {**score_mean(chosen).as_dict(),
                               "median": statistics.median(defined) if defined else None}
        return found


def recording_directory(config: RunConfig) -> Path:
    """Where a run keeps the recording its settings describe: one subdirectory per recording configuration."""
    identity = {key: value for key, value in record_config(config).as_dict().items()
                if key not in ("device", "batch_size")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(config.record.model).name}-{config.record.corpus}").strip("-")[:60]
    return Path(config.record.records_root) / f"{slug}-{digest}"


def record_config(config: RunConfig) -> RecordConfig:
    """The recording request a run's settings describe."""
    settings = config.record
    return RecordConfig(model=settings.model, corpus=settings.corpus, layers=settings.layers,
                        window_length=settings.ctx, windows=settings.windows, top_k=settings.top_k,
                        random_k=settings.random, seed=settings.seed, dtype=settings.dtype, device=settings.device,
                        polarity=RecordPolarity(settings.polarity))


def check_store_fits(config: RunConfig, store: RecordStore) -> None:
    """UserError when the run asks for what the store lacks: negative windows, or document groups."""
    if config.record.polarity == "both" and store.manifest.polarity != "both":
        raise UserError(f"--polarity both: the recording {store.path} has no negative windows (recorded with "
                        f"polarity {store.manifest.polarity}); record with --polarity both, or run with --polarity "
                        "positive or auto")
    check_split_groups(config.split_config, has_document_ids=store.has_document_ids, store=store.path)


def ensure_records(config: RunConfig, *, progress: bool = True, night: Any = None) -> RecordStore:
    """Open `config.record.records`, or record into the run's recording directory (reused when its manifest matches;
    `night`: the Ray night whose cluster records it in shards)."""
    if config.record.records is not None:
        return RecordStore.open(config.record.records)
    if config.run.ray is not None:
        from neuron_explainer.pipeline.ray_night import record_on_ray

        summary = record_on_ray(config, record_config(config), recording_directory(config), night)
    else:
        summary = record(record_config(config), recording_directory(config), progress=progress)
    if summary.reused:
        logger.info("reusing recording %s", summary.path)
    return RecordStore.open(summary.path)


def select_neurons(store: RecordStore, config: RunConfig) -> list[NeuronId]:
    """The neurons a run works on: the spec within the recorded layers, then the seeded sample."""
    manifest = store.manifest
    num_layers = max(manifest.num_model_layers, max(store.layers) + 1)
    chosen = parse_neuron_spec(config.explain.neurons, num_layers, store.neurons_per_layer)
    recorded = set(store.layers)
    if config.explain.neurons.strip() == "all":
        chosen = [neuron for neuron in chosen if neuron.layer in recorded]
    missing = sorted({neuron.layer for neuron in chosen} - recorded)
    if missing:
        raise UserError(f"layer {missing[0]} was not recorded in {store.path}; recorded layers: "
                        f"{', '.join(map(str, store.layers))}")
    if config.explain.sample is not None and config.explain.sample < len(chosen):
        chosen = sorted(random.Random(config.record.seed).sample(chosen, config.explain.sample))
    return chosen


class _Budget:
    """Tracks spend and time against the run's limits."""

    def __init__(self, config: RunConfig, ledger: UsageLedger, started: float) -> None:
        self._config = config
        self._ledger = ledger
        self._started = started
        self._deadline = (parse_deadline(config.budget.deadline, now=dt.datetime.now()).timestamp()
                          if config.budget.deadline else None)

    def exceeded(self) -> str | None:
        """Which limit has been reached, or None."""
        totals = self._ledger.totals()
        budget = self._config.budget
        if budget.max_cost is not None and (totals.cost_usd or 0.0) >= budget.max_cost:
            return f"max-cost {budget.max_cost} USD"
        tokens = totals.prompt_tokens + totals.completion_tokens
        if budget.max_tokens is not None and tokens >= budget.max_tokens:
            return f"max-tokens {budget.max_tokens}"
        if budget.max_minutes is not None and time.monotonic() - self._started >= budget.max_minutes * 60:
            return f"max-minutes {budget.max_minutes}"
        if self._deadline is not None and time.time() >= self._deadline:
            return f"deadline {budget.deadline}"
        return None


class Pipeline:
    """One run over one database: wires record store, resources (backends, simulator, subject), explainers,
    scorer and writer."""

    def __init__(self, config: RunConfig, database: Database, store: RecordStore, *,
                 on_progress: ProgressCallback | None = None, subject: Any = None) -> None:
        self.config = config
        self.database = database
        self.store = store
        self.on_progress = on_progress
        self.ledger = UsageLedger()
        self.split = config.split_config
        self.tally = _Tally()
        self.run_id: int | None = None
        self.recording: RecordingRef | None = None
        # A retry or a rescore asks again: a cached answer would fail, or score, exactly the same way.
        fresh = config.run.retry_failed or config.score.rescore
        cache = ResponseCache.for_database(config.run.db, mode=CacheMode.REFRESH if fresh else CacheMode.USE)
        self.resources = RunResources(
            BackendSettings(llm=config.llm.backend, simulator=config.simulate.simulator,
                            simulator_llm=config.llm.simulator_backend, concurrency=config.run.concurrency,
                            rpm=config.llm.rpm, tpm=config.llm.tpm, device=config.record.device,
                            dtype=config.record.dtype, batch=config.llm.batch),
            store, split=self.split, cache=cache, ledger=self.ledger, subject=subject,
            batch_journal=lambda: DatabaseBatchJournal(database.url, legacy_file=cache.path))
        self.resources.on_activity = self._report_progress
        self._total = 0
        self.backend_watch = BackendWatch(config.run.max_consecutive_failures)
        self.backend_down: str | None = None
        """Why the run stopped early because its backend kept failing (None when it did not)."""
        self.simulates = ScorerKind.SIMULATION in scorer_kinds(config.score.scorers)
        self.classifiers: list[ClassifierJob] = []
        self._simulated: dict[str, set[NeuronId]] = {}
        self.make_units = make_units
        """Where the run's units come from (a Ray worker takes them from its driver's queue instead)."""
        self.remote: Any = None
        """A Ray night (pipeline/ray_night.py) that runs the planned units on its workers instead of here."""

    async def aclose(self) -> None:
        """Release backends and the response cache file."""
        await self.resources.aclose()

    # --- the run ---------------------------------------------------------------------------------------------

    def _stored_scores(self, neurons: list[NeuronId]) -> dict[str, dict[str, Any]]:
        """The selection's best stored score per neuron and polarity, from this recording."""
        selected = set(neurons)
        rows = self.database.query(ExplanationQuery(layers=tuple(sorted({neuron.layer for neuron in neurons})),
                                                    limit=None, best_per_neuron=True))
        return self.tally.by_polarity([(row.polarity, row.score) for row in rows if row.neuron in selected
                                       and row.manifest_hash == self.store.manifest.recording_id])

    async def run(self, neurons: list[NeuronId]) -> RunSummary:
        """Process `neurons`; returns the summary (the run row is finished by the caller's context)."""
        started = time.monotonic()
        self.resources.selected_layers = {neuron.layer for neuron in neurons}
        manifest = self.store.manifest
        self.recording = self.database.register_recording(
            model_id=manifest.model_id, fingerprint=manifest.model_fingerprint, path=str(self.store.path.resolve()),
            manifest=dataclasses.asdict(manifest), manifest_hash=manifest.recording_id)
        scorer = SCORERS.get(SimulationScorer.name)(self.resources)
        # `auto` and `both` explain every side the recording has (`both` on a positive-only store was refused).
        polarities = [Polarity.POSITIVE]
        if manifest.polarity == "both" and self.config.record.polarity in ("both", "auto"):
            polarities.append(Polarity.NEGATIVE)
        settings = ExplainerSettings(split=self.split, candidates=self.config.explain.candidates,
                                     ngram_mode=self.config.explain.ngram_mode,
                                     with_weights=self.config.explain.with_weights)
        jobs = make_explainer_jobs(self.config.explain.explainers, polarities, settings, self.resources, manifest)
        score_keys = {job.key: self._score_key(scorer) for job in jobs}
        self.classifiers = classifier_jobs(self.config.score.scorers, self.resources,
                                           manifest_hash=manifest.recording_id, split=self.split)
        units = self.make_units(self.database, unit_keys=[(job.key, score_keys[job.key]) for job in jobs],
                                selection=f"{self.config.explain.neurons}|{self.config.explain.sample}|"
                                          f"{self.config.record.seed}|{self.config.run.limit}",
                                mode=f"rescore={self.config.score.rescore}|retry={self.config.run.retry_failed}",
                                run_id=self.run_id, lease_s=self.config.run.lease_seconds,
                                on_takeover=lambda neuron: self._reload(neuron, jobs))
        try:
            todo = self._plan(neurons, jobs, score_keys)
            skipped = len(neurons) - len(todo)
            logger.info("%d neurons selected, %d already done, %d to do", len(neurons), skipped, len(todo))
            if self.config.run.limit is not None:
                todo = todo[:self.config.run.limit]
            budget = _Budget(self.config, self.ledger, started)
            units.offer(todo)
            # Says "0/N" from here on instead of "preparing": the first unit can take minutes on a local model.
            self._total = len(todo)
            self._report_progress("")
            if self.remote is not None:
                stop_reason = await self.remote.schedule(self, todo, neurons)
            else:
                stop_reason = await self._schedule(units, len(todo), jobs, scorer, score_keys, budget)
        finally:
            units.close()
        self.database.flush()
        if self.config.score.baselines and stop_reason is None:
            stop_reason = await self._fill_baselines(neurons, jobs, scorer, score_keys, budget)
            self.database.flush()
        totals = self.ledger.totals()
        status = (RunStatus.STOPPED_BACKEND if self.backend_down else RunStatus.STOPPED_BUDGET if stop_reason
                  else RunStatus.COMPLETED)
        stored = self._stored_scores(neurons) if not todo else {}
        return RunSummary(
            stored=stored, run_id=self.run_id or 0, status=status.value, records=str(self.store.path), selected=len(neurons),
            done=self.tally.done, skipped=skipped, explained=self.tally.explained, scored=self.tally.scored,
            failed=self.tally.failed, prompt_tokens=totals.prompt_tokens, completion_tokens=totals.completion_tokens,
            cost_usd=round(totals.cost_usd or 0.0, 6), scores=self.tally.by_polarity(self.tally.scores),
            shuffled=self.tally.by_polarity(self.tally.baselines), seconds=round(time.monotonic() - started, 2), stop_reason=stop_reason,
            failures=tuple(self.tally.failures))

    def _score_key(self, scorer: Scorer) -> str:
        identity = scorer.identity()
        return score_config_key(
            manifest_hash=self.store.manifest.recording_id, simulator=identity.kind, backend=identity.backend,
            model=identity.model, prompt_hash=identity.prompt_hash, split_seed=self.split.seed,
            parameters={**self.split.as_dict(), **identity.parameters, "baselines": self.config.score.baselines})

    def _plan(self, neurons: list[NeuronId], jobs: list[ExplainerJob],
              score_keys: dict[str, str]) -> list[NeuronId]:
        """Fill each job's `done` and `existing`; return the neurons with at least one unit left."""
        self.database.flush()
        selected = set(neurons)
        pending: set[NeuronId] = set()
        for job in jobs:
            stored = self.database.load_explanations(job.key)
            scored = set() if self.config.score.rescore else self.database.scored_neurons(
                explanation_key=job.key, score_key=score_keys[job.key])
            failed: set[NeuronId] = set()
            score_failed: set[NeuronId] = set()
            if not self.config.run.retry_failed:
                # Transient failures (the backend's fault) are always retried; permanent ones wait for --retry-failed.
                permanent = FailureKind.PERMANENT
                failed = self.database.failed_neurons(stage="explain", config_key=job.key, kind=permanent) - set(stored)
                for stage in ("score", "simulate"):
                    score_failed |= self.database.failed_neurons(stage=stage, config_key=score_keys[job.key],
                                                                  kind=permanent)
            complete = set(stored)
            if self.simulates:
                self._simulated[job.key] = scored | score_failed
                complete &= self._simulated[job.key]
            for classifier in self.classifiers:
                # A rescore replaces simulation scores only: a classifier score is kept once per configuration.
                classified = self.database.classified_neurons(explanation_key=job.key, score_key=classifier.key)
                if not self.config.run.retry_failed:
                    classified |= self.database.failed_neurons(stage=classifier.scorer.name,
                                                               config_key=classifier.key, kind=FailureKind.PERMANENT)
                classifier.done[job.key] = classified
                complete &= classified
            job.done = complete | failed
            job.existing = {neuron: stored[neuron] for neuron in (set(stored) - job.done) & selected}
            pending |= selected - job.done
        return sorted(pending)

    def _report_progress(self, activity: str) -> None:
        if self.on_progress is not None:
            totals = self.ledger.totals()
            self.on_progress(RunProgress(done=self.tally.done, total=self._total, failed=self.tally.failed,
                                         cost_usd=totals.cost_usd or 0.0,
                                         tokens=totals.prompt_tokens + totals.completion_tokens, activity=activity))

    def _reload(self, neuron: NeuronId, jobs: list[ExplainerJob]) -> None:
        """A neuron taken over from a worker whose lease expired: use the explanations it committed."""
        for job in jobs:
            stored = self.database.load_explanations(job.key, neurons=[neuron])
            if neuron in stored:
                job.existing[neuron] = stored[neuron]

    async def _schedule(self, units: LocalUnits | SharedUnits, total: int, jobs: list[ExplainerJob],
                        scorer: Scorer, score_keys: dict[str, str], budget: _Budget) -> str | None:
        """Run up to `total` units through the shared runner, each taking the next neuron from `units` (a local
        queue, or leases shared with other workers); stop launching when a budget is reached (in-flight units
        finish)."""
        self._total = total

        def unit() -> Callable[[], Awaitable[bool]]:
            async def run() -> bool:
                neuron = await units.next()
                if neuron is None:
                    return False
                await self._process(neuron, jobs, scorer, score_keys)
                units.finished(neuron)
                return True
            return run

        def finished(processed: bool) -> None:
            if not processed:
                return
            self.tally.done += 1
            self.backend_watch.check()
            self._persist_ledger()
            # A full disk or read-only file stops the night here, not after every neuron has been paid for.
            self.database.check_writes()
            self._report_progress("")

        try:
            summary = await run_units([unit() for _ in range(total)], concurrency=self.config.run.concurrency,
                                      on_result=finished, description="run", progress=False, stop=budget.exceeded)
        except BackendDown as down:
            # run_units cancelled the units in flight: they would only wait out their retries on the same backend.
            self.backend_down = str(down)
            return str(down)
        finally:
            self._persist_ledger()
        return summary.stop_reason

    def _persist_ledger(self) -> None:
        for entry in self.ledger.drain():
            self.database.record_llm_call(entry, run_id=self.run_id, stage=entry.operation)

    async def _process(self, neuron: NeuronId, jobs: list[ExplainerJob], scorer: Scorer,
                       score_keys: dict[str, str]) -> None:
        """Every unit of one neuron; each result is queued for commit as soon as it exists."""
        record_ = self.store.load_neuron(neuron.layer, neuron.neuron)
        assert self.recording is not None
        self.database.record_neuron_stats(self.recording, neuron, record_.stats)
        for job in jobs:
            if neuron in job.done:
                continue
            explanation = job.existing.get(neuron)
            if explanation is None:
                with usage_scope(f"explain:{job.method.value}", str(neuron)):
                    result = await job.explain(record_)
                if isinstance(result, Failure):
                    self._fail(result, job.key, job.method.value)
                    continue
                explanation = result
                self.database.record_explanation(self.recording, explanation, config_key=job.key, run_id=self.run_id)
                self.tally.explained += 1
            if self.simulates and neuron not in self._simulated.get(job.key, set()):
                with usage_scope(f"simulate:{scorer.identity().kind}", str(neuron)):
                    await self._simulate(record_, explanation, job, scorer, score_keys[job.key])
            for classifier in self.classifiers:
                if neuron in classifier.done.get(job.key, set()):
                    continue
                with usage_scope(f"score:{classifier.scorer.name}", str(neuron)):
                    outcome = await classifier.scorer.score(
                        record_, explanation, config=ScoreConfig(split=self.split, polarity=explanation.polarity))
                if isinstance(outcome, Failure):
                    self._fail(outcome, classifier.key, job.method.value)
                    continue
                self.database.record_classifier_score(self.recording, outcome, explanation_key=job.key,
                                                      config_key=classifier.key, run_id=self.run_id)
                self.tally.scored += 1
                self.backend_watch.unit_succeeded()

    async def _simulate(self, record_: Any, explanation: Any, job: ExplainerJob, scorer: Scorer,
                        score_key: str) -> None:
        """Simulate and score one explanation and queue the score (or the failure)."""
        assert self.recording is not None
        config = ScoreConfig(split=self.split, polarity=explanation.polarity)
        score = await scorer.score(record_, explanation, config=config)
        if isinstance(score, Failure):
            self._fail(score, score_key, job.method.value)
            return
        # The lexical ceiling is a lookup on the explain windows, cheap enough for every score, --baselines or not.
        score = dataclasses.replace(score, baselines={**score.baselines,
                                                      LEXICAL_CEILING: lexical_ceiling(record_, config=config)})
        if self.config.score.rescore:
            # Replaced only now that the new score exists: an interrupted rescore loses nothing.
            await asyncio.to_thread(self.database.delete_scores, explanation_key=job.key, score_key=score_key,
                                    neurons=[record_.neuron])
        self.database.record_score(self.recording, score, explanation_key=job.key, config_key=score_key,
                                   run_id=self.run_id)
        self.tally.scored += 1
        self.backend_watch.unit_succeeded()
        self.tally.scores.append((explanation.polarity.value, score.metrics.pearson))

    async def _fill_baselines(self, neurons: list[NeuronId], jobs: list[ExplainerJob], scorer: Scorer,
                              score_keys: dict[str, str], budget: _Budget) -> str | None:
        """Give every stored score of the selected neurons that has no baselines its `shuffled` and `empty` ones.

        Runs once every explanation exists, so the donors are a seeded derangement over the selected neurons
        explained under the job (scoring/baselines.py): every neuron gets a donor, none serves twice. An
        interrupted run leaves some scores without baselines; the next run fills them.
        """
        semaphore = asyncio.Semaphore(max(1, self.config.run.concurrency))
        stop_reason: str | None = None
        for job in jobs:
            explained = self.database.load_explanations(job.key, neurons=neurons)
            donors = donor_assignment(explained, seed=self.split.seed)
            missing = sorted(self.database.scores_without_baselines(explanation_key=job.key,
                                                                    score_key=score_keys[job.key]) & set(explained))

            async def fill(neuron: NeuronId, job: ExplainerJob = job,
                           explained: dict[NeuronId, Any] = explained, donors: dict[NeuronId, NeuronId] = donors
                           ) -> None:
                nonlocal stop_reason
                async with semaphore:
                    if stop_reason is not None or (reason := budget.exceeded()) is not None:
                        stop_reason = stop_reason or reason
                        return
                    record_ = self.store.load_neuron(neuron.layer, neuron.neuron)
                    donor = donors.get(neuron)
                    values = await scorer.baselines(
                        record_, shuffled_explanation=explained[donor].text if donor else None,
                        config=ScoreConfig(split=self.split, polarity=job.polarity))
                    await asyncio.to_thread(self.database.set_score_baselines, explanation_key=job.key,
                                            score_key=score_keys[job.key], neuron=neuron, baselines=values)
                    self.tally.baselines.append((job.polarity.value, values.get("shuffled", float("nan"))))
                    self._persist_ledger()

            await asyncio.gather(*(fill(neuron) for neuron in missing))
        return stop_reason

    def _fail(self, failure: Failure, config_key: str, method: str) -> None:
        self.database.record_failure(failure, config_key=config_key, run_id=self.run_id, recording=self.recording)
        self.tally.failed += 1
        self.tally.failures.append(f"{failure.neuron} {method} ({failure.stage}): {failure.reason}")
        self.backend_watch.unit_failed(failure)


async def _run_then_close(pipeline: Pipeline, neurons: list[NeuronId]) -> RunSummary:
    try:
        return await pipeline.run(neurons)
    finally:
        await pipeline.aclose()


def check_inputs(config: RunConfig) -> None:
    """Check what needs no work: explainer and simulator names, backend specs and API keys, and (with `records`)
    the record store and the neuron selection. A run does this before it creates its database, so a mistyped
    flag costs no model load and leaves nothing behind."""
    if any(explainer_class(name).needs.llm for name in config.explain.explainers):
        check_backend(config.llm.backend)
    kinds = scorer_kinds(config.score.scorers)
    classifies = any(kind is not ScorerKind.SIMULATION for kind in kinds)
    if classifies or (ScorerKind.SIMULATION in kinds and simulator_needs(config.simulate.simulator).llm):
        check_backend(config.llm.simulator_backend or config.llm.backend)
    if config.record.records is not None:
        store = RecordStore.open(config.record.records)
        store.verify()
        check_store_fits(config, store)
        neurons = select_neurons(store, config)
        if config.score.causal:
            check_causal_inputs(store, config.split_config)
        if config.explain.with_weights:
            check_weight_view_inputs(config.explain.explainers, store, neurons)
    else:
        check_recording_request(record_config(config))


def run_pipeline(config: RunConfig, *, progress: bool = True, on_progress: ProgressCallback | None = None,
                 subject: Any = None) -> RunSummary:
    """Run one night: record or reuse, then every unit of work not yet stored. Resumable at any point.

    `subject` stands in for the recording's model where a stage runs it on new text (the planted evaluation's
    in-process subject); None loads the model the recording names, when a stage first needs it."""
    started = time.monotonic()
    check_inputs(config)
    night = None
    if config.run.ray is not None:
        from neuron_explainer.pipeline.ray_night import start_night

        night = start_night(config)  # the workers start while this process opens the database and plans
    created = _new_sqlite_file(config.run.db)
    try:
        return _run_on_database(config, created=created, started=started, progress=progress,
                                on_progress=on_progress, subject=subject, night=night)
    except _RefusedBeforeAnyResult as refused:
        # A user error found only once the run had begun (a backend that cannot do what the simulator needs, ...)
        # leaves nothing behind when the database is the run's own new file and holds no result yet.
        for path in _sqlite_files(created):
            path.unlink(missing_ok=True)
        raise refused.error from None
    finally:
        if night is not None:
            night.close()


class _RefusedBeforeAnyResult(Exception):
    def __init__(self, error: UserError) -> None:
        super().__init__(str(error))
        self.error = error


def _new_sqlite_file(url: str) -> Path | None:
    path = sqlite_path(url)
    return Path(path) if path is not None and not Path(path).exists() else None


def _sqlite_files(database: Path | None) -> list[Path]:
    if database is None:
        return []
    return [database, *(Path(f"{database}{suffix}") for suffix in ("-wal", "-shm", "-journal", CACHE_SUFFIX))]


def _run_on_database(config: RunConfig, *, created: Path | None, started: float, progress: bool,
                     on_progress: ProgressCallback | None, subject: Any, night: Any = None) -> RunSummary:
    with open_database(config.run.db) as database:
        run_id = database.start_run(config=config.as_dict(), shared=shares_work(database))
        status, error, summary = RunStatus.FAILED, None, None
        try:
            store = ensure_records(config, progress=progress, night=night)
            check_store_fits(config, store)
            neurons = select_neurons(store, config)
            if config.score.causal:
                check_causal_inputs(store, config.split_config)
            if config.explain.with_weights:
                check_weight_view_inputs(config.explain.explainers, store, neurons)
            pipeline = Pipeline(config, database, store, on_progress=on_progress, subject=subject)
            pipeline.run_id = run_id
            pipeline.remote = night
            summary = run_async(_run_then_close(pipeline, neurons)) if neurons else None
            if summary is None:
                summary = RunSummary(run_id=run_id, status=RunStatus.COMPLETED.value, records=str(store.path),
                                     selected=0, done=0, skipped=0, explained=0, scored=0, failed=0, prompt_tokens=0,
                                     completion_tokens=0, cost_usd=0.0, scores={}, shuffled={}, seconds=0.0)
            if config.score.causal and summary.status == RunStatus.COMPLETED.value:
                causal = run_causal(database, store, neurons, run_id=run_id, device=config.record.device,
                                    dtype=config.record.dtype, seed=config.split_config.seed,
                                    should_stop=_Budget(config, pipeline.ledger, started).exceeded)
                summary = dataclasses.replace(summary, causal=dataclasses.asdict(causal))
                if causal.stop_reason is not None:
                    summary = dataclasses.replace(summary, status=RunStatus.STOPPED_BUDGET.value,
                                                  stop_reason=f"{causal.stop_reason} ({causal.left} causal scores "
                                                              "left for the next run)")
            status = RunStatus(summary.status)
            # The whole command's time: loading the model and recording count, not only the units of work.
            return dataclasses.replace(summary, seconds=round(time.monotonic() - started, 2))
        except KeyboardInterrupt:
            status, error = RunStatus.INTERRUPTED, "interrupted"
            raise
        except UserError as exc:
            error = str(exc)
            if created is not None and not _holds_results(database):
                raise _RefusedBeforeAnyResult(exc) from None
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            totals = {**(summary.as_dict() if summary is not None else {}),
                      "usage": dataclasses.asdict(database.usage_totals(run_id=run_id))}
            database.finish_run(run_id, status, totals=totals, error=error)


def _holds_results(database: Database) -> bool:
    database.flush()
    counts = database.counts()
    return any(counts[table] for table in ("explanations", "scores", "classifier_scores", "failures", "llm_calls"))
