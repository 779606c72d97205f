"""A night on a Ray cluster (`run --ray [ADDRESS]`): the explain/simulate/score units run in worker actors.

Each worker actor is the ordinary `Pipeline` over the same record store and database, taking neurons one at a time
through the ordinary unit-of-work runner. On PostgreSQL the workers write directly and split the plan with the
leases of db/claims.py, exactly as separate `run` processes do. On SQLite the driver stays the only writer: the
workers take neurons from one queue actor and send their writes back, and the driver commits them. Every worker's
LLM spend goes to one spend actor and its rate-limit buckets live in one limiter actor, so `--max-cost`,
`--max-tokens`, `--rpm` and `--tpm` hold for the whole night, not for each worker; a `local:` model lives in one
model actor per GPU that serves every worker. A night that has to record does so in shards, one Ray task each,
merged exactly (activations/shards.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from neuron_explainer.activations import RecordConfig, RecordSummary
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import Database, RecordingRef, open_database
from neuron_explainer.llm import (LedgerEntry, LLMBackend, UsageLedger, UsageTotals, make_backend,
                                  parse_backend_spec)
from neuron_explainer.llm.limits import TokenBucket, share_buckets
from neuron_explainer.pipeline.config import RunConfig
from neuron_explainer.pipeline.units import shares_work

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'neuron-explainer[ray]'"
"""How to get Ray, said in the one-line error when it is missing."""

_PASSED_ENV = ("NEURON_EXPLAINER_CACHE", "NEURON_EXPLAINER_PRICES", "HF_HUB_OFFLINE", "NEURON_EXPLAINER_DEBUG")
"""Environment variables a worker takes from the driver."""

_POLL_S = 0.2
"""How often the driver collects the workers' writes and progress."""


def import_ray() -> Any:
    """The `ray` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(config: RunConfig) -> None:
    """Attach to the night's Ray cluster (`auto`: the local one, started if none runs); UserError when it cannot be
    reached or the night cannot run on Ray. Checked before the database is opened, so nothing is left behind."""
    address = config.run.ray
    assert address is not None
    if config.llm.batch:
        # Batch API journals are written by the process that submits; Ray workers would each write their own.
        raise UserError("--batch and --ray cannot be combined: run the Batch API night without --ray")
    ray = import_ray()
    if address == "auto":
        if not ray.is_initialized():
            ray.init(log_to_driver=False)
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise UserError(f"--ray {address!r} is not a Ray address: expected auto, HOST:PORT or ray://HOST:PORT")
    # Ray itself retries an unreachable address for minutes; one plain connection attempt answers at once.
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None


def worker_count(config: RunConfig) -> int:
    """Worker actors for a night: `ray_workers`, else one per CPU of the cluster."""
    if config.run.ray_workers:
        return config.run.ray_workers
    return max(1, int(import_ray().cluster_resources().get("CPU", 1)))


def record_on_ray(config: RunConfig, request: RecordConfig, out_dir: Path) -> RecordSummary:
    """Record (or reuse) the night's store in one shard per worker, each a Ray task, merged exactly."""
    from neuron_explainer.activations.shards import ray_shard_runner, record_sharded

    return record_sharded(request, out_dir, shards=worker_count(config), run=ray_shard_runner(request))


# --- actors (plain classes; `ray.remote` makes them actors when a night starts) -------------------------------


class UnitQueue:
    """The driver's plan on SQLite: workers take the next neuron from here, each neuron once."""

    def __init__(self, todo: list[NeuronId]) -> None:
        self._todo = list(reversed(todo))

    def next(self) -> NeuronId | None:
        """The next neuron, or None when none is left."""
        return self._todo.pop() if self._todo else None


class SpendLedger:
    """The night's one account of LLM spend: every worker adds its calls, and every budget check reads the sum."""

    def __init__(self) -> None:
        self._totals = UsageTotals()

    def add(self, entries: list[LedgerEntry]) -> UsageTotals:
        """Add calls; returns the night's totals so far."""
        for entry in entries:
            self._totals = self._totals.add(entry)
        return self._totals

    def totals(self) -> UsageTotals:
        """The night's totals so far."""
        return self._totals


class RateLimiter:
    """The night's rate-limit buckets (one per limit name: an endpoint's requests or tokens per minute), shared by
    every worker, so `--rpm`/`--tpm` hold for the night rather than for each worker."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._granted: dict[str, float] = {}

    async def take(self, name: str, per_minute: float, amount: float) -> None:
        """Wait until the bucket has `amount` units, then take them."""
        bucket = self._buckets.setdefault(name, TokenBucket(per_minute))
        await bucket.take(amount)
        self._granted[name] = self._granted.get(name, 0.0) + amount

    async def give_back(self, name: str, amount: float) -> None:
        """Return units (negative: take more): the real token count differed from the estimate."""
        self._buckets[name].give_back(amount)
        self._granted[name] = self._granted.get(name, 0.0) - amount

    async def granted(self) -> dict[str, float]:
        """Units taken so far, per limit."""
        return dict(self._granted)


class _RemoteBucket:
    """TokenBucket's interface over the night's rate limiter actor."""

    def __init__(self, limiter: Any, name: str, per_minute: float) -> None:
        self._limiter = limiter
        self._name = name
        self._per_minute = per_minute

    async def take(self, amount: float) -> None:
        await self._limiter.take.remote(self._name, self._per_minute, amount)

    def give_back(self, amount: float) -> None:
        self._limiter.give_back.remote(self._name, amount)


class ModelServer:
    """A `local:` model loaded once for the night, in its own actor (a GPU where the cluster has one), answering
    every worker's generation and slot requests one call at a time; each answer carries its usage entries."""

    def __init__(self, spec: str, *, device: str, dtype: str) -> None:
        from neuron_explainer.llm import make_backend

        self._ledger = UsageLedger()
        self._backend = make_backend(spec, device=device, dtype=dtype, ledger=self._ledger)

    def describe(self) -> tuple[str, str, Any]:
        """(name, model, capabilities) of the backend."""
        return self._backend.name, self._backend.model, self._backend.capabilities

    def generate_many(self, prompts: list[Any], settings: dict[str, Any]) -> tuple[list[Any], list[LedgerEntry]]:
        """LLMBackend.generate_many, and the calls it made."""
        return asyncio.run(self._backend.generate_many(prompts, **settings)), self._ledger.drain()

    def slot_distributions(self, prompts: list[Any], candidates: list[str]) -> tuple[list[Any], list[LedgerEntry]]:
        """LLMBackend.slot_distributions, and the calls it made."""
        return asyncio.run(self._backend.slot_distributions(prompts, candidates)), self._ledger.drain()


class _ModelActorBackend(LLMBackend):
    """A worker's `local:` backend: the night's model actor (started by the first worker that needs it) does the
    work; usage is recorded here, under this worker's unit of work."""

    def __init__(self, spec: str, *, actor_name: str, device: str, dtype: str, ledger: UsageLedger | None) -> None:
        import ray

        gpus = 1 if device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self._server = ray.remote(ModelServer).options(
            # No CPU reserved: the workers hold the cluster's CPUs and wait on this actor (a reservation could
            # never be met).
            name=actor_name, get_if_exists=True, num_gpus=gpus, num_cpus=0, max_concurrency=1,
        ).remote(spec, device=device, dtype=dtype)
        self.name, self.model, self.capabilities = ray.get(self._server.describe.remote())
        self._ledger = ledger

    async def generate(self, prompt: Any, **settings: Any) -> Any:
        return (await self.generate_many([prompt], **settings))[0]

    async def generate_many(self, prompts: Any, **settings: Any) -> list[Any]:
        results, entries = await self._server.generate_many.remote(list(prompts), settings)
        self._record(entries)
        return results

    async def slot_distributions(self, prompts: Any, candidates: Any) -> list[list[dict[str, float]]]:
        results, entries = await self._server.slot_distributions.remote(list(prompts), list(candidates))
        self._record(entries)
        return results

    def _record(self, entries: list[LedgerEntry]) -> None:
        if self._ledger is None:
            return
        for entry in entries:
            self._ledger.record(backend=entry.backend, model=entry.model, operation=entry.operation,
                                prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens,
                                latency_s=entry.latency_s, free=True)


def model_actor_name(run_id: int, spec: str, replica: int) -> str:
    """The name of a night's model actor for `spec` (one per GPU of the cluster, one without GPUs)."""
    return f"{_MODEL_ACTORS}{run_id}-{replica}-{spec}"


_MODEL_ACTORS = "neuron-explainer-model-"


class _SharedLedger(UsageLedger):
    """A worker's ledger whose totals (what budgets read) are the whole night's, kept by the spend actor."""

    def __init__(self, spend: Any) -> None:
        super().__init__(on_entry=self._report)
        self._spend = spend
        self._night = UsageTotals()
        self._reported = threading.Lock()

    def _report(self, entry: LedgerEntry) -> None:
        import ray

        # Waited for, so that this worker's next budget check already counts this call.
        totals = ray.get(self._spend.add.remote([entry]))
        with self._reported:
            self._night = totals

    def totals(self) -> UsageTotals:
        with self._reported:
            return self._night


class _QueueUnits:
    """LocalUnits' interface over the driver's queue actor (the driver already offered the plan)."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def offer(self, todo: Any) -> None:
        """The driver's plan is in the queue already."""

    async def next(self) -> NeuronId | None:
        return await self._queue.next.remote()

    def finished(self, neuron: NeuronId) -> None:
        """Its writes are queued for the driver."""

    def close(self) -> None:
        """Nothing to release."""


_WRITES = ("record_neuron_stats", "record_explanation", "record_score", "record_classifier_score", "record_failure",
           "delete_scores")


class _RelayDatabase:
    """A worker's view of a SQLite database: reads go to the file, writes are kept for the driver to commit."""

    def __init__(self, database: Database, recording: RecordingRef) -> None:
        self._database = database
        self._recording = recording
        self._writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._entries: list[LedgerEntry] = []
        self._lock = threading.Lock()
        self.url = database.url

    def __getattr__(self, name: str) -> Any:
        if name in _WRITES:
            def keep(*args: Any, **kwargs: Any) -> None:
                with self._lock:
                    self._writes.append((name, args, kwargs))
            return keep
        return getattr(self._database, name)

    def register_recording(self, **_details: Any) -> RecordingRef:
        """Registered by the driver already."""
        return self._recording

    def record_llm_call(self, entry: LedgerEntry, **_where: Any) -> None:
        """The driver's ledger records it (with the driver's run)."""
        with self._lock:
            self._entries.append(entry)

    def flush(self, timeout: float | None = None) -> None:
        """The driver commits."""

    def check_writes(self) -> None:
        """The driver's writes are checked by the driver."""

    def take(self) -> tuple[list[tuple[str, tuple[Any, ...], dict[str, Any]]], list[LedgerEntry]]:
        """The writes and calls since the last take."""
        with self._lock:
            writes, entries, self._writes, self._entries = self._writes, self._entries, [], []
        return writes, entries


@dataclass
class WorkerReport:
    """What a worker sends the driver each time it is asked."""

    writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    """SQLite: database writes for the driver to apply, in order (empty on PostgreSQL: written already)."""
    entries: list[LedgerEntry] = field(default_factory=list)
    """LLM calls since the last report, for the driver's ledger (SQLite: also for the driver to store)."""
    tally: Any = None
    """The worker pipeline's counts."""
    stop_reason: str | None = None
    """Why the worker stopped early (a budget, its backend failing), once it has finished."""
    backend_down: str | None = None
    """Why the worker gave up on its backend, if it did."""
    done: int = 0
    """Neurons this worker has finished so far."""
    pid: int = 0
    """The worker's process id."""


class NightWorker:
    """One worker actor: a Pipeline over the night's store and database, fed neurons by the queue or the leases."""

    def __init__(self, config: dict[str, Any], *, index: int, run_id: int, recording: RecordingRef,
                 store_path: str, queue: Any, spend: Any, limiter: Any) -> None:
        self._config = RunConfig(**{**config, "score": {**config["score"], "baselines": False},
                                    "run": {**config["run"], "ray": None}})
        self._index = index
        self._run_id = run_id
        self._recording = recording
        self._store_path = store_path
        self._queue = queue
        self._spend = spend
        self._limiter = limiter
        self._relay: _RelayDatabase | None = None
        self._pipeline: Any = None
        self._reported = 0
        self._stop_reason: str | None = None

    async def ready(self) -> int:
        """Import what a unit needs; returns the worker's process id. The driver hands out neurons only once every
        worker is ready, so the first to start does not take the whole queue while the others are importing."""
        import torch

        import neuron_explainer.pipeline.run  # noqa: F401 - the import is the point

        # Actors share the host's cores: each one thread, as separate `run` workers would be given.
        torch.set_num_threads(1)
        return os.getpid()

    async def run(self, neurons: list[NeuronId]) -> None:
        """Work until the queue (or the shared plan) has no neuron left."""
        from neuron_explainer.activations import RecordStore
        from neuron_explainer.pipeline.run import Pipeline

        config = self._config
        limiter = self._limiter
        share_buckets(lambda name, per_minute: _RemoteBucket(limiter, name, per_minute))
        store = RecordStore.open(self._store_path)
        # `create=False`: the driver made the schema; a worker must never create or upgrade one.
        database = open_database(config.run.db, create=False)
        try:
            if not shares_work(database):
                self._relay = _RelayDatabase(database, self._recording)
            pipeline = Pipeline(config, self._relay or database, store)  # type: ignore[arg-type]
            pipeline.run_id = self._run_id
            pipeline.ledger = _SharedLedger(self._spend)
            pipeline.resources.ledger = pipeline.ledger
            pipeline.resources.make_backend = self._backend_maker()
            if self._relay is not None:
                queue = self._queue
                pipeline.make_units = lambda *_args, **_kwargs: _QueueUnits(queue)
            self._pipeline = pipeline
            try:
                self._stop_reason = (await pipeline.run(neurons)).stop_reason
            finally:
                await pipeline.aclose()
        finally:
            database.close()

    def _backend_maker(self) -> Callable[..., LLMBackend]:
        """make_backend, except that a `local:` model is reached in the night's model actor."""
        import ray

        run_id, record = self._run_id, self._config.record
        gpus = int(ray.cluster_resources().get("GPU", 0)) if record.device != "cpu" else 0
        # Workers share the model actors round robin: worker i uses the one on GPU i mod GPUs.
        replica = self._index % max(1, gpus)

        def build(spec: str, **settings: Any) -> LLMBackend:
            if parse_backend_spec(spec).kind != "local":
                return make_backend(spec, **settings)
            return _ModelActorBackend(spec, actor_name=model_actor_name(run_id, spec, replica),
                                      device=record.device, dtype=record.dtype, ledger=settings.get("ledger"))

        return build

    async def report(self) -> WorkerReport:
        """The writes and calls since the last report, and the counts once the run has finished."""
        report = WorkerReport(pid=os.getpid(), stop_reason=self._stop_reason)
        if self._relay is not None:
            report.writes, report.entries = self._relay.take()
        elif self._pipeline is not None:
            # PostgreSQL: the worker stored its calls itself; the driver only counts them.
            entries = self._pipeline.ledger.entries
            report.entries, self._reported = entries[self._reported:], len(entries)
        if self._pipeline is not None:
            report.done = self._pipeline.tally.done
            report.tally = self._pipeline.tally
            report.backend_down = self._pipeline.backend_down
        return report


# --- the driver --------------------------------------------------------------------------------------------


class RayNight:
    """Runs a Pipeline's planned units on Ray worker actors and gathers their results into the driver's pipeline."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.workers_done: list[int] = []
        """Neurons each worker finished (set after the night)."""
        self.startup_s = 0.0
        """Seconds the workers took to start and import (set after the night)."""
        self.granted: dict[str, float] = {}
        """Units the shared rate limiter granted, per limit (set after the night)."""

    async def schedule(self, pipeline: Any, todo: list[NeuronId], neurons: list[NeuronId]) -> str | None:
        """Run `todo` on the workers; fold their counts into `pipeline.tally` and their calls into its ledger;
        returns the budget that stopped the night, or None."""
        ray = import_ray()
        count = worker_count(self.config)
        shared = shares_work(pipeline.database)
        queue = None if shared else ray.remote(UnitQueue).remote(todo)
        spend = ray.remote(SpendLedger).remote()
        limiter = ray.remote(RateLimiter).remote()
        cpus = min(1.0, float(ray.cluster_resources().get("CPU", 1)) / count)
        # Workers keep the driver's cache and hub settings (a test's or a benchmark's fresh cache, offline mode).
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        actor = ray.remote(NightWorker).options(num_cpus=cpus, scheduling_strategy="SPREAD",
                                                 runtime_env={"env_vars": env})
        config = self.config.as_dict()
        if not shared:
            # Workers may start in another directory: a relative SQLite path must still name the driver's file.
            config["run"]["db"] = f"sqlite:///{Path(pipeline.database.url.database).resolve()}"
        workers = [actor.remote(config, index=index, run_id=pipeline.run_id, recording=pipeline.recording,
                                store_path=str(pipeline.store.path.resolve()), queue=queue, spend=spend,
                                limiter=limiter)
                   for index in range(count)]
        pipeline._total = len(todo)
        reports: dict[int, WorkerReport] = {}
        try:
            started = time.monotonic()
            await asyncio.to_thread(ray.get, [worker.ready.remote() for worker in workers])
            self.startup_s = time.monotonic() - started
            logger.info("%d Ray workers ready in %.1f s", count, self.startup_s)
            running = {worker.run.remote(neurons): worker for worker in workers}
            while True:
                finished, _ = await asyncio.to_thread(ray.wait, list(running), num_returns=len(running),
                                                      timeout=_POLL_S)
                fresh = await asyncio.to_thread(ray.get, [worker.report.remote() for worker in workers])
                for index, report in enumerate(fresh):
                    self._apply(pipeline, report, stored=shared)
                    reports[index] = report
                pipeline.tally.done = sum(report.done for report in reports.values())
                pipeline._report_progress("")
                if len(finished) == len(running):
                    try:
                        await asyncio.to_thread(ray.get, finished)
                    except ray.exceptions.RayTaskError as exc:
                        raise exc.as_instanceof_cause() from None  # a worker's UserError stays a UserError
                    break
            # The last reports, taken after every worker returned, carry their final counts.
            self._fold(pipeline, list(reports.values()))
            self.granted = await asyncio.to_thread(ray.get, limiter.granted.remote())
            if self.granted:
                logger.info("the night's rate limiter granted %s", ", ".join(
                    f"{name}: {amount:g}" for name, amount in sorted(self.granted.items())))
        finally:
            for worker in workers:
                ray.kill(worker)
            for helper in (queue, spend, limiter):
                if helper is not None:
                    ray.kill(helper)
            for name in ray.util.list_named_actors():
                if name.startswith(f"{_MODEL_ACTORS}{pipeline.run_id}-"):
                    ray.kill(ray.get_actor(name))
        return next((report.stop_reason for report in reports.values() if report.stop_reason), None)

    @staticmethod
    def _apply(pipeline: Any, report: WorkerReport, *, stored: bool) -> None:
        database = pipeline.database
        for name, args, kwargs in report.writes:
            getattr(database, name)(*args, **kwargs)
        if report.entries:
            pipeline.ledger.extend(report.entries)
            if stored:
                pipeline.ledger.drain()
            else:
                pipeline._persist_ledger()

    def _fold(self, pipeline: Any, reports: list[WorkerReport]) -> None:
        tally = pipeline.tally
        tally.done = 0
        for report in reports:
            worker = report.tally
            if worker is None:
                continue
            tally.done += worker.done
            tally.explained += worker.explained
            tally.scored += worker.scored
            tally.failed += worker.failed
            tally.scores.extend(worker.scores)
            tally.failures.extend(worker.failures)
            pipeline.backend_down = pipeline.backend_down or report.backend_down
        self.workers_done = sorted(report.done for report in reports)
