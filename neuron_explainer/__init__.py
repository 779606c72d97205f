"""neuron-explainer: explain every MLP neuron of a transformer in natural language and score the explanations.

Data flows one way: corpus -> subject -> activations -> explain -> simulate -> scoring -> db -> export.
Importing this package does no work: no model loads, no file reads, no API key checks.
"""

__version__ = "0.1.0"
