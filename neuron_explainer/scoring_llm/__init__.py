"""scoring_llm stage: detection and fuzzing scorers, cheaper than simulation and usable with any chat backend.

Public surface: `ClassifierScorer` (one entry point, `score`), its `ClassifierConfig`, the result types,
`ScorerKind` (which also names simulation, so a run can select any mix of scorers), and `DetectionScorer` /
`FuzzingScorer`, registered in the scoring registry `SCORERS` when this package is imported.
"""

from neuron_explainer.scoring_llm.classifier import ClassifierConfig, ClassifierScorer, classification_metrics
from neuron_explainer.scoring_llm.scorers import DetectionScorer, FuzzingScorer
from neuron_explainer.scoring_llm.types import (CLASSIFIER_KINDS, ClassifiedPassage, ClassifierMetrics,
                                                ClassifierScore, ScorerKind)

__all__ = ["CLASSIFIER_KINDS", "ClassifiedPassage", "ClassifierConfig", "ClassifierMetrics", "ClassifierScore",
           "ClassifierScorer", "DetectionScorer", "FuzzingScorer", "ScorerKind", "classification_metrics"]
