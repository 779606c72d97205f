"""pipeline: the nightly run that wires the stages together (record or reuse -> explain -> simulate -> score -> db).

Public surface: `RunConfig` (nested, one section per stage), `config_flags`, `load_config`, `run_pipeline(config, subject=) -> RunSummary`, `RunProgress`,
`ensure_records`, `select_neurons`, `recording_directory`, and `RunResources` / `BackendSettings` (what the run
lends its stages: backends, simulator, subject model).
"""

from neuron_explainer.pipeline.config import RunConfig, config_flags, load_config
from neuron_explainer.pipeline.resources import BackendSettings, RunResources
from neuron_explainer.pipeline.run import (RunProgress, RunSummary, ensure_records, recording_directory,
                                           run_pipeline, select_neurons)

__all__ = ["BackendSettings", "RunConfig", "RunProgress", "RunResources", "RunSummary", "config_flags", "ensure_records",
           "load_config", "recording_directory", "run_pipeline", "select_neurons"]
