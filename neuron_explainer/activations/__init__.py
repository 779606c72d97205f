"""activations stage: record MLP activations in one streaming pass and keep them in a record store.

Public surface: `record(config, out_dir) -> RecordSummary` with `RecordConfig` / `RecordPolarity`,
`record_activations(...)` (a store from given activations, e.g. planted neurons), `RecordStore.open(dir)`
(`load_neuron`, `neuron_stats`, `window_tokens`, ...), `load_neuron`, `Manifest`, `manifest_matches`,
`StoreWriter` / `write_store` / `LayerSummary` (the low-level writer), and the records `NeuronRecord`,
`NeuronStats`, `Window`.
"""

from neuron_explainer.activations.accumulate import QUANTILE_PROBABILITIES, STATS_COLUMNS, LayerSummary
from neuron_explainer.activations.recorder import (
    DEFAULT_WINDOWS,
    RecordConfig,
    RecordPolarity,
    RecordSummary,
    manifest_matches,
    record,
    resolve_polarity,
    record_activations,
)
from neuron_explainer.activations.records import NeuronRecord, NeuronStats, Window
from neuron_explainer.activations.store import (
    FORMAT_VERSION,
    Manifest,
    RecordStore,
    StoreWriter,
    load_neuron,
    write_store,
)

__all__ = [
    "DEFAULT_WINDOWS",
    "FORMAT_VERSION",
    "QUANTILE_PROBABILITIES",
    "STATS_COLUMNS",
    "LayerSummary",
    "Manifest",
    "NeuronRecord",
    "NeuronStats",
    "RecordConfig",
    "RecordPolarity",
    "RecordStore",
    "RecordSummary",
    "StoreWriter",
    "Window",
    "load_neuron",
    "manifest_matches",
    "record",
    "record_activations",
    "resolve_polarity",
    "write_store",
]
