"""Build hook: the wheel carries the repository's top-level prompts/ and data/ as neuron_explainer/_resources/.

They stay at the top level of the repository (editable installs and checkouts read them there, see
neuron_explainer/core/paths.py); everything else about the package is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RESOURCES = ("prompts", "data")


class BuildPyWithResources(build_py):
    """build_py, then copy prompts/ and data/ into the built package (not for editable installs)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = Path(__file__).resolve().parent
        for name in RESOURCES:
            target = Path(self.build_lib) / "neuron_explainer" / "_resources" / name
            shutil.copytree(here / name, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithResources})
