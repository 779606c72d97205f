"""pipeline: the nightly run that wires the stages together (record or reuse -> explain -> simulate -> score -> db).

Public surface: `RunConfig`, `load_config`, `run_pipeline(config, subject=) -> RunSummary`, `RunProgress`,
`ensure_records`, `select_neurons`, `recording_directory`, and `RunResources` / `BackendSettings` (what the run
lends its stages: backends, simulator, subject model).
"""

from neuron_explainer.pipeline.config import RunConfig, config_field_names, load_config
from neuron_explainer.pipeline.resources import BackendSettings, RunResources
from neuron_explainer.pipeline.run import (RunProgress, RunSummary, ensure_records, recording_directory,
                                           run_pipeline, select_neurons)

__all__ = ["BackendSettings", "RunConfig", "RunProgress", "RunResources", "RunSummary", "config_field_names", "ensure_records", "load_config",
           "recording_directory", "run_pipeline", "select_neurons"]
