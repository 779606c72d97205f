"""scripts/nightly.sh on a fresh checkout, as cron runs it: a night against the loopback API with stdout and
stderr appended to a log file, then the viewer, the LaTeX tables and the figures; the LaTeX compiles in a standard
article and every figure is a real image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from fault_harness import word_store  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n\\usepackage{longtable}\n"
           "\\usepackage{graphicx}\n\\begin{document}\n\\input{neurons.tex}\n"
           "\\begin{figure}\\centering\\includegraphics[width=0.8\\linewidth]{plots/score_by_layer.pdf}"
           "\\caption{By layer.}\\end{figure}\n\\end{document}\n")
"""A standard article with booktabs and longtable that inputs the exported tables and one figure."""


def _night(tmp_path: Path, spec: str, store: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "nightly.toml"
    config.write_text(f'db = "sqlite:///neurons.db"\nrecords = "{store}"\nexplainers = ["token-pairs", "ngram"]\n'
                      f'llm = "{spec}"\nsimulator = "generated"\nconcurrency = 4\nexplain_windows = 6\n'
                      'score_top_windows = 2\nscore_random_windows = 2\nmax_cost = 1.0\n', encoding="utf-8")
    environment = {**os.environ, "OUT_DIR": str(tmp_path / "out"),
                   "NE": str(Path(sys.executable).with_name("neuron-explainer"))}
    (tmp_path / "out").mkdir()
    with (tmp_path / "out" / "nightly.log").open("a") as log:
        return subprocess.run(["bash", str(ROOT / "scripts" / "nightly.sh"), str(config)], stdout=log,
                              stderr=subprocess.STDOUT, env=environment, timeout=900, text=True)


def test_nightly_script_runs_a_night_and_writes_compilable_exports(tmp_path: Path) -> None:
    if not Path(sys.executable).with_name("neuron-explainer").exists():
        pytest.skip("the neuron-explainer command is not installed next to this interpreter")
    store = word_store(tmp_path, neurons=12, words=6)
    with FakeOpenAIServer(responder=competent_model) as server:
        finished = _night(tmp_path, server.backend_spec("competent"), store)
    out = tmp_path / "out"
    log = (out / "nightly.log").read_text(encoding="utf-8")
    assert finished.returncode == 0, log
    assert "\r" not in log and "Traceback" not in log
    assert " neurons: 12/12 (100%)" in log and "nightly: done (exit 0)" in log
    assert len(list(out.glob("nightly-*.json"))) == 1
    assert (out / "site" / "index.html").is_file()
    tex = out / "paper" / "neurons.tex"
    assert tex.is_file() and "\\begin{longtable}" in tex.read_text(encoding="utf-8")
    figures = sorted(path.name for path in (out / "paper" / "plots").iterdir())
    assert figures == ["method_scatter.pdf", "method_scatter.png", "score_by_layer.pdf", "score_by_layer.png",
                       "score_histogram.pdf", "score_histogram.png"]
    for name in figures:
        data = (out / "paper" / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG" if name.endswith(".png") else b"%PDF") and len(data) > 5000
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (make test installs texlive-latex-base and -recommended)")
    (out / "paper" / "article.tex").write_text(ARTICLE, encoding="utf-8")
    compiled = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "article.tex"],
                              cwd=out / "paper", capture_output=True, text=True, timeout=300)
    assert compiled.returncode == 0, compiled.stdout[-3000:]
    latex_log = (out / "paper" / "article.log").read_text(encoding="utf-8", errors="replace")
    assert "Float too large" not in latex_log and "Overfull \\hbox" not in latex_log
