"""A toy explainer for the registry test: it names the token at the peak of the neuron's strongest explain window."""

from __future__ import annotations

import datetime as dt

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.core.failures import Failure
from neuron_explainer.explain import Explainer, ExplainerIdentity, ExplainerKind, Explanation
from neuron_explainer.explain.splits import oriented_record, split_neuron


class ToyExplainer(Explainer):
    """`the token "X"`, X being the token where the first explain window peaks; needs no LLM and no subject."""

    name = "toy"

    def identity(self) -> ExplainerIdentity:
        return ExplainerIdentity(parameters={**self.settings.split.as_dict(), "toy_version": 1})

    async def explain(self, record: NeuronRecord) -> Explanation | Failure:
        split = split_neuron(oriented_record(record, self.settings.polarity), self.settings.split)
        if not split.explain:
            return Failure(record.neuron, "explain", "no explain windows")
        window = split.explain[0]
        peak = max(range(len(window.tokens)), key=lambda index: window.activations[index])
        return Explanation(
            neuron=record.neuron, text=f'the token "{window.tokens[peak].strip()}"', method=ExplainerKind(self.name),
            polarity=self.settings.polarity, explainer_backend="none", explainer_model="none", prompt_hash="none",
            parameters=self.identity().parameters, source_window_ids=(window.window_id,),
            split_seed=self.settings.split.seed, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
