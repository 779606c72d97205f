"""causal stage: whether an explanation matters to the model, by running the subject with simulated activations.

Public surface: `CausalRunner` with `CausalRequest` (batched forward passes per layer), `causal_score` and
`recovered_fraction` (the arithmetic), the records `CausalScore` / `WindowDivergence`, and `Ablation`.
"""

from neuron_explainer.causal.metric import (Ablation, CausalScore, WindowDivergence, causal_score,
                                            recovered_fraction)
from neuron_explainer.causal.runner import CausalRequest, CausalRunner

__all__ = ["Ablation", "CausalRequest", "CausalRunner", "CausalScore", "WindowDivergence", "causal_score",
           "recovered_fraction"]
