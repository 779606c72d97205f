"""Escaping for every output format: text from models and corpora is hostile until proven otherwise."""

from __future__ import annotations

import math
from typing import Any

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}", "\n": " ", "\r": " ", "\t": " ",
}

_MARKDOWN = {
    "\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "~": "\\~",
    "#": "\\#", "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " ", "\t": " ",
}


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet will run as a formula: text starting with = + - @ TAB CR gets a `'`."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def latex_escape(text: str) -> str:
    """`text` safe inside LaTeX running text and tabular cells (all ten specials, plus < > |, newlines)."""
    return "".join(_LATEX.get(character, character) for character in text)


def markdown_escape(text: str) -> str:
    """`text` safe inside a Markdown table cell: no pipes, emphasis, links, code, HTML or line breaks."""
    return "".join(_MARKDOWN.get(character, character) for character in text)


def visible_token(token: str) -> str:
    """A token with whitespace made visible for terminal display."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
