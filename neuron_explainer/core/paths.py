"""Where the project's own files live: prompts, data, and the cache directory."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this package runs from (editable installs); a wheel has no repository around it."""
_BUNDLED = Path(__file__).resolve().parents[1] / "_resources"
# A built wheel carries prompts/ and data/ inside the package (setup.py); a checkout keeps them at its top level.
_ROOT = _BUNDLED if (_BUNDLED / "prompts").is_dir() else REPO_ROOT
PROMPTS_DIR = _ROOT / "prompts"
DATA_DIR = _ROOT / "data"


def cache_dir() -> Path:
    """The cache root, honouring NEURON_EXPLAINER_CACHE and then XDG_CACHE_HOME."""
    explicit = os.environ.get("NEURON_EXPLAINER_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "neuron-explainer"
