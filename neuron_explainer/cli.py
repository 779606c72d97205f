"""Command line: argument parsing and printing only; every command calls into the library.

Each command has an `_add_<name>` function that declares its flags and a `_cmd_<name>` handler.
Errors users can cause surface as UserError: one line on stderr, exit code 2 (NEURON_EXPLAINER_DEBUG=1 for a traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from neuron_explainer.errors import UserError

EXIT_USER_ERROR = 2
DEFAULT_DB = "sqlite:///neurons.db"

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2 (argparse's own code, kept)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"neuron-explainer: error: {message}\n")
        raise SystemExit(EXIT_USER_ERROR)


def print_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(value, indent=2, default=str))


# --- commands ---------------------------------------------------------------------------------------------


def _add_info(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("info", help="print a model's architecture, layers, neurons per layer and hook point")
    parser.add_argument("--model", default="default", help="HF id, local directory, .gguf file or `default`")
    parser.add_argument("--hook-template", default=None,
                        help="module path of the MLP output projection with {layer}, for unknown architectures")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from neuron_explainer.subject import describe_model

    info = describe_model(args.model, hook_template=args.hook_template)
    if args.format == "json":
        print_json(info.as_dict())
    else:
        for key, value in info.as_dict().items():
            print(f"{key:>20}: {value}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
]


# --- entry point ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by main and by the docs)."""
    parser = _Parser(prog="neuron-explainer", description="Explain and score every MLP neuron of a transformer.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    debug = os.environ.get("NEURON_EXPLAINER_DEBUG") == "1"
    handler: Handler = args.handler
    try:
        return handler(args)
    except UserError as exc:
        if debug:
            raise
        message = " ".join(str(exc).split())
        sys.stderr.write(f"neuron-explainer: error: {message}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("neuron-explainer: interrupted; finished work is saved, run the same command to resume\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
