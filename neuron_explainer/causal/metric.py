"""The causal score's arithmetic: per-window divergences in, the recovered fraction and its bootstrap interval out.

Measure (docs/method.md): on held-out windows the subject runs three times, with the neuron's activations
unchanged, replaced by the calibrated simulation, and replaced by its mean (the ablation). The divergence of a run
is the KL divergence of its next-token distribution from the unchanged run's, summed over the window's positions;
the score is `1 - KL_sim / KL_ablate`, i.e. `1 - (L_sim - L_true) / (L_ablate - L_true)` with L the KL to the
unchanged output (so L_true = 0). Next-token cross-entropy is reported alongside (`loss_recovered`), not used as the
score: it mixes the neuron's effect with whether the model was right, and can fall under ablation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import numpy as np

NAN = float("nan")
NOTHING_CHANGES = 1e-9
"""Mean KL per token (nats) under ablation below which the score is undefined: the neuron does not matter here."""


class Ablation(str, Enum):
    """What replaces the neuron's activations in the ablated run."""

    MEAN = "mean"
    ZERO = "zero"


@dataclass(frozen=True)
class WindowDivergence:
    """Sums over one window's positions for one neuron."""

    window_id: int
    """Record-store window id."""
    tokens: int
    """Positions whose next-token distribution was compared."""
    kl_simulated: float
    """Sum over positions of KL(unchanged || simulated run), nats."""
    kl_ablated: float
    """Sum over positions of KL(unchanged || ablated run), nats."""
    loss_true: float
    """Sum of next-token cross-entropy of the unchanged run (positions with a next token in the window)."""
    loss_simulated: float
    """The same for the simulated run."""
    loss_ablated: float
    """The same for the ablated run."""


@dataclass(frozen=True)
class CausalScore:
    """How much of the neuron's effect on the output the simulation reproduces; NaN with a reason if undefined."""

    value: float
    """1 - KL_sim / KL_ablate over all held-out tokens: 1 = the simulation is as good as the truth, 0 = no better
    than the mean, below 0 = worse than the mean."""
    ci_low: float
    """Lower end of the bootstrap 95% interval (resampling windows)."""
    ci_high: float
    """Upper end."""
    kl_simulated: float
    """Mean KL per token of the simulated run (nats)."""
    kl_ablated: float
    """Mean KL per token of the ablated run (nats)."""
    loss_true: float
    """Mean next-token loss of the unchanged run."""
    loss_simulated: float
    """Mean next-token loss of the simulated run."""
    loss_ablated: float
    """Mean next-token loss of the ablated run."""
    loss_recovered: float
    """1 - (L_sim - L_true) / (L_ablate - L_true) with the next-token loss (NaN when ablation leaves it unchanged)."""
    windows: int
    """Held-out windows used."""
    tokens: int
    """Positions compared."""
    ablation: str
    """`mean` or `zero`."""
    ablation_value: float
    """The activation used for the ablated run."""
    undefined_reason: str | None = None
    """Why `value` is NaN."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN kept as float; the database writer turns it into null)."""
        return asdict(self)


def recovered_fraction(true: float, simulated: float, ablated: float) -> float:
    """`1 - (simulated - true) / (ablated - true)`; NaN when the ablation changes nothing."""
    denominator = ablated - true
    if denominator == 0 or not math.isfinite(denominator):
        return NAN
    return 1.0 - (simulated - true) / denominator


def causal_score(windows: Sequence[WindowDivergence], *, ablation: Ablation, ablation_value: float,
                 bootstrap_samples: int = 1000, seed: int = 0) -> CausalScore:
    """The score, its interval and the loss-based variant from per-window sums."""
    tokens = sum(window.tokens for window in windows)
    loss_tokens = sum(max(window.tokens - 1, 0) for window in windows)
    sums = np.array([[window.kl_simulated, window.kl_ablated] for window in windows], dtype=np.float64).reshape(-1, 2)
    kl_simulated, kl_ablated = (sums.sum(axis=0) / max(tokens, 1)).tolist()
    losses = [sum(getattr(window, name) for window in windows) / max(loss_tokens, 1)
              for name in ("loss_true", "loss_simulated", "loss_ablated")]
    undefined = None
    if not windows or tokens == 0:
        undefined = "no held-out windows to run"
    elif not kl_ablated > NOTHING_CHANGES:
        undefined = f"ablating the neuron ({ablation.value}) changes nothing on the held-out windows"
    value = NAN if undefined else 1.0 - kl_simulated / kl_ablated
    low = high = NAN
    if undefined is None and bootstrap_samples > 0:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(len(windows), np.full(len(windows), 1.0 / len(windows)), size=bootstrap_samples)
        token_counts = np.array([window.tokens for window in windows], dtype=np.float64)
        resampled = counts @ sums
        defined = resampled[:, 1] > NOTHING_CHANGES * (counts @ token_counts)
        values = 1.0 - resampled[defined, 0] / resampled[defined, 1]
        if values.size:
            low, high = (float(item) for item in np.percentile(values, [2.5, 97.5]))
    return CausalScore(value=value, ci_low=low, ci_high=high, kl_simulated=kl_simulated, kl_ablated=kl_ablated,
                       loss_true=losses[0], loss_simulated=losses[1], loss_ablated=losses[2],
                       loss_recovered=recovered_fraction(*losses), windows=len(windows), tokens=tokens,
                       ablation=ablation.value, ablation_value=float(ablation_value), undefined_reason=undefined)
