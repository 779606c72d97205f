"""A night on a Ray cluster (`run --ray [ADDRESS]`): the explain/simulate/score units run in worker actors.

Each worker actor is the ordinary `Pipeline` over the same record store and database, taking neurons one at a time
through the ordinary unit-of-work runner. On PostgreSQL the workers write directly and split the plan with the
leases of db/claims.py, exactly as separate `run` processes do. On SQLite the driver stays the only writer: the
workers take neurons from one queue actor and send their writes back, and the driver commits them. Every worker's
LLM spend goes to one spend actor and its rate-limit buckets live in one limiter actor, so `--max-cost`,
`--max-tokens`, `--rpm` and `--tpm` hold for the whole night, not for each worker; a `local:` model lives in one
model actor per GPU that serves every worker. A night that has to record does so in shards, one Ray task each,
merged exactly (activations/shards.py).

Every actor and task of a night gets this package through Ray's runtime environment (`py_modules`: the installed
package, or a staged copy of the checkout's with its prompts/ and data/), so cluster nodes need only Python, torch
and the third-party dependencies. A worker actor that dies (its process killed, its node lost) does not fail the
night: its unfinished neurons go back to the others (SQLite: back into the queue, with the writes it had reported
committed first; PostgreSQL: its leases are taken over) and Ray restarts it, up to `_MAX_RESTARTS` times per worker.
Worker actors start as soon as the night connects, while the driver opens the database and plans.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
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
"""How often the driver collects the workers' writes and progress (and a waiting worker asks the queue again)."""

NAMESPACE = "neuron-explainer"
"""The Ray namespace of every named actor of a night (`neuron-explainer-NIGHT-...`)."""

_MAX_RESTARTS = 3
"""How many times Ray restarts one worker actor that died before its work goes to the other workers alone."""

_WAIT = "wait"
"""The queue's answer while it is empty but other workers still hold neurons (one may die and give them back)."""


def import_ray() -> Any:
    """The `ray` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(config: RunConfig, runtime_env: dict[str, Any] | None = None) -> bool:
    """Attach to the night's Ray cluster (`auto`: the local one, started if none runs); UserError when it cannot be
    reached or the night cannot run on Ray. Checked before the database is opened, so nothing is left behind.
    Returns whether this call connected, with `runtime_env` as the job's (False: Ray was connected already)."""
    address = config.run.ray
    assert address is not None
    if config.llm.batch:
        # Batch API journals are written by the process that submits; Ray workers would each write their own.
        raise UserError("--batch and --ray cannot be combined: run the Batch API night without --ray")
    ray = import_ray()
    if address == "auto":
        if ray.is_initialized():
            return False
        ray.init(log_to_driver=False, runtime_env=runtime_env)
        return True
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
        return False
    try:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
    return True


def worker_count(config: RunConfig) -> int:
    """Worker actors for a night: `ray_workers`, else one per CPU of the cluster."""
    if config.run.ray_workers:
        return config.run.ray_workers
    return max(1, int(import_ray().cluster_resources().get("CPU", 1)))


def start_night(config: RunConfig) -> RayNight:
    """Connect to the night's cluster and start its worker actors (they import while the driver prepares). The
    package goes in the job's runtime environment when this call connects (Ray uploads it, also through a `ray://`
    client); a process connected already (a test session, a notebook) gets it uploaded here and named per actor."""
    staging = Path(tempfile.mkdtemp(prefix="neuron-explainer-ray-"))
    try:
        package = package_runtime_env(staging)
        if connect(config, package):
            package = {}
        else:
            package = _uploaded(package, staging)
    finally:
        # Uploaded (both ways upload before returning): a driver killed later leaves no staged copy behind.
        shutil.rmtree(staging, ignore_errors=True)
    night = RayNight(config, package=package)
    night.start()
    return night


def record_on_ray(config: RunConfig, request: RecordConfig, out_dir: Path, night: RayNight | None = None
                  ) -> RecordSummary:
    """Record (or reuse) the night's store in one shard per worker, each a Ray task, merged exactly. The night's
    worker actors, started early, give their CPUs back to the shards while they record (and start again after)."""
    from neuron_explainer.activations.shards import ray_shard_runner, record_sharded

    runner = ray_shard_runner(request, runtime_env=night.runtime_env if night is not None else None)

    def run(plan: Any, layers: Any) -> Any:
        if night is not None:
            night.stop_workers()
        return runner(plan, layers)

    return record_sharded(request, out_dir, shards=worker_count(config), run=run)


def package_runtime_env(staging: Path) -> dict[str, Any]:
    """The runtime environment that ships this package to every node: the installed package as it is (a wheel
    carries prompts/ and data/ in `_resources`), or a copy of the checkout's package with them staged inside."""
    import neuron_explainer
    from neuron_explainer.core import paths

    package = Path(neuron_explainer.__file__).resolve().parent
    caches = shutil.ignore_patterns("__pycache__", "*.pyc")
    if not (package / "_resources" / "prompts").is_dir():
        staged = staging / package.name
        shutil.copytree(package, staged, ignore=caches)
        for folder in (paths.PROMPTS_DIR, paths.DATA_DIR):
            shutil.copytree(folder, staged / "_resources" / folder.name, ignore=caches)
        package = staged
    return {"py_modules": [str(package)], "excludes": ["__pycache__", "*.pyc"]}


def _uploaded(runtime_env: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """`runtime_env` with its local py_modules uploaded to the cluster and named by their URIs: Ray takes local
    directories only in `ray.init`'s job-wide runtime environment, and a night may join a cluster (or a test
    session) that is connected already. Uses the upload `ray.init` itself uses; a content hash names the package,
    so an unchanged package is uploaded once per cluster."""
    import inspect

    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    options: dict[str, Any] = {"scratch_dir": str(scratch)}
    if "include_gitignore" in inspect.signature(upload_py_modules_if_needed).parameters:
        options["include_gitignore"] = False
    return upload_py_modules_if_needed(dict(runtime_env), **options)


# --- actors (plain classes; `ray.remote` makes them actors when a night starts) -------------------------------


class NightHub:
    """The night's shared state, in one actor: the driver's queue of neurons (SQLite), the spend of every worker
    (one budget) and the rate-limit buckets (one rate limit per endpoint)."""

    def __init__(self) -> None:
        self._todo: list[NeuronId] = []
        self._held: dict[int, set[NeuronId]] = {}
        self._returned: set[NeuronId] = set()
        self._totals = UsageTotals()
        self._buckets: dict[str, TokenBucket] = {}
        self._granted: dict[str, float] = {}

    # the queue (SQLite nights)

    async def offer(self, todo: list[NeuronId]) -> None:
        """The driver's plan: the neurons with work left, in order."""
        self._todo = list(reversed(todo))

    async def next(self, worker: int) -> tuple[NeuronId, bool] | str | None:
        """(the next neuron, whether a dead worker gave it back), `_WAIT` while the queue is empty but neurons are
        held (a holder may die), None when the night has none left."""
        if self._todo:
            neuron = self._todo.pop()
            self._held.setdefault(worker, set()).add(neuron)
            return neuron, neuron in self._returned
        return _WAIT if any(self._held.values()) else None

    async def done(self, worker: int, neurons: list[NeuronId]) -> None:
        """The driver has committed these neurons' writes."""
        self._held.get(worker, set()).difference_update(neurons)

    async def give_back(self, worker: int) -> list[NeuronId]:
        """A worker died: the neurons it held go to the front of the queue; returns them."""
        returned = sorted(self._held.pop(worker, set()))
        self._todo.extend(reversed(returned))
        self._returned.update(returned)
        return returned

    # the budget

    async def spend(self, entries: list[LedgerEntry]) -> UsageTotals:
        """Add calls; returns the night's totals so far."""
        for entry in entries:
            self._totals = self._totals.add(entry)
        return self._totals

    # the rate limit

    async def take(self, name: str, per_minute: float, amount: float) -> None:
        """Wait until the bucket `name` has `amount` units, then take them."""
        bucket = self._buckets.setdefault(name, TokenBucket(per_minute))
        await bucket.take(amount)
        self._granted[name] = self._granted.get(name, 0.0) + amount

    async def untake(self, name: str, amount: float) -> None:
        """Return units (negative: take more): the real token count differed from the estimate."""
        self._buckets[name].give_back(amount)
        self._granted[name] = self._granted.get(name, 0.0) - amount

    async def granted(self) -> dict[str, float]:
        """Units taken so far, per limit."""
        return dict(self._granted)


class _RemoteBucket:
    """TokenBucket's interface over the night's hub."""

    def __init__(self, hub: Any, name: str, per_minute: float) -> None:
        self._hub = hub
        self._name = name
        self._per_minute = per_minute

    async def take(self, amount: float) -> None:
        await self._hub.take.remote(self._name, self._per_minute, amount)

    def give_back(self, amount: float) -> None:
        self._hub.untake.remote(self._name, amount)


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
            name=actor_name, namespace=NAMESPACE, get_if_exists=True, num_gpus=gpus, num_cpus=0, max_concurrency=1,
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


def model_actor_name(night: str, spec: str, replica: int) -> str:
    """The name of a night's model actor for `spec` (one per GPU of the cluster, one without GPUs)."""
    return f"{night}-model-{replica}-{spec}"


class _SharedLedger(UsageLedger):
    """A worker's ledger whose totals (what budgets read) are the whole night's, kept by the hub: each call is sent
    without waiting (a blocking round trip per LLM call would stall the worker's other units), and counted here
    until the hub's answer, which already holds it, arrives."""

    def __init__(self, hub: Any) -> None:
        super().__init__(on_entry=self._report)
        self._hub = hub
        self._night = UsageTotals()
        self._unacknowledged: list[LedgerEntry] = []
        self._lock = threading.Lock()

    def _report(self, entry: LedgerEntry) -> None:
        with self._lock:
            self._unacknowledged.append(entry)
        answer = self._hub.spend.remote([entry]).future()
        answer.add_done_callback(lambda done: self._acknowledged(entry, done))

    def _acknowledged(self, entry: LedgerEntry, done: Any) -> None:
        with self._lock:
            self._unacknowledged = [pending for pending in self._unacknowledged if pending is not entry]
            if done.exception() is None and done.result().calls > self._night.calls:
                self._night = done.result()  # answers may arrive out of order: keep the latest

    def totals(self) -> UsageTotals:
        with self._lock:
            totals = self._night
            for entry in self._unacknowledged:
                totals = totals.add(entry)
            return totals


class _QueueUnits:
    """LocalUnits' interface over the hub's queue (the driver offered the plan): a neuron a dead worker gave back
    is taken over (its committed explanations reused); a finished neuron is marked among its writes, so the driver
    knows it is committed once it has applied them."""

    def __init__(self, hub: Any, worker: int, relay: _RelayDatabase, on_takeover: Callable[[NeuronId], None]) -> None:
        self._hub = hub
        self._worker = worker
        self._relay = relay
        self._on_takeover = on_takeover

    def offer(self, todo: Any) -> None:
        """The driver's plan is in the queue already."""

    async def next(self) -> NeuronId | None:
        while True:
            answer = await self._hub.next.remote(self._worker)
            if answer != _WAIT:
                break
            await asyncio.sleep(_POLL_S)
        if answer is None:
            return None
        neuron, given_back = answer
        if given_back:
            await asyncio.to_thread(self._on_takeover, neuron)
        return neuron

    def finished(self, neuron: NeuronId) -> None:
        self._relay.mark_finished(neuron)

    def close(self) -> None:
        """Nothing to release."""


class _HeldUnits:
    """Any unit source, remembering which neurons this worker holds (taken, not finished)."""

    def __init__(self, units: Any, held: set[NeuronId]) -> None:
        self._units = units
        self._held = held

    def offer(self, todo: Any) -> None:
        self._units.offer(todo)

    async def next(self) -> NeuronId | None:
        neuron = await self._units.next()
        if neuron is not None:
            self._held.add(neuron)
        return neuron

    def finished(self, neuron: NeuronId) -> None:
        self._units.finished(neuron)
        self._held.discard(neuron)

    def close(self) -> None:
        self._units.close()


_FINISHED = "finished"
"""The pseudo-write after a neuron's last write (SQLite relay)."""

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

    def mark_finished(self, neuron: NeuronId) -> None:
        """Every write of `neuron` is kept: the driver marks it done after applying them."""
        with self._lock:
            self._writes.append((_FINISHED, (neuron,), {}))

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


@dataclass(frozen=True)
class NightPlan:
    """What every worker needs to run its part of a planned night."""

    config: dict[str, Any]
    """The night's RunConfig as a dict (a SQLite path made absolute)."""
    run_id: int
    """The driver's run."""
    recording: RecordingRef
    """The recording, registered by the driver."""
    store_path: str
    """The record store's absolute path."""
    night: str
    """The prefix of the night's named actors."""
    hub: Any
    """The night's NightHub actor."""
    neurons: list[NeuronId]
    """The night's selection."""


class NightWorker:
    """One worker actor: a Pipeline over the night's store and database, fed neurons by the queue or the leases."""

    def __init__(self, index: int) -> None:
        self._index = index
        self._relay: _RelayDatabase | None = None
        self._pipeline: Any = None
        self._reported = 0
        self._stop_reason: str | None = None
        self._held: set[NeuronId] = set()

    async def ready(self) -> tuple[int, str]:
        """Import what a unit needs; returns (process id, where neuron_explainer was imported from). The driver
        hands out neurons only once every worker is ready, so the first to start does not take the whole queue
        while the others are importing."""
        import neuron_explainer
        import neuron_explainer.pipeline.run  # noqa: F401 - the import is the point

        return os.getpid(), neuron_explainer.__file__

    async def holding(self) -> tuple[int, list[NeuronId]]:
        """(process id, the neurons this worker has taken and not finished)."""
        return os.getpid(), sorted(self._held)

    async def run(self, plan: NightPlan) -> None:
        """Work until the queue (or the shared plan) has no neuron left."""
        from neuron_explainer.activations import RecordStore
        from neuron_explainer.pipeline.run import Pipeline

        values = plan.config
        config = RunConfig(**{**values, "score": {**values["score"], "baselines": False},
                              "run": {**values["run"], "ray": None}})
        hub = plan.hub
        share_buckets(lambda name, per_minute: _RemoteBucket(hub, name, per_minute))
        if "torch" in sys.modules:
            # Actors share the host's cores: each one thread, as separate `run` workers would be given.
            sys.modules["torch"].set_num_threads(1)
        store = RecordStore.open(plan.store_path)
        # `create=False`: the driver made the schema; a worker must never create or upgrade one.
        database = open_database(config.run.db, create=False)
        self._relay, self._stop_reason, self._reported = None, None, 0
        self._held.clear()
        try:
            if not shares_work(database):
                self._relay = _RelayDatabase(database, plan.recording)
            pipeline = Pipeline(config, self._relay or database, store)  # type: ignore[arg-type]
            pipeline.run_id = plan.run_id
            pipeline.ledger = _SharedLedger(hub)
            pipeline.resources.ledger = pipeline.ledger
            pipeline.resources.make_backend = self._backend_maker(config, plan.night)
            pipeline.make_units = self._units_maker(hub, pipeline.make_units)
            self._pipeline = pipeline
            try:
                self._stop_reason = (await pipeline.run(plan.neurons)).stop_reason
            finally:
                await pipeline.aclose()
        finally:
            database.close()

    def _units_maker(self, hub: Any, make: Callable[..., Any]) -> Callable[..., Any]:
        """The pipeline's unit source: the hub's queue on SQLite, the leases on PostgreSQL; remembering what is
        held."""
        relay, index, held = self._relay, self._index, self._held

        def build(*args: Any, **kwargs: Any) -> Any:
            units = _QueueUnits(hub, index, relay, kwargs["on_takeover"]) if relay is not None else \
                make(*args, **kwargs)
            return _HeldUnits(units, held)

        return build

    def _backend_maker(self, config: RunConfig, night: str) -> Callable[..., LLMBackend]:
        """make_backend, except that a `local:` model is reached in the night's model actor."""
        import ray

        record = config.record
        gpus = int(ray.cluster_resources().get("GPU", 0)) if record.device != "cpu" else 0
        # Workers share the model actors round robin: worker i uses the one on GPU i mod GPUs.
        replica = self._index % max(1, gpus)

        def build(spec: str, **settings: Any) -> LLMBackend:
            if parse_backend_spec(spec).kind != "local":
                return make_backend(spec, **settings)
            return _ModelActorBackend(spec, actor_name=model_actor_name(night, spec, replica),
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


@dataclass
class _Seat:
    """One worker actor as the driver follows it."""

    index: int
    handle: Any
    lap: int = 0
    """How many times `run` was called on it (a restarted actor runs again)."""
    run_ref: Any = None
    report_ref: Any = None
    final: bool = False
    """Its run returned: the next report is its last."""
    final_ref: Any = None
    probe_ref: Any = None
    """While Ray restarts it: a call that answers once it is back."""
    probed_at: float = 0.0
    deaths: int = 0
    pid: int = 0
    state: str = "running"
    """running, restarting (died; Ray starts it again), done, or lost (died more often than Ray restarts it)."""


class RayNight:
    """Runs a Pipeline's planned units on Ray worker actors and gathers their results into the driver's pipeline."""

    def __init__(self, config: RunConfig, *, package: dict[str, Any] | None = None) -> None:
        self.config = config
        self.name = f"{NAMESPACE}-{uuid.uuid4().hex[:12]}"
        """The prefix of this night's named actors."""
        self.workers_done: list[int] = []
        """Neurons each worker finished (set after the night)."""
        self.startup_s = 0.0
        """Seconds from starting the worker actors until every one had imported the package (set by the night)."""
        self.granted: dict[str, float] = {}
        """Units the shared rate limiter granted, per limit (set after the night)."""
        self.package: str | None = None
        """Where the workers imported neuron_explainer from (set once they are ready)."""
        self.runtime_env: dict[str, Any] | None = None
        """The runtime environment of every actor and task of the night."""
        self._package = package or {}
        self._hub: Any = None
        self._seats: list[_Seat] = []
        self._ready: list[Any] = []
        self._started = 0.0
        self._generation = 0

    def start(self) -> None:
        """Start the hub and the worker actors; they import the package while the driver prepares the night."""
        ray = import_ray()
        if self.runtime_env is None:
            env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
            # One thread per actor: they share the host's cores, as separate `run` workers would.
            env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
            # Workers keep the driver's cache and hub settings (a test's fresh cache, offline mode); never keys.
            # The package: named here (uploaded URIs), or inherited from the job's runtime environment.
            self.runtime_env = {**self._package, "env_vars": env}
        if self._hub is None:
            self._hub = ray.remote(NightHub).options(name=f"{self.name}-hub", namespace=NAMESPACE, num_cpus=0,
                                                     runtime_env=self.runtime_env).remote()
        count = worker_count(self.config)
        cpus = min(1.0, float(ray.cluster_resources().get("CPU", 1)) / count)
        self._started = time.monotonic()
        self._generation += 1  # a stopped worker's name may not be free again at once
        self._seats = [_Seat(index, ray.remote(NightWorker).options(
            name=f"{self.name}-worker-{self._generation}-{index}", namespace=NAMESPACE, num_cpus=cpus, scheduling_strategy="SPREAD",
            runtime_env=self.runtime_env, max_restarts=_MAX_RESTARTS, max_task_retries=0).remote(index))
            for index in range(count)]
        self._ready = [seat.handle.ready.remote() for seat in self._seats]

    def stop_workers(self) -> None:
        """Kill the worker actors (their CPUs are wanted elsewhere); `schedule` starts them again."""
        ray = import_ray()
        for seat in self._seats:
            ray.kill(seat.handle, no_restart=True)
        self._seats, self._ready = [], []

    def close(self) -> None:
        """Kill every actor of the night."""
        if self._seats or self._hub is not None:
            ray = import_ray()
            self.stop_workers()
            if self._hub is not None:
                ray.kill(self._hub)
                self._hub = None
            for actor in ray.util.list_named_actors(all_namespaces=True):
                if actor["namespace"] == NAMESPACE and actor["name"].startswith(f"{self.name}-"):
                    try:
                        ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE))
                    except ValueError:
                        pass  # gone meanwhile

    async def schedule(self, pipeline: Any, todo: list[NeuronId], neurons: list[NeuronId]) -> str | None:
        """Run `todo` on the workers; fold their counts into `pipeline.tally` and their calls into its ledger;
        returns the budget that stopped the night, or None."""
        if not todo:
            return None  # a finished night: nothing for the workers to do
        ray = import_ray()
        if not self._seats:
            self.start()
        hub = self._hub
        shared = shares_work(pipeline.database)
        config = self.config.as_dict()
        if not shared:
            # Workers may start in another directory: a relative SQLite path must still name the driver's file.
            config["run"]["db"] = f"sqlite:///{Path(pipeline.database.url.database).resolve()}"
            await asyncio.to_thread(ray.get, hub.offer.remote(todo))
        plan = NightPlan(config=config, run_id=pipeline.run_id, recording=pipeline.recording,
                         store_path=str(pipeline.store.path.resolve()), night=self.name, hub=hub,
                         neurons=neurons)
        pipeline._total = len(todo)
        ready = await asyncio.to_thread(ray.get, self._ready)
        self.startup_s = time.monotonic() - self._started
        self.package = ready[0][1]
        logger.info("%d Ray workers ready in %.1f s (neuron_explainer imported from %s)", len(ready),
                    self.startup_s, self.package)
        for seat, (pid, _) in zip(self._seats, ready):
            seat.pid = pid
            self._launch(seat, plan)
        reports: dict[tuple[int, int], WorkerReport] = {}
        while True:
            for seat in self._seats:
                if seat.state == "running" and seat.report_ref is None:
                    seat.report_ref = seat.handle.report.remote()
                    if seat.final:
                        seat.final_ref = seat.report_ref
                if seat.state == "restarting" and seat.probe_ref is None and \
                        time.monotonic() - seat.probed_at >= _POLL_S:
                    seat.probe_ref, seat.probed_at = seat.handle.ready.remote(), time.monotonic()
            pending = [ref for seat in self._seats for ref in (seat.report_ref, seat.run_ref, seat.probe_ref)
                       if ref is not None]
            ready_refs, _ = await asyncio.to_thread(ray.wait, pending, num_returns=len(pending), timeout=_POLL_S)
            arrived = set(ready_refs)
            for seat in self._seats:
                if seat.report_ref in arrived:
                    self._take_report(pipeline, seat, reports, stored=shared)
                if seat.run_ref in arrived:
                    run_ref, seat.run_ref = seat.run_ref, None
                    try:
                        await asyncio.to_thread(ray.get, run_ref)
                        seat.final = True
                    except ray.exceptions.RayActorError as exc:
                        await self._lost(pipeline, seat, exc, shared=shared)
                    except ray.exceptions.RayTaskError as exc:
                        raise exc.as_instanceof_cause() from None  # a worker's UserError stays a UserError
                if seat.probe_ref in arrived:
                    self._probed(seat, plan)
            pipeline.tally.done = sum(report.done for report in reports.values())
            pipeline._report_progress("")
            states = {seat.state for seat in self._seats}
            # A worker that finished saw the night's end (SQLite: the queue empty, no neuron held by anyone;
            # PostgreSQL: every claim done): a worker still restarting has nothing left to do.
            if states <= {"done", "lost"} or (states <= {"done", "lost", "restarting"} and "done" in states):
                break
        if all(seat.state == "lost" for seat in self._seats):
            raise RuntimeError(f"every Ray worker died (each restarted {_MAX_RESTARTS} times); run the same "
                               "command again to resume the night")
        # The last reports, taken after every worker returned, carry their final counts.
        self._fold(pipeline, list(reports.values()))
        self.granted = await asyncio.to_thread(ray.get, hub.granted.remote())
        if self.granted:
            logger.info("the night's rate limiter granted %s", ", ".join(
                f"{name}: {amount:g}" for name, amount in sorted(self.granted.items())))
        return next((report.stop_reason for report in reports.values() if report.stop_reason), None)

    def _launch(self, seat: _Seat, plan: NightPlan) -> None:
        seat.lap += 1
        seat.final, seat.final_ref = False, None
        seat.run_ref = seat.handle.run.remote(plan)

    def _take_report(self, pipeline: Any, seat: _Seat, reports: dict[tuple[int, int], WorkerReport], *,
                     stored: bool) -> None:
        import ray

        ref, seat.report_ref = seat.report_ref, None
        try:
            report = ray.get(ref)
        except ray.exceptions.RayActorError:
            return  # it died: its run call says so too, and is handled there
        finished = self._apply(pipeline, report, stored=stored)
        if finished:
            # Waited for: a death handled next must not give these back (an async actor may reorder calls).
            ray.get(self._hub.done.remote(seat.index, finished))
        reports[(seat.index, seat.lap)] = report
        seat.pid = report.pid or seat.pid
        if ref is seat.final_ref:
            seat.state = "done"
            if not stored:
                # A worker that stopped early (its backend failing) may have dropped neurons it had taken: waiting
                # workers take them instead of waiting for them forever.
                returned = ray.get(self._hub.give_back.remote(seat.index))
                if returned:
                    logger.info("Ray worker %d stopped holding %d neuron(s), back in the queue", seat.index,
                                len(returned))

    def _probed(self, seat: _Seat, plan: NightPlan) -> None:
        """A restarting worker answered (back: it runs again), is still restarting (asked again), or is gone."""
        import ray

        probe_ref, seat.probe_ref = seat.probe_ref, None
        try:
            seat.pid = ray.get(probe_ref)[0]
        except ray.exceptions.ActorUnavailableError:
            return
        except ray.exceptions.RayActorError:
            seat.state = "lost"
            logger.warning("Ray worker %d is not restarted again: the other workers finish the night", seat.index)
            return
        logger.info("Ray worker %d is back (pid %d)", seat.index, seat.pid)
        seat.state = "running"
        self._launch(seat, plan)

    async def _lost(self, pipeline: Any, seat: _Seat, error: Exception, *, shared: bool) -> None:
        """A worker actor died: its unfinished neurons go to the others, and it runs again once Ray restarted it."""
        import ray

        seat.deaths += 1
        seat.report_ref = None
        where = f"Ray worker {seat.index} (pid {seat.pid})"
        if shared:
            logger.warning("%s died (%s); its leased neurons are taken over by the other workers (at once on its own "
                           "host, else when its leases expire)", where, type(error).__name__)
        else:
            # The writes it reported are committed before its neurons go back to the queue: whoever takes one over
            # reads its stored explanations instead of asking for them again.
            await asyncio.to_thread(pipeline.database.flush)
            returned = await asyncio.to_thread(ray.get, self._hub.give_back.remote(seat.index))
            logger.warning("%s died (%s) holding %d neuron(s), back in the queue: %s", where, type(error).__name__,
                           len(returned), ", ".join(map(str, returned)) or "-")
        # Ray restarts the actor (up to _MAX_RESTARTS times); the loop asks until it answers, then runs it again.
        seat.state = "restarting"

    @staticmethod
    def _apply(pipeline: Any, report: WorkerReport, *, stored: bool) -> list[NeuronId]:
        """Apply a report's writes and calls; returns the neurons whose writes it completed."""
        database = pipeline.database
        finished = []
        for name, args, kwargs in report.writes:
            if name == _FINISHED:
                finished.append(args[0])
            else:
                getattr(database, name)(*args, **kwargs)
        if report.entries:
            pipeline.ledger.extend(report.entries)
            if stored:
                pipeline.ledger.drain()
            else:
                pipeline._persist_ledger()
        return finished

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
