"""Schema version, creation of a new database, and in-place upgrades of older ones.

Policy: every change to the tables bumps SCHEMA_VERSION and adds an upgrade step `UPGRADES[old]` that turns a
version-`old` database into version `old + 1`. Opening runs the missing steps in order, each in its own
transaction together with the version bump, so an interrupted upgrade leaves the previous version intact.
A database newer than this code, or one without our meta table, is refused and never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection, inspect, select

from neuron_explainer.core.errors import UserError
from neuron_explainer.db.codec import utc_iso
from neuron_explainer.db.models import Base, MetaEntry

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 8
"""Version of the tables defined in models.py."""

APPLICATION = "neuron-explainer"
"""Value of the `application` meta entry that marks a database as ours."""

SEARCH_TABLE = "explanations_fts"
"""SQLite FTS5 (trigram) index over explanation text; absent on PostgreSQL and on SQLite builds without FTS5."""

_SEARCH_DDL = (
    f"CREATE VIRTUAL TABLE {SEARCH_TABLE} USING fts5("
    "text, content='explanations', content_rowid='id', tokenize='trigram')",
    f"CREATE TRIGGER {SEARCH_TABLE}_insert AFTER INSERT ON explanations BEGIN "
    f"INSERT INTO {SEARCH_TABLE}(rowid, text) VALUES (new.id, new.text); END",
    f"CREATE TRIGGER {SEARCH_TABLE}_delete AFTER DELETE ON explanations BEGIN "
    f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}, rowid, text) VALUES ('delete', old.id, old.text); END",
    f"CREATE TRIGGER {SEARCH_TABLE}_update AFTER UPDATE OF text ON explanations BEGIN "
    f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}, rowid, text) VALUES ('delete', old.id, old.text); "
    f"INSERT INTO {SEARCH_TABLE}(rowid, text) VALUES (new.id, new.text); END",
)


def sqlite_has_fts5_trigram(connection: Connection) -> bool:
    """Whether this SQLite build can make an FTS5 trigram table (FTS5 compiled in, SQLite >= 3.34)."""
    try:
        connection.exec_driver_sql("CREATE VIRTUAL TABLE temp.ne_fts_probe USING fts5(x, tokenize='trigram')")
        connection.exec_driver_sql("DROP TABLE temp.ne_fts_probe")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def create_search_index(connection: Connection) -> bool:
    """Create the FTS5 index and its sync triggers on SQLite, filled from existing rows; False when unavailable."""
    if connection.dialect.name != "sqlite" or not sqlite_has_fts5_trigram(connection):
        return False
    for statement in _SEARCH_DDL:
        connection.exec_driver_sql(statement)
    connection.exec_driver_sql(f"INSERT INTO {SEARCH_TABLE}({SEARCH_TABLE}) VALUES ('rebuild')")
    return True


def has_search_index(connection: Connection) -> bool:
    """Whether the FTS5 index exists in this database."""
    if connection.dialect.name != "sqlite":
        return False
    found = connection.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (SEARCH_TABLE,)).first()
    return found is not None


def _add_column(connection: Connection, table: str, column_ddl: str) -> None:
    connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column_ddl}")


def _upgrade_1_to_2(connection: Connection) -> None:
    """Version 2 added provider-cached prompt tokens, operation and attempts to the ledger, score baselines and
    the text search index, and moved per-window details out of `scores` into `score_windows` (so scans of
    `scores` read a fraction of the pages)."""
    _add_column(connection, "llm_calls", "cached_tokens INTEGER NOT NULL DEFAULT 0")
    _add_column(connection, "llm_calls", "operation VARCHAR(32) NOT NULL DEFAULT ''")
    _add_column(connection, "llm_calls", "attempts INTEGER NOT NULL DEFAULT 0")
    _add_column(connection, "scores", "baselines_json TEXT NOT NULL DEFAULT '{}'")
    connection.exec_driver_sql("CREATE TABLE score_windows (score_id INTEGER NOT NULL, windows_json TEXT NOT NULL, "
                               "PRIMARY KEY (score_id), FOREIGN KEY(score_id) REFERENCES scores (id))")
    connection.exec_driver_sql("INSERT INTO score_windows (score_id, windows_json) SELECT id, windows_json FROM scores")
    # DROP COLUMN needs SQLite >= 3.35 (2021); PostgreSQL has it.
    connection.exec_driver_sql("ALTER TABLE scores DROP COLUMN windows_json")
    # Version 2 indexes cover the best-per-neuron walk and the has-work checks.
    for old_index in ("ix_scores_sort_score", "ix_scores_config_key", "ix_explanations_config_key"):
        connection.exec_driver_sql(f"DROP INDEX {old_index}")
    connection.exec_driver_sql("CREATE INDEX ix_scores_sort_score_neuron ON scores (sort_score, neuron_id)")
    connection.exec_driver_sql("CREATE INDEX ix_scores_key_explanation ON scores (config_key, explanation_id)")
    connection.exec_driver_sql("CREATE INDEX ix_explanations_key_neuron ON explanations (config_key, neuron_id)")
    create_search_index(connection)


def _upgrade_2_to_3(connection: Connection) -> None:
    """Version 3 copies each explanation's polarity into `scores.polarity`, so best-per-neuron is taken per
    polarity without a join, with an index for that walk."""
    _add_column(connection, "scores", "polarity VARCHAR(16) NOT NULL DEFAULT 'positive'")
    connection.exec_driver_sql("UPDATE scores SET polarity = (SELECT e.polarity FROM explanations e "
                               "WHERE e.id = scores.explanation_id)")
    connection.exec_driver_sql("CREATE INDEX ix_scores_neuron_polarity_sort_score ON scores "
                               "(neuron_id, polarity, sort_score)")


def _upgrade_3_to_4(connection: Connection) -> None:
    """Version 4 classifies failures as transient (retried by the next run) or permanent; a stored backend error
    that outlasted its retries is transient, anything else stays permanent (retried with --retry-failed)."""
    _add_column(connection, "failures", "kind VARCHAR(16) NOT NULL DEFAULT 'permanent'")
    connection.exec_driver_sql("UPDATE failures SET kind = 'transient' WHERE reason LIKE '%LLMTransientError%'")


def _upgrade_4_to_5(connection: Connection) -> None:
    """Version 5 added `classifier_scores` (detection and fuzzing scores next to the simulation scores) and the
    unit of work (`layer:index`) of each ledger entry, so `run --plan` can measure what a neuron costs per stage."""
    key = "SERIAL PRIMARY KEY" if connection.dialect.name == "postgresql" else "INTEGER NOT NULL PRIMARY KEY"
    connection.exec_driver_sql(
        f"CREATE TABLE classifier_scores (id {key}, "
        "explanation_id INTEGER NOT NULL REFERENCES explanations (id), "
        "neuron_id INTEGER NOT NULL REFERENCES neurons (id), config_key VARCHAR(64) NOT NULL, "
        "scorer VARCHAR(32) NOT NULL, backend VARCHAR(512) NOT NULL, model VARCHAR(512) NOT NULL, "
        "prompt_hash VARCHAR(128) NOT NULL, split_seed INTEGER NOT NULL, parameters_json TEXT NOT NULL, "
        "accuracy FLOAT, balanced_accuracy FLOAT, auroc FLOAT, passages INTEGER NOT NULL, answered INTEGER NOT NULL, "
        "positives INTEGER NOT NULL, auroc_from VARCHAR(16) NOT NULL, undefined_reason TEXT, "
        "passages_json TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, "
        "requests INTEGER NOT NULL, created_at VARCHAR(32) NOT NULL, run_id INTEGER REFERENCES runs (id), "
        "CONSTRAINT uq_classifier_scores_explanation_key UNIQUE (explanation_id, config_key))")
    for name, columns in (("ix_classifier_scores_key_explanation", "config_key, explanation_id"),
                          ("ix_classifier_scores_neuron_id", "neuron_id"), ("ix_classifier_scores_scorer", "scorer"),
                          ("ix_classifier_scores_run_id", "run_id")):
        connection.exec_driver_sql(f"CREATE INDEX {name} ON classifier_scores ({columns})")
    _add_column(connection, "llm_calls", "unit VARCHAR(64) NOT NULL DEFAULT ''")


def _upgrade_5_to_6(connection: Connection) -> None:
    """Version 6 added the causal scores of `run --causal` (one row per score, in their own table)."""
    connection.exec_driver_sql(
        "CREATE TABLE causal_scores (score_id INTEGER NOT NULL, value FLOAT, ci_low FLOAT, ci_high FLOAT, "
        "ablation VARCHAR(16) NOT NULL, undefined_reason TEXT, details_json TEXT NOT NULL, "
        "created_at VARCHAR(32) NOT NULL, run_id INTEGER, PRIMARY KEY (score_id), "
        "FOREIGN KEY(score_id) REFERENCES scores (id), FOREIGN KEY(run_id) REFERENCES runs (id))")


def _upgrade_6_to_7(connection: Connection) -> None:
    """Version 7 added `unit_claims`, the leases several workers on one database split a night with."""
    connection.exec_driver_sql(
        "CREATE TABLE unit_claims (plan_key VARCHAR(64) NOT NULL, layer INTEGER NOT NULL, neuron INTEGER NOT NULL, "
        "owner VARCHAR(64), run_id INTEGER, host VARCHAR(255), pid INTEGER, expires_at FLOAT NOT NULL, "
        "done_at FLOAT, PRIMARY KEY (plan_key, layer, neuron))")
    connection.exec_driver_sql("CREATE INDEX ix_unit_claims_open ON unit_claims (plan_key, done_at, expires_at)")


def _upgrade_7_to_8(connection: Connection) -> None:
    """Version 8 added the Batch API journal (`llm_batch_files`, `llm_batch_requests`), which lived in the
    response-cache file before: a night killed after submitting picks its batches up from the database."""
    connection.exec_driver_sql(
        "CREATE TABLE llm_batch_files (input_file_id VARCHAR(255) NOT NULL, endpoint VARCHAR(64) NOT NULL, "
        "batch_id VARCHAR(255), status VARCHAR(16) NOT NULL, host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, "
        "created_at FLOAT NOT NULL, PRIMARY KEY (input_file_id))")
    connection.exec_driver_sql("CREATE INDEX ix_llm_batch_files_status ON llm_batch_files (status)")
    connection.exec_driver_sql(
        "CREATE TABLE llm_batch_requests (custom_id VARCHAR(64) NOT NULL, input_file_id VARCHAR(255) NOT NULL, "
        "PRIMARY KEY (custom_id, input_file_id))")
    connection.exec_driver_sql("CREATE INDEX ix_llm_batch_requests_input_file_id ON llm_batch_requests "
                               "(input_file_id)")


UPGRADES: dict[int, Callable[[Connection], None]] = {
    1: _upgrade_1_to_2,
    2: _upgrade_2_to_3,
    3: _upgrade_3_to_4,
    4: _upgrade_4_to_5,
    5: _upgrade_5_to_6,
    6: _upgrade_6_to_7,
    7: _upgrade_7_to_8,
}
"""UPGRADES[v] upgrades a version-v database to version v + 1."""


def _set_meta(connection: Connection, key: str, value: str) -> None:
    table = MetaEntry.__table__
    updated = connection.execute(table.update().where(table.c.key == key).values(value=value)).rowcount
    if not updated:
        connection.execute(table.insert().values(key=key, value=value))


def read_schema_version(connection: Connection) -> int | None:
    """The stored schema version, or None when the database has no meta table."""
    if not inspect(connection).has_table(MetaEntry.__tablename__):
        return None
    value = connection.execute(select(MetaEntry.value).where(MetaEntry.key == "schema_version")).scalar()
    if value is None:
        return None
    return int(value)


def prepare_schema(connection: Connection, *, where: str, create: bool) -> int:
    """Create, check or upgrade the schema inside the caller's transaction; returns the version found on disk.

    `where` names the database in messages (no password).
    """
    if connection.dialect.name == "postgresql":
        # Workers starting together on one database: one creates or upgrades the schema, the others then find it.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('neuron-explainer schema'))")
    tables = set(inspect(connection).get_table_names())
    if not tables:
        if not create:
            raise UserError(f"{where} holds no neuron-explainer database; run `neuron-explainer run` first")
        Base.metadata.create_all(connection)
        search = create_search_index(connection)
        _set_meta(connection, "application", APPLICATION)
        _set_meta(connection, "schema_version", str(SCHEMA_VERSION))
        _set_meta(connection, "created_at", utc_iso())
        logger.info("created schema version %d in %s (text search index: %s)", SCHEMA_VERSION, where, search)
        return SCHEMA_VERSION
    if MetaEntry.__tablename__ not in tables:
        raise UserError(f"{where} is not a neuron-explainer database (it has other tables: "
                        f"{', '.join(sorted(tables)[:5])}); refusing to touch it")
    application = connection.execute(select(MetaEntry.value).where(MetaEntry.key == "application")).scalar()
    version = read_schema_version(connection)
    if application != APPLICATION or version is None:
        raise UserError(f"{where} is not a neuron-explainer database (its meta table names no schema version)")
    if version > SCHEMA_VERSION:
        raise UserError(f"{where} has schema version {version}, newer than this neuron-explainer understands "
                        f"({SCHEMA_VERSION}); upgrade neuron-explainer")
    return version


def upgrade_step(connection: Connection, from_version: int) -> None:
    """Apply UPGRADES[from_version] and record the new version (caller holds the transaction)."""
    if from_version not in UPGRADES:
        raise UserError(f"no upgrade path from schema version {from_version}; this database is too old for "
                        f"neuron-explainer (current schema {SCHEMA_VERSION})")
    UPGRADES[from_version](connection)
    _set_meta(connection, "schema_version", str(from_version + 1))
    _set_meta(connection, f"upgraded_to_{from_version + 1}_at", utc_iso())

