"""scoring stage: how well an explanation predicts a neuron's held-out activations.

Public surface: the `Scorer` interface (`ScoreResources`, `ScorerIdentity`) and its registry (`SCORERS`,
`SimulationScorer`); `run_scorer` (many explanations with any scorer, on the unit-of-work runner); the simulation
scoring library (`score_explanation`, `score_explanations`, `ScoreConfig`, `calibrate_ranker`) and its metrics (scoring/correlation.py); the baselines (`donor_assignment`,
`shuffled_explanations`, `compute_baselines`, `matched_minus_shuffled`, `score_mean`) in scoring/baselines.py;
the lexical ceiling (`lexical_ceiling`) in scoring/ceiling.py.
"""

from neuron_explainer.scoring.base import SCORERS, Scorer, ScorerIdentity, ScoreResources, SimulationScorer
from neuron_explainer.scoring.baselines import (BaselineGap, ScoreMean, compute_baselines, donor_assignment,
                                                matched_minus_shuffled, score_mean, shuffled_explanations)
from neuron_explainer.scoring.batch import run_scorer, score_explanations
from neuron_explainer.scoring.ceiling import LEXICAL_CEILING, lexical_ceiling
from neuron_explainer.scoring.correlation import (Correlation, LinearMap, MetricsReport, ScoreConfig,
                                                  absolute_dev_explained, bootstrap_interval, calibrate_ranker,
                                                  compute_metrics, fit_linear, pearson, rsquared, score_explanation)

__all__ = ["BaselineGap", "Correlation", "LinearMap", "MetricsReport", "SCORERS", "ScoreConfig", "ScoreMean",
           "ScoreResources", "Scorer", "ScorerIdentity", "SimulationScorer", "absolute_dev_explained",
           "bootstrap_interval", "calibrate_ranker", "compute_baselines", "compute_metrics", "donor_assignment",
           "fit_linear", "LEXICAL_CEILING", "lexical_ceiling", "matched_minus_shuffled", "pearson", "rsquared",
           "run_scorer", "score_explanation", "score_explanations", "score_mean", "shuffled_explanations"]
