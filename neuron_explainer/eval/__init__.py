"""eval stage: how good the explanations are, where the truth is known and where it is not.

Planted neurons: `load_suite(path | None)` reads a suite (`PlantedSuite`, TOML; None = data/planted/builtin.toml),
`build_planted_store` writes its record store over real corpus windows with the recorder's own writer,
`run_planted_eval(PlantedEvalConfig)` evaluates explainer x simulator x backend combinations (`parse_methods`)
through the nightly run (`run_method`) into a `PlantedReport` (`format_planted_report` for text). Real neurons: `run_real_eval(records, db)` ->
`RealReport` (`format_real_report`). `write_json` saves either report's `as_dict()`.
"""

from neuron_explainer.eval.methods import Method, MethodRun, explain_and_score, parse_methods, run_method
from neuron_explainer.eval.planted import (GOOD_SCORE, MethodReport, NeuronResult, PlantedEvalConfig, PlantedReport,
                                           format_planted_report, run_planted_eval)
from neuron_explainer.eval.real import RealReport, format_real_report, run_real_eval
from neuron_explainer.eval.rules import planted_activations
from neuron_explainer.eval.store import (PlantedRecordingConfig, PlantedStore, PlantedSubject, build_planted_store,
                                         load_tokenizer)
from neuron_explainer.eval.suite import Checker, PlantedNeuron, PlantedSuite, Rule, RuleKind, load_suite, parse_suite
from neuron_explainer.eval.tables import write_json

__all__ = [
    "GOOD_SCORE", "Checker", "Method", "MethodReport", "MethodRun", "NeuronResult", "PlantedEvalConfig",
    "PlantedNeuron", "PlantedRecordingConfig", "PlantedReport", "PlantedStore", "PlantedSubject", "PlantedSuite",
    "RealReport", "Rule", "RuleKind", "build_planted_store", "explain_and_score", "format_planted_report",
    "format_real_report", "load_suite", "load_tokenizer", "parse_methods", "parse_suite", "planted_activations",
    "run_method", "run_planted_eval", "run_real_eval", "write_json",
]
