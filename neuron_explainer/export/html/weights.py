"""The viewer's weight-view section: a neuron's output and input tokens from the weights, as a static table."""

from __future__ import annotations

from neuron_explainer.activations.weight_views import KINDS, NeuronWeightView
from neuron_explainer.export.html.encoding import escape

_LABELS = {"promoted": "Output tokens raised", "suppressed": "Output tokens lowered",
           "exciting": "Input tokens that excite it", "inhibiting": "Input tokens that inhibit it"}


def weight_view_section(view: NeuronWeightView | None, *, limit: int = 12) -> str:
    """HTML of the section, or "" when the record store holds no weight views."""
    if view is None:
        return ""
    def tokens(kind: str) -> str:
        return " ".join(f"<code title={item.weight:+.4g}>{escape(item.token)}</code>"
                        for item in getattr(view, kind)[:limit])

    rows = "".join(f"<tr><th>{_LABELS[kind]}</th><td>{tokens(kind)}</td></tr>" for kind in KINDS)
    return ("<section id=weights-section><h2>What the weights say</h2><p class=note>Direct path, from the weights "
            "alone: output tokens through the final norm and unembedding (logit weight per unit activation), input "
            "tokens whose embedding alone activates the neuron most (hover a token for its weight). Computed by "
            f"<code>neuron-explainer weights</code>.</p><table class=weights>{rows}</table></section>")
