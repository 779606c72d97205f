"""What reads of the results database return: runs, usage totals, stored explanations and scores, one neuron's
details; and the references and ledger entries writes take."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any


from neuron_explainer.activations.records import NeuronStats
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain.types import Explanation
from neuron_explainer.scoring_llm.types import ClassifierScore
from neuron_explainer.simulate.types import Score

if TYPE_CHECKING:
    from neuron_explainer.llm.ledger import LedgerEntry


class RunStatus(str, Enum):
    """Outcome of a run."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED_BUDGET = "stopped: budget"
    STOPPED_BACKEND = "stopped: backend failing"
    INTERRUPTED = "stopped: interrupted"


@dataclass(frozen=True)
class RecordingRef:
    """A record store registered in the database; pass it to every write about its neurons."""

    id: int
    """Row id of the recording."""
    subject_model_id: int
    """Row id of its subject model."""
    model_id: str
    """Subject model id."""
    manifest_hash: str
    """Hash of the record store manifest."""


@dataclass(frozen=True)
class LLMCall:
    """One entry of the LLM call ledger: which backend, how many tokens, how long, what it cost. Never a key."""

    backend: str
    """Backend spec (credentials in URLs are redacted before storing)."""
    model: str
    """Model name."""
    prompt_tokens: int = 0
    """Prompt tokens billed."""
    completion_tokens: int = 0
    """Completion tokens billed."""
    cached_tokens: int = 0
    """Prompt tokens the provider served from its prompt cache."""
    latency_s: float = 0.0
    """Wall-clock seconds of the call."""
    cost_usd: float | None = None
    """Estimated cost (None when the price is unknown)."""
    from_cache: bool = False
    """Served from our response cache (no backend call)."""
    stage: str = ""
    """`explain`, `simulate`, ... (empty when unknown)."""
    operation: str = ""
    """`chat`, `completion`, `slots`, ... as the backend reports it."""
    attempts: int = 0
    """HTTP attempts made (0 for cache hits and in-process calls)."""
    created_at: str | float | None = None
    """When the call finished: ISO-8601 text or epoch seconds (None: now)."""
    unit: str = ""
    """The unit of work (neuron `layer:index`) the call was for (empty when unknown)."""

    @classmethod
    def from_entry(cls, entry: LedgerEntry, *, stage: str = "") -> LLMCall:
        """The database form of an `llm.ledger.LedgerEntry` (its own stage, when it has one, wins)."""
        return cls(backend=entry.backend, model=entry.model, prompt_tokens=entry.prompt_tokens,
                   completion_tokens=entry.completion_tokens, cached_tokens=entry.cached_tokens,
                   latency_s=entry.latency_s, cost_usd=entry.cost_usd, from_cache=entry.from_cache,
                   stage=entry.stage or stage, operation=entry.operation, attempts=entry.attempts,
                   created_at=entry.created_at, unit=entry.unit)


@dataclass(frozen=True)
class UsageTotals:
    """Sums over ledger entries."""

    calls: int
    """Entries."""
    cache_hits: int
    """Entries served from the response cache."""
    prompt_tokens: int
    """Prompt tokens."""
    completion_tokens: int
    """Completion tokens."""
    cached_tokens: int
    """Provider-cached prompt tokens."""
    cost_usd: float
    """Summed cost of entries with a known cost."""


@dataclass(frozen=True)
class RunInfo:
    """A run as stored."""

    id: int
    """Run id."""
    status: str
    """A RunStatus value."""
    config: dict[str, Any]
    """Configuration the run was started with."""
    code_version: str
    """Version of the code that ran."""
    host: str
    """Host it ran on."""
    pid: int
    """Its process id."""
    started_at: str
    """Start time (ISO-8601 UTC)."""
    ended_at: str | None
    """End time, None while running."""
    totals: dict[str, Any]
    """Totals the run reported when it finished."""
    error: str | None
    """Why it failed, if it did."""


@dataclass(frozen=True)
class StoredScore:
    """A score read back from the database."""

    id: int
    """Row id."""
    config_key: str
    """Score config key."""
    run_id: int | None
    """Run that wrote it."""
    score: Score
    """The score with metrics and per-window details."""


@dataclass(frozen=True)
class StoredExplanation:
    """An explanation read back from the database, with its scores."""

    id: int
    """Row id."""
    config_key: str
    """Explanation config key."""
    run_id: int | None
    """Run that wrote it."""
    manifest_hash: str
    """Recording it was made from."""
    explanation: Explanation
    """The explanation with provenance."""
    scores: tuple[StoredScore, ...]
    """Its scores, best first."""
    classifier_scores: tuple[ClassifierScore, ...] = ()
    """Its detection and fuzzing scores, oldest first."""


@dataclass(frozen=True)
class NeuronDetail:
    """Everything stored about one neuron of one subject model."""

    neuron: NeuronId
    """The neuron."""
    model_id: str
    """Subject model id."""
    model_fingerprint: str
    """Subject model weights fingerprint."""
    stats: tuple[tuple[str, NeuronStats], ...]
    """(recording manifest hash, statistics) for each recording that stored them."""
    explanations: tuple[StoredExplanation, ...]
    """Its explanations, best score first."""
