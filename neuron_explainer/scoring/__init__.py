"""scoring stage: how well an explanation predicts a neuron's held-out activations.

Public surface: the `Scorer` interface (`ScoreResources`, `ScorerIdentity`) and its registry (`SCORERS`,
`SimulationScorer`); the simulation scoring library (`score_explanation`, `score_explanations`, `ScoreConfig`,
`calibrate_ranker`, `compute_baselines`, `shuffled_explanations`, `matched_minus_shuffled`) and its metrics.
"""

from neuron_explainer.scoring.base import SCORERS, Scorer, ScorerIdentity, ScoreResources, SimulationScorer
from neuron_explainer.scoring.correlation import (BaselineGap, Correlation, LinearMap, MetricsReport, ScoreConfig,
                                                  absolute_dev_explained, bootstrap_interval, calibrate_ranker,
                                                  compute_baselines, compute_metrics, fit_linear,
                                                  matched_minus_shuffled, pearson, rsquared, score_explanation,
                                                  score_explanations, shuffled_explanations)

__all__ = ["SCORERS", "BaselineGap", "Correlation", "LinearMap", "MetricsReport", "ScoreConfig", "ScoreResources",
           "Scorer", "ScorerIdentity", "SimulationScorer", "absolute_dev_explained", "bootstrap_interval",
           "calibrate_ranker", "compute_baselines", "compute_metrics", "fit_linear", "matched_minus_shuffled",
           "pearson", "rsquared", "score_explanation", "score_explanations", "shuffled_explanations"]
