"""The results database: SQLAlchemy 2.0 models, one batching writer, idempotent writes, run lock, queries.

Public surface: `open_database(url) -> Database`, the config-key helpers, the query types, the run status and the
result types. One module per job: engine.py (engines, dialects, error mapping), lock.py (the run lock), writer.py
and writes.py (the writer thread and what it applies), reads.py (every read; exports and the viewer use only it and
`Database`), query.py (the explanation query), schema.py (creation and upgrades), results.py (returned types),
batch_journal.py (the Batch API journal of `run --batch`). See docs/database.md for the schema and the upgrade policy.
"""

from neuron_explainer.db.batch_journal import DatabaseBatchJournal
from neuron_explainer.db.database import Database, open_database
from neuron_explainer.db.keys import config_key, explanation_config_key, score_config_key
from neuron_explainer.db.lock import LockHolder
from neuron_explainer.db.query import ExplanationQuery, ResultRow, SortOrder, parse_int_list
from neuron_explainer.db.results import (LLMCall, NeuronDetail, RecordingRef, RunInfo, RunStatus, StoredExplanation,
                                         StoredScore, UsageTotals)
from neuron_explainer.db.schema import SCHEMA_VERSION
from neuron_explainer.db.writer import DatabaseWriteError

__all__ = [
    "SCHEMA_VERSION", "Database", "DatabaseBatchJournal", "DatabaseWriteError", "ExplanationQuery", "LLMCall", "LockHolder", "NeuronDetail",
    "RecordingRef", "ResultRow", "RunInfo", "RunStatus", "SortOrder", "StoredExplanation", "StoredScore",
    "UsageTotals", "config_key", "explanation_config_key", "open_database", "parse_int_list", "score_config_key",
]
