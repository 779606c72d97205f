"""Exports from a real SQLite file: escaping in every format, summaries, plots, the CLI."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.db_factory import populate
from neuron_explainer.cli import main
from neuron_explainer.core.errors import UserError
from neuron_explainer.db import Database, ExplanationQuery, open_database
from neuron_explainer.export import FORMATS, export
from neuron_explainer.export.escaping import csv_cell, latex_escape, markdown_escape
from neuron_explainer.export.html import SiteOptions, build_site
from neuron_explainer.export.paper import latex_text
from neuron_explainer.export.readable import readable_text
from neuron_explainer.export.summary import layer_summaries
from neuron_explainer.export.terminal import format_rows_table

NASTY = "tokens like & % $ # _ { } ~ ^ \\ and | pipes <b>"
FORMULAS = ["=HYPERLINK(\"http://x\")", "+1 tokens", "-minus sign", "@SUM(A1)", "\tTAB start", "\rCR start"]

ITEMS = [
    (0, 0, "token-pairs", NASTY, 0.9),
    (0, 1, "token-pairs", "closing parentheses", 0.7),
    (0, 1, "sasc", "calls", 0.5),
    (1, 0, "token-pairs", "numbers", 0.2),
    (1, 1, "sasc", "nothing", float("nan")),
] + [(2, index, "token-pairs", text, 0.1 * index - 0.3) for index, text in enumerate(FORMULAS)]


@pytest.fixture()
def database(tmp_path: Path):
    with open_database(str(tmp_path / "e.db")) as opened:
        populate(opened, ITEMS)
        yield opened


def test_csv_cells_cannot_become_formulas(database: Database, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = export(database, "csv", out)
    assert result.rows == 10 and result.paths == (out,)
    rows = list(csv.DictReader(out.open(newline="", encoding="utf-8")))
    texts = {row["text"] for row in rows}
    for formula in FORMULAS:
        assert "'" + formula in texts
    assert NASTY in texts
    assert all(not row["text"].startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows)
    numeric = {row["neuron"]: row for row in rows if row["layer"] == "2"}
    assert numeric["0"]["score"] == "-0.3" and numeric["0"]["ci_low"].startswith("-0.4")  # numbers stay numbers
    assert json.loads(rows[0]["explanation_parameters"]) == {"examples": 5, "temperature": 0.0}
    assert [row["score"] for row in rows if row["layer"] == "1" and row["neuron"] == "1"] == [""]  # NaN
    assert csv_cell("=1+1") == "'=1+1" and csv_cell("a=1") == "a=1" and csv_cell(-1.5) == -1.5


def test_latex_escapes_every_special_and_summarises_layers(database: Database, tmp_path: Path) -> None:
    out = tmp_path / "tables.tex"
    export(database, "latex", out)
    text = out.read_text(encoding="utf-8")
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text
    line = next(line for line in text.splitlines() if line.startswith("0 & 0 & "))
    escaped = latex_escape(NASTY)
    assert line.endswith(f"& {escaped} \\\\")
    # Layer, neuron, polarity, score [CI], lexical ceiling (not stored for this score: --), method, explanation.
    assert "& Ceil. &" in text and line.split(" & ")[4] == "--"
    assert escaped == ("tokens like \\& \\% \\$ \\# \\_ \\{ \\} \\textasciitilde{} \\textasciicircum{} "
                       "\\textbackslash{} and \\textbar{} pipes \\textless{}b\\textgreater{}")
    # Outside the escape sequences themselves, no special character is left.
    stripped = re.sub(r"\\(textasciitilde|textasciicircum|textbackslash|textbar|textless|textgreater)\{\}", "",
                      escaped)
    stripped = re.sub(r"\\[&%$#_{}]", "", stripped)
    assert not set(stripped) & set("&%$#_{}~^\\|<>")
    summary_rows = {line.split(" & ")[1]: line for line in text.splitlines()
                    if re.match(r"^\$\+\$ & (\d+|All) & \d+ & ", line)}
    # Polarity, layer, neurons, undefined, mean, median, fraction good [CI].
    assert summary_rows["0"].startswith("$+$ & 0 & 2 & 0 & 0.80 & 0.80 & 0.50 [")
    assert summary_rows["1"].startswith("$+$ & 1 & 2 & 1 & 0.20 & 0.20 & 0.00 [0.00, 0.00]")
    assert summary_rows["All"].startswith("$+$ & All & 10 & 1 & ")
    assert "\\begin{longtable}" in text and text.count("\\begin{table}") == 1
    # Captions name the subject model, explainer, simulator and metric.
    captions = re.findall(r"\\caption\{(.*?)\}\\label|\\caption\{(.*)\}$", text, re.MULTILINE)
    assert len(captions) == 2
    for caption in ("".join(parts) for parts in captions):
        assert "Subject model: tiny-llama" in caption and "Explainer: " in caption and "Simulator: " in caption
        assert "Pearson correlation" in caption


def test_latex_text_uses_typographic_quotes_and_no_ligatures() -> None:
    assert latex_text('the word "def" in \'code\'') == "the word ``def'' in `code'"
    assert latex_text("it's a --flag & 50%") == "it's a -{}-flag \\& 50\\%"
    assert latex_text('("quoted")') == "(``quoted'')"


PAPER = ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n\\usepackage{longtable}\n"
         "\\begin{document}\n\\input{tables.tex}\n\\end{document}\n")
"""The standard article the LaTeX export must compile in."""


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex with booktabs")
def test_latex_output_compiles(database: Database, tmp_path: Path) -> None:
    export(database, "latex", tmp_path / "tables.tex")
    (tmp_path / "paper.tex").write_text(PAPER, encoding="utf-8")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    log = (tmp_path / "paper.log").read_text(encoding="utf-8", errors="replace")
    assert "Overfull \\hbox" not in log and (tmp_path / "paper.pdf").stat().st_size > 1000


def test_layer_summary_bootstrap_interval_brackets_the_fraction(database: Database) -> None:
    summaries = layer_summaries(database.iter_query(ExplanationQuery(limit=None)))
    layer0 = summaries[0]
    assert (layer0.layer, layer0.neurons, layer0.scored, layer0.fraction_good) == (0, 2, 2, 0.5)
    assert layer0.fraction_good_ci[0] <= 0.5 <= layer0.fraction_good_ci[1]
    assert 0.0 <= layer0.fraction_good_ci[0] < layer0.fraction_good_ci[1] <= 1.0
    total = summaries[-1]
    assert total.layer is None and total.neurons == 10 and total.scored == 9


def test_markdown_escapes_cells(database: Database, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    assert export(database, "markdown", out).rows == 10
    lines = out.read_text(encoding="utf-8").splitlines()
    row = next(line for line in lines if line.startswith("| 0 | 0 |"))
    assert row.count(" | ") == 9  # escaped pipes do not add columns
    assert "n/a – n/a" not in "\n".join(lines)
    assert markdown_escape(NASTY) in row and "<b>" not in row
    assert markdown_escape("a|b*c_[d](e)`f`") == "a\\|b\\*c\\_\\[d\\](e)\\`f\\`"
    assert "| all | 10 |" in "\n".join(lines)


def test_jsonl_is_one_neuron_per_line_with_provenance(database: Database, tmp_path: Path) -> None:
    out = tmp_path / "neurons.jsonl"
    assert export(database, "jsonl", out).rows == 10
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(line["layer"], line["neuron"]) for line in lines][:3] == [(0, 0), (0, 1), (1, 0)]
    assert all(len(line["explanations"]) == 1 for line in lines)
    best = lines[1]["explanations"][0]
    assert best["method"] == "token-pairs" and best["score"] == 0.7
    for field in ("explanation_key", "score_key", "manifest_hash", "model_fingerprint", "explanation_prompt_hash",
                  "simulator_prompt_hash", "explainer_backend", "split_seed", "explanation_parameters"):
        assert field in best
    every = tmp_path / "every.jsonl"
    export(database, "jsonl", every, query=ExplanationQuery(limit=None, best_per_neuron=False))
    grouped = [json.loads(line) for line in every.read_text(encoding="utf-8").splitlines()]
    assert len(grouped) == 10
    assert [entry["method"] for entry in grouped[1]["explanations"]] == ["token-pairs", "sasc"]


def test_plots_are_written_as_png_and_pdf(database: Database, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    result = export(database, "plots", out)
    names = sorted(path.name for path in result.paths)
    assert names == sorted(f"{stem}.{suffix}" for stem in ("score_histogram", "score_by_layer", "method_scatter")
                           for suffix in ("png", "pdf"))
    for path in result.paths:
        header = path.read_bytes()[:8]
        assert header.startswith(b"\x89PNG") if path.suffix == ".png" else header.startswith(b"%PDF")
        assert path.stat().st_size > 1000
    # The neuron whose score is undefined is counted in a note (also drawn on both figures), never dropped silently.
    assert result.notes == ("1 of 10 best scores are undefined (not shown)",)


def test_plots_without_matplotlib_name_the_install(database: Database, tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if it were not installed\n"
        "from neuron_explainer.cli import main\n"
        f"sys.exit(main(['export', '--db', {database.where!r}, '--format', 'plots', '--out', {str(tmp_path / 'p')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "pip install matplotlib" in done.stderr and "neuron-explainer[plots]" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_export_cli_and_dispatch(database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "best.csv"
    assert main(["export", "--db", database.where, "--format", "csv", "--out", str(out), "--layer", "0",
                 "--min-score", "0.8", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"format": "csv", "paths": [str(out)], "rows": 1, "notes": []}
    assert len(list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))) == 2
    assert set(FORMATS) >= {"csv", "jsonl", "latex", "markdown", "plots"}
    with pytest.raises(UserError, match="unknown export format 'docx'"):
        export(database, "docx", tmp_path / "x.docx")
    with pytest.raises(UserError, match="does not exist"):
        export(database, "csv", tmp_path / "missing-dir" / "x.csv")
    assert main(["export", "--db", database.where, "--format", "latex", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


LEXICON_WITH_TAIL = ('fires on "def" (1.00), "class" (0.50); lower on "." (0.20); other tokens: "x", "y" (0.06), '
                     '"z" (-0.04)')


def test_tables_and_the_viewer_show_a_lexicon_list_head_and_keep_the_whole_text(tmp_path: Path) -> None:
    head = 'fires on "def" (1.00), "class" (0.50); lower on "." (0.20)'
    assert readable_text(LEXICON_WITH_TAIL) == head + "; and 3 other tokens at their own levels"
    malformed = 'fires on "def" (1.00); other tokens: "x" (0.0'
    for unchanged in ("closing parentheses", malformed, 'fires on "def" (1.00)', "other tokens: a (0.5)"):
        assert readable_text(unchanged) == unchanged
    with open_database(str(tmp_path / "lexicon.db")) as database:
        populate(database, [(0, 0, "lexicon", LEXICON_WITH_TAIL, 0.6)])
        rows = database.query(ExplanationQuery())
        assert "3 other tokens" in format_rows_table(rows, width=400) and '"y"' not in format_rows_table(rows, width=400)
        export(database, "latex", tmp_path / "t.tex")
        latex = (tmp_path / "t.tex").read_text(encoding="utf-8")
        assert "3 other tokens at their own levels" in latex and "other tokens:" not in latex
        export(database, "csv", tmp_path / "t.csv")
        assert [row["text"] for row in csv.DictReader((tmp_path / "t.csv").open(encoding="utf-8"))] == [
            LEXICON_WITH_TAIL]
        build_site(database, tmp_path / "site", options=SiteOptions(progress=False))
    index = (tmp_path / "site" / "data" / "index.js").read_text(encoding="utf-8")
    assert "3 other tokens at their own levels" in index and "other tokens:" not in index
    (page_path,) = (tmp_path / "site" / "m").glob("*/0/0.html")
    page = page_path.read_text(encoding="utf-8")
    assert "3 other tokens at their own levels" in page
    assert "<details class=full-text>" in page and "other tokens: &#34;x&#34;" in page
