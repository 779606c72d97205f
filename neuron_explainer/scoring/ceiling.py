"""The lexical ceiling of a neuron: how well the best token-level predictor, fitted on the explain windows only,
predicts the same scored windows as every explanation (a baseline stored next to `shuffled` and `empty`)."""

from __future__ import annotations

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.explain.splits import oriented_record, split_neuron
from neuron_explainer.scoring.correlation import ScoreConfig, pearson
from neuron_explainer.simulate.token_lookup import TokenLookup

LEXICAL_CEILING = "lexical_ceiling"
"""Its key in `Score.baselines`."""


def lexical_ceiling(record: NeuronRecord, *, config: ScoreConfig = ScoreConfig()) -> float:
    """Pooled Pearson, on the scored windows, of the token -> activation lookup fitted on the explain windows only
    (`config.polarity`'s side); NaN where undefined. No simulator or explanation involved."""
    split = split_neuron(oriented_record(record, config.polarity), config.split)
    lookup = TokenLookup.fit(split.explain)
    true = [value for window in split.scored for value in window.activations]
    predicted = [value for window in split.scored for value in lookup.predict(window.tokens)]
    return pearson(true, predicted).value
