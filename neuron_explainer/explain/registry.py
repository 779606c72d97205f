"""Every explainer by name: a new explainer is one module with an `Explainer` subclass plus one line here."""

from __future__ import annotations

from neuron_explainer.core.registry import Registry
from neuron_explainer.explain.base import Explainer
from neuron_explainer.explain.explainers import NgramExplainer, SascExplainer, TokenPairsExplainer
from neuron_explainer.explain.lexicon import LexiconExplainer

EXPLAINERS: Registry[type[Explainer]] = Registry("explainer")
"""Explainer classes by name, in the order error messages list them."""

EXPLAINERS.register(TokenPairsExplainer.name, TokenPairsExplainer)
EXPLAINERS.register(SascExplainer.name, SascExplainer)
EXPLAINERS.register(NgramExplainer.name, NgramExplainer)
EXPLAINERS.register(LexiconExplainer.name, LexiconExplainer)


def register_explainer(explainer: type[Explainer]) -> type[Explainer]:
    """Make `explainer` available under its `name` (`--explainer NAME`, `run`, `eval`); usable as a decorator."""
    return EXPLAINERS.register(explainer.name, explainer)


def explainer_class(name: str) -> type[Explainer]:
    """The explainer a name means (UserError naming the choices)."""
    return EXPLAINERS.get(name)
