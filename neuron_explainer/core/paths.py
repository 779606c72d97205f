"""Where the project's own files live: prompts, data, and the cache directory."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS_DIR = REPO_ROOT / "prompts"
DATA_DIR = REPO_ROOT / "data"


def cache_dir() -> Path:
    """The cache root, honouring NEURON_EXPLAINER_CACHE and then XDG_CACHE_HOME."""
    explicit = os.environ.get("NEURON_EXPLAINER_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "neuron-explainer"
