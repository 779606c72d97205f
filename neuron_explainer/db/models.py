"""SQLAlchemy 2.0 table definitions of the results database (current schema version).

Portable across SQLite and PostgreSQL: plain types, JSON kept as text columns (`*_json`) that the writer
serialises without NaN, timestamps as fixed-width ISO-8601 UTC strings (`2024-05-01T12:00:00.000000Z`, so they
sort as text), lock times as epoch seconds. Undefined metrics are NULL, never NaN (PostgreSQL sorts NaN above
every number).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

KEY_LENGTH = 64
"""Width of config-key columns (hex SHA-256)."""

UNDEFINED_SORT_SCORE = -2.0
"""`scores.sort_score` of a score whose Pearson correlation is undefined: below every defined correlation."""


class Base(DeclarativeBase):
    """Declarative base of every table."""


class MetaEntry(Base):
    """Key/value facts about the database itself; `schema_version` lives here."""

    __tablename__ = "ne_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SubjectModelRow(Base):
    """A subject model whose neurons are explained, identified by id and weights fingerprint."""

    __tablename__ = "subject_models"
    __table_args__ = (UniqueConstraint("model_id", "fingerprint", name="uq_subject_models_id_fingerprint"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(512))
    fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[str] = mapped_column(String(32))


class RecordingRow(Base):
    """A record store (activations of one model over one corpus), identified by its manifest hash."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_model_id: Mapped[int] = mapped_column(ForeignKey("subject_models.id"), index=True)
    manifest_hash: Mapped[str] = mapped_column(String(KEY_LENGTH), unique=True)
    path: Mapped[str] = mapped_column(Text)
    manifest_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))


class NeuronRow(Base):
    """One MLP neuron of one subject model."""

    __tablename__ = "neurons"
    __table_args__ = (
        UniqueConstraint("subject_model_id", "layer", "neuron", name="uq_neurons_model_layer_neuron"),
        Index("ix_neurons_layer_neuron", "layer", "neuron"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_model_id: Mapped[int] = mapped_column(ForeignKey("subject_models.id"))
    layer: Mapped[int] = mapped_column(Integer)
    neuron: Mapped[int] = mapped_column(Integer)


class NeuronStatsRow(Base):
    """A neuron's activation statistics in one recording."""

    __tablename__ = "neuron_stats"
    __table_args__ = (UniqueConstraint("neuron_id", "recording_id", name="uq_neuron_stats_neuron_recording"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"))
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id"), index=True)
    count: Mapped[int] = mapped_column(Integer)
    mean: Mapped[float | None] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    fraction_positive: Mapped[float | None] = mapped_column(Float)
    quantiles_json: Mapped[str] = mapped_column(Text)


class RunRow(Base):
    """One invocation of the pipeline (or of a stage command) with its configuration and outcome."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    config_json: Mapped[str] = mapped_column(Text)
    code_version: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[str] = mapped_column(String(32))
    ended_at: Mapped[str | None] = mapped_column(String(32))
    totals_json: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class RunLockRow(Base):
    """The single-row lock that lets one run at a time write to the database."""

    __tablename__ = "run_lock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class UnitClaimRow(Base):
    """A lease on one neuron's units of one plan, so that several workers on one PostgreSQL database split a night
    (see db/claims.py); times are the database server's epoch seconds."""

    __tablename__ = "unit_claims"
    __table_args__ = (Index("ix_unit_claims_open", "plan_key", "done_at", "expires_at"),)

    plan_key: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    neuron: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    done_at: Mapped[float | None] = mapped_column(Float)


class ExplanationRow(Base):
    """One explanation of one neuron, unique per (neuron, explain-config key)."""

    __tablename__ = "explanations"
    __table_args__ = (
        UniqueConstraint("neuron_id", "config_key", name="uq_explanations_neuron_key"),
        Index("ix_explanations_key_neuron", "config_key", "neuron_id"),
        Index("ix_explanations_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"))
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id"), index=True)
    config_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    method: Mapped[str] = mapped_column(String(32), index=True)
    polarity: Mapped[str] = mapped_column(String(16))
    explainer_backend: Mapped[str] = mapped_column(String(512))
    explainer_model: Mapped[str] = mapped_column(String(512), index=True)
    prompt_hash: Mapped[str] = mapped_column(String(128))
    parameters_json: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    source_window_ids_json: Mapped[str] = mapped_column(Text)
    split_seed: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    extra_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)


class ScoreRow(Base):
    """One score of one explanation by one simulator configuration, unique per (explanation, score-config key).

    `neuron_id` and `polarity` repeat the explanation's so best-per-neuron (per polarity) queries need no join to
    find rivals;
    `sort_score` is `pearson`, or UNDEFINED_SORT_SCORE when that is NULL, so one index orders every score
    (and, with `neuron_id` in it, answers best-per-neuron walks without reading the table).
    """

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("explanation_id", "config_key", name="uq_scores_explanation_key"),
        Index("ix_scores_sort_score_neuron", "sort_score", "neuron_id"),
        Index("ix_scores_neuron_sort_score", "neuron_id", "sort_score"),
        Index("ix_scores_neuron_polarity_sort_score", "neuron_id", "polarity", "sort_score"),
        Index("ix_scores_key_explanation", "config_key", "explanation_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id"))
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"))
    config_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    simulator: Mapped[str] = mapped_column(String(32), index=True)
    simulator_backend: Mapped[str] = mapped_column(String(512))
    simulator_model: Mapped[str] = mapped_column(String(512))
    prompt_hash: Mapped[str] = mapped_column(String(128))
    split_seed: Mapped[int] = mapped_column(Integer)
    parameters_json: Mapped[str] = mapped_column(Text)
    pearson: Mapped[float | None] = mapped_column(Float)
    pearson_top: Mapped[float | None] = mapped_column(Float)
    pearson_random: Mapped[float | None] = mapped_column(Float)
    rsquared: Mapped[float | None] = mapped_column(Float)
    absolute_dev_explained: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    scored_tokens: Mapped[int] = mapped_column(Integer)
    undefined_reason: Mapped[str | None] = mapped_column(Text)
    sort_score: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    baselines_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    polarity: Mapped[str] = mapped_column(String(16), default="positive", server_default="positive")


class ScoreWindowsRow(Base):
    """The per-window true and simulated activations behind one score (kept apart so `scores` stays narrow).

    `windows_json` is a list of {window_id, split, tokens, true, simulated, error}; floats have 6 significant
    digits and NaN is null.
    """

    __tablename__ = "score_windows"

    score_id: Mapped[int] = mapped_column(ForeignKey("scores.id"), primary_key=True, autoincrement=False)
    windows_json: Mapped[str] = mapped_column(Text)


class CausalScoreRow(Base):
    """The causal score of one score's simulation (`run --causal`): how much of the neuron's effect on the model's
    output the calibrated simulation reproduces; NULL value with `undefined_reason` when ablation changes nothing.
    `details_json` holds the rest of `CausalScore` (KL and next-token losses, windows, tokens, ablation value)."""

    __tablename__ = "causal_scores"

    score_id: Mapped[int] = mapped_column(ForeignKey("scores.id"), primary_key=True, autoincrement=False)
    value: Mapped[float | None] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float)
    ci_high: Mapped[float | None] = mapped_column(Float)
    ablation: Mapped[str] = mapped_column(String(16))
    undefined_reason: Mapped[str | None] = mapped_column(Text)
    details_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))


class BatchFileRow(Base):
    """An input file uploaded to the OpenAI Batch API and the batch that runs over it (`run --batch`), so a night
    killed after submitting picks its batches up in the next run, on any machine (see db/batch_journal.py)."""

    __tablename__ = "llm_batch_files"

    input_file_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    batch_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class BatchRequestRow(Base):
    """One request (by its response-cache key) in an uploaded batch input file."""

    __tablename__ = "llm_batch_requests"

    custom_id: Mapped[str] = mapped_column(String(KEY_LENGTH), primary_key=True)
    input_file_id: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


class FailureRow(Base):
    """A unit of work that produced no result, kept for retries and audits."""

    __tablename__ = "failures"
    __table_args__ = (
        UniqueConstraint("run_id", "stage", "config_key", "layer", "neuron", name="uq_failures_unit"),
        Index("ix_failures_key_stage", "config_key", "stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    stage: Mapped[str] = mapped_column(String(32))
    config_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    subject_model_id: Mapped[int | None] = mapped_column(ForeignKey("subject_models.id"))
    layer: Mapped[int] = mapped_column(Integer)
    neuron: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    raw_output: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16), default="permanent", server_default="permanent")


class LLMCallRow(Base):
    """One LLM call (or response-cache hit) and what it cost; never holds a key or a prompt."""

    __tablename__ = "llm_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(512))
    model: Mapped[str] = mapped_column(String(512))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    latency_s: Mapped[float] = mapped_column(Float)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    from_cache: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[str] = mapped_column(String(32))
    operation: Mapped[str] = mapped_column(String(32), default="", server_default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    unit: Mapped[str] = mapped_column(String(64), default="", server_default="")


class ClassifierScoreRow(Base):
    """One detection or fuzzing score of one explanation, unique per (explanation, scorer config key); stored next
    to the simulation scores in `scores`, with its per-passage verdicts in `passages_json`."""

    __tablename__ = "classifier_scores"
    __table_args__ = (
        UniqueConstraint("explanation_id", "config_key", name="uq_classifier_scores_explanation_key"),
        Index("ix_classifier_scores_key_explanation", "config_key", "explanation_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    explanation_id: Mapped[int] = mapped_column(ForeignKey("explanations.id"))
    neuron_id: Mapped[int] = mapped_column(ForeignKey("neurons.id"), index=True)
    config_key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    scorer: Mapped[str] = mapped_column(String(32), index=True)
    backend: Mapped[str] = mapped_column(String(512))
    model: Mapped[str] = mapped_column(String(512))
    prompt_hash: Mapped[str] = mapped_column(String(128))
    split_seed: Mapped[int] = mapped_column(Integer)
    parameters_json: Mapped[str] = mapped_column(Text)
    accuracy: Mapped[float | None] = mapped_column(Float)
    balanced_accuracy: Mapped[float | None] = mapped_column(Float)
    auroc: Mapped[float | None] = mapped_column(Float)
    passages: Mapped[int] = mapped_column(Integer)
    answered: Mapped[int] = mapped_column(Integer)
    positives: Mapped[int] = mapped_column(Integer)
    auroc_from: Mapped[str] = mapped_column(String(16))
    undefined_reason: Mapped[str | None] = mapped_column(Text)
    passages_json: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
