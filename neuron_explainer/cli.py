"""Command line: argument parsing and printing only; every command calls into the library.

Each command has an `_add_<name>` function that declares its flags and a `_cmd_<name>` handler.
Errors users can cause surface as UserError: one line on stderr, exit code 2 (NEURON_EXPLAINER_DEBUG=1 for a traceback).
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from neuron_explainer.core.database_url import DEFAULT_DATABASE_URL as DEFAULT_DB
from neuron_explainer.core.errors import UserError

EXIT_USER_ERROR = 2
EXIT_BACKEND_DOWN = 3
"""`run` stopped because its backend failed too many units in a row (see docs/nightly.md)."""

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


def _add_record(commands: argparse._SubParsersAction) -> None:
    from neuron_explainer.activations import DEFAULT_WINDOWS

    parser = commands.add_parser(
        "record", help="run a model over a corpus and keep every MLP neuron's top windows, random windows and stats",
        description="One streaming pass; memory stays flat in --windows. Re-running with the same flags reuses a "
                    "complete store; anything else is recorded afresh and swapped in atomically.")
    parser.add_argument("--model", default="default", help="HF id, local directory, .gguf file or `default`")
    parser.add_argument("--corpus", default="python-docs",
                        help="python-docs (default), a .txt/.jsonl/.parquet file, a directory, a glob, or "
                             "hf:NAME[:SPLIT]")
    parser.add_argument("--layers", default="all", help="layer SPEC: all, N, A-B or a comma list (default all)")
    parser.add_argument("--out", default="records", help="store directory (default records)")
    parser.add_argument("--ctx", type=int, default=64, help="tokens per window (default 64)")
    parser.add_argument("--windows", type=int, default=DEFAULT_WINDOWS,
                        help=f"most windows to record (default {DEFAULT_WINDOWS}, a demo size: a few minutes for 4 "
                             "layers of the default model on 2 CPU cores; use 100000+ for real runs)")
    parser.add_argument("--top-k", type=int, default=40, help="top windows kept per neuron (default 40)")
    parser.add_argument("--random", type=int, default=100,
                        help="shared random windows; each neuron draws its own scored ones from them (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random window sample (default 0)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--polarity", choices=["positive", "both", "auto"], default="auto",
                        help="both also keeps each neuron's most negative windows; auto (default): both on gated "
                             "MLPs (SwiGLU/GeGLU), positive elsewhere")
    parser.add_argument("--hook-template", default=None,
                        help="module path of the MLP output projection with {layer}, for unknown architectures")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default 32)")
    parser.add_argument("--text-field", default="text", help="JSONL field / parquet column of the text")
    parser.add_argument("--pack", action="store_true",
                        help="let windows straddle documents (EOS-separated) instead of dropping short tails")
    parser.add_argument("--store-dtype", choices=["float16", "float32"], default="float16",
                        help="stored activation precision (float16 falls back to float32 on overflow)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(handler=_cmd_record)


def _cmd_record(args: argparse.Namespace) -> int:
    from neuron_explainer.activations import RecordConfig, RecordPolarity, record

    config = RecordConfig(model=args.model, corpus=args.corpus, layers=args.layers, window_length=args.ctx,
                          windows=args.windows, top_k=args.top_k, random_k=args.random, seed=args.seed,
                          dtype=args.dtype, device=args.device, polarity=RecordPolarity(args.polarity),
                          hook_template=args.hook_template, batch_size=args.batch_size, text_field=args.text_field,
                          pack=args.pack, store_dtype=args.store_dtype)
    summary = record(config, args.out, progress=sys.stderr.isatty()).as_dict()
    if args.json:
        print_json(summary)
    elif summary["reused"]:
        print(f"reused the complete recording at {summary['path']} (recording {summary['recording_id']}): "
              f"{summary['windows']} windows, layers {_layer_text(summary['layers'])}")
    else:
        rate = summary["windows"] / max(summary["recording_seconds"], 1e-9)
        print(f"recorded {summary['windows']} windows x {summary['window_length']} tokens of {summary['corpus']} "
              f"through {summary['model']} ({summary['dtype']} on {summary['device']}), layers "
              f"{_layer_text(summary['layers'])} x {summary['neurons_per_layer']} = {summary['neurons']} neurons, "
              f"in {summary['recording_seconds']:.1f} s ({rate:.1f} windows/s)")
        print(f"store: {summary['path']} (recording {summary['recording_id']})")
    return 0


def _layer_text(layers: Sequence[int]) -> str:
    if layers and list(layers) == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(str(layer) for layer in layers)


def _add_show_record(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("show-record", help="print a neuron's recorded windows with activations highlighted")
    parser.add_argument("neuron", help="LAYER:NEURON")
    parser.add_argument("--records", default="records", help="store directory (default records)")
    parser.add_argument("--windows", type=int, default=5, help="windows to print (default 5)")
    parser.add_argument("--kind", choices=["top", "bottom", "random"], default="top",
                        help="top windows (default), bottom (needs --polarity both) or the shared random windows")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                        help="ANSI colours (auto: when stdout is a terminal; otherwise [brackets] mark tokens at "
                             ">= half the neuron's max)")
    parser.add_argument("--json", action="store_true", help="print the neuron as one JSON object")
    parser.set_defaults(handler=_cmd_show_record)


def _cmd_show_record(args: argparse.Namespace) -> int:
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.activations.display import WindowKind, format_record, record_as_dict
    from neuron_explainer.activations.weight_views import format_weight_view, neuron_weight_view
    from neuron_explainer.core.neurons import NeuronId

    neuron = NeuronId.parse(args.neuron)
    store = RecordStore.open(args.records)
    record = store.load_neuron(neuron.layer, neuron.neuron)
    kind = WindowKind(args.kind)
    view = neuron_weight_view(store, neuron)
    if args.json:
        print_json({**record_as_dict(record, kind=kind, windows=args.windows),
                    "weight_view": view.as_dict() if view is not None else None})
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(format_record(record, kind=kind, windows=args.windows, color=color), end="")
    if view is not None:
        print(format_weight_view(view), end="")
    return 0


def _add_weights(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("weights", help="compute every recorded neuron's weight view (output and input "
                                                 "tokens) into the record store, or export them")
    parser.add_argument("--records", default="records", help="store directory (default records)")
    parser.add_argument("--top", type=int, default=20, help="tokens kept per list (default 20)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--out", default=None, help="export the stored views as JSON lines to this file instead")
    parser.set_defaults(handler=_cmd_weights)


def _cmd_weights(args: argparse.Namespace) -> int:
    from neuron_explainer.activations import RecordStore
    from neuron_explainer.activations.weight_views import compute_weight_views, export_weight_views

    if args.out is not None:
        count = export_weight_views(RecordStore.open(args.records), args.out, limit=args.top)
        print(f"wrote the weight views of {count} neurons to {args.out}")
        return 0
    summary = compute_weight_views(args.records, top_k=args.top, device=args.device)
    print(f"weight views of layers {_layer_text(summary.layers)} written to {summary.path} "
          f"({summary.seconds_per_layer:.2f} s per layer, model load {summary.load_seconds:.1f} s)")
    return 0


def _add_query_filters(parser: argparse.ArgumentParser, *, limit: int | None) -> None:
    parser.add_argument("--db", default=DEFAULT_DB, help=f"database URL or SQLite file (default {DEFAULT_DB})")
    parser.add_argument("--layer", default=None, help="layers: N, A-B or a comma list")
    parser.add_argument("--neuron", default=None, help="neuron indices within the layer: N, A-B or a comma list")
    parser.add_argument("--min-score", type=float, default=None, help="lowest best score (inclusive)")
    parser.add_argument("--max-score", type=float, default=None, help="highest best score (inclusive)")
    parser.add_argument("--search", default=None, help="case-insensitive text in the explanation (literal)")
    parser.add_argument("--method", default=None, help="explainer method: token-pairs, sasc, lexicon, ngram")
    parser.add_argument("--model", default=None, help="subject model id")
    parser.add_argument("--explainer-model", default=None, help="explainer LLM model name")
    parser.add_argument("--simulator", default=None, help="simulator: all-at-once, generated, lexical, embedding")
    parser.add_argument("--run", type=int, default=None, help="only results written by this run id")
    parser.add_argument("--polarity", choices=["positive", "negative", "any"], default=None,
                        help="only this side; default: both, best per neuron and polarity; any: one best per "
                             "neuron whatever its polarity")
    parser.add_argument("--sort", choices=["score", "layer", "created"], default="score")
    parser.add_argument("--limit", type=int, default=limit, help=f"most rows (default {limit or 'all'})")
    parser.add_argument("--all", action="store_true", help="every explanation, not only the best per neuron")


def _query_from_args(args: argparse.Namespace) -> Any:
    from neuron_explainer.db import ExplanationQuery, SortOrder, parse_int_list

    return ExplanationQuery(
        layers=parse_int_list(args.layer, what="layer") if args.layer else (),
        neurons=parse_int_list(args.neuron, what="neuron") if args.neuron else (),
        min_score=args.min_score, max_score=args.max_score, search=args.search, method=args.method,
        model=args.model, explainer_model=args.explainer_model, simulator=args.simulator, run_id=args.run,
        sort=SortOrder(args.sort), limit=args.limit, best_per_neuron=not args.all, polarity=args.polarity)


def _add_query(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("query", help="list explanations (best per neuron) filtered and sorted")
    _add_query_filters(parser, limit=50)
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.set_defaults(handler=_cmd_query)


def _cmd_query(args: argparse.Namespace) -> int:
    import shutil

    from neuron_explainer.db import open_database
    from neuron_explainer.export.tabular import write_csv_rows
    from neuron_explainer.export.terminal import format_rows_table

    query = _query_from_args(args)
    with open_database(args.db, create=False) as database:
        rows = database.query(query)
    if args.format == "json":
        print(json.dumps([row.as_dict() for row in rows], indent=2, ensure_ascii=False, allow_nan=False))
    elif args.format == "csv":
        write_csv_rows(rows, sys.stdout)
    else:
        print(format_rows_table(rows, width=shutil.get_terminal_size((120, 24)).columns))
    return 0


def _add_show(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("show", help="one neuron's explanations, scores and scored windows")
    parser.add_argument("neuron", help="LAYER:NEURON")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"database URL or SQLite file (default {DEFAULT_DB})")
    parser.add_argument("--model", default=None, help="subject model id (when the database holds several)")
    parser.add_argument("--records", default=None, help="record store: also show the windows the explainer saw")
    parser.add_argument("--windows", type=int, default=3, help="scored windows to print (default 3)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(handler=_cmd_show)


def _cmd_show(args: argparse.Namespace) -> int:
    import shutil

    from neuron_explainer.activations import RecordStore
    from neuron_explainer.activations.weight_views import format_weight_view, neuron_weight_view
    from neuron_explainer.core.neurons import NeuronId
    from neuron_explainer.db import open_database
    from neuron_explainer.db.history import read_failures
    from neuron_explainer.db.causal import load_causal_scores
    from neuron_explainer.export.causal_text import causal_scores_as_dict, format_causal_scores
    from neuron_explainer.export.history_tables import format_failures, neuron_details_with_failures
    from neuron_explainer.export.terminal import format_neuron_detail, format_source_windows

    neuron = NeuronId.parse(args.neuron)
    with open_database(args.db, create=False) as database, database.reader() as connection:
        details = database.neuron_details(neuron, model=args.model)
        failures = read_failures(connection, neurons=[neuron], include_resolved=True)
        causal = load_causal_scores(database, [item.id for detail in details for stored in detail.explanations
                                               for item in stored.scores])
    if not details and not failures:
        raise UserError(f"neuron {neuron} is not in {args.db}")
    view = neuron_weight_view(RecordStore.open(args.records), neuron) if args.records else None
    if args.format == "json":
        rows = [{**row, "causal_scores": causal_scores_as_dict(causal)}
                for row in neuron_details_with_failures(neuron, details, failures)]
        if view is not None:
            rows = [{**row, "weight_view": view.as_dict()} for row in rows]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    width = shutil.get_terminal_size((120, 24)).columns
    if details:
        print(format_neuron_detail(details, windows=args.windows, width=width), end="")
        print(format_causal_scores(details, causal), end="")
    if failures:
        print(f"failures of {neuron} (open: no later run stored the missing result):")
        print(format_failures(failures, width=_terminal_width()))
    if args.records:
        print(format_source_windows(details, args.records, width=width), end="")
        if view is not None:
            print(format_weight_view(view), end="")
    return 0


def _terminal_width() -> int | None:
    """Columns of the terminal stdout is, or None (no cutting) when it is a file or a pipe."""
    import shutil

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _add_runs(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("runs", help="the runs: status, selection, totals, spend and duration")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"database URL or SQLite file (default {DEFAULT_DB})")
    parser.add_argument("--limit", type=int, default=20, help="latest runs to list (default 20)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(handler=_cmd_runs)


def _cmd_runs(args: argparse.Namespace) -> int:
    from neuron_explainer.db import open_database
    from neuron_explainer.db.history import read_runs
    from neuron_explainer.export.history_tables import format_runs

    if args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    with open_database(args.db, create=False) as database, database.reader() as connection:
        runs = read_runs(connection, limit=args.limit)
    if args.format == "json":
        print_json([run.as_dict() for run in runs])
    else:
        print(format_runs(runs, width=_terminal_width()))
    return 0


def _add_failures(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("failures", help="stored failures: neuron, stage, kind and reason",
                                 description="By default the open ones (no later run stored the missing result), "
                                             "the latest per unit of work. Transient failures are retried by the "
                                             "next run; permanent ones by `run --retry-failed`.")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"database URL or SQLite file (default {DEFAULT_DB})")
    parser.add_argument("--run", type=int, default=None, help="only failures stored by this run")
    parser.add_argument("--all", action="store_true", help="also failures a later run has fixed, and repeats")
    parser.add_argument("--limit", type=int, default=None, help="most rows (default all)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(handler=_cmd_failures)


def _cmd_failures(args: argparse.Namespace) -> int:
    from neuron_explainer.db import open_database
    from neuron_explainer.db.history import read_failures
    from neuron_explainer.export.history_tables import format_failures

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    with open_database(args.db, create=False) as database, database.reader() as connection:
        failures = read_failures(connection, run_id=args.run, include_resolved=args.all, limit=args.limit)
    if args.format == "json":
        print_json([failure.as_dict() for failure in failures])
    else:
        print(format_failures(failures, width=_terminal_width()))
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    from neuron_explainer.export import FORMATS

    parser = commands.add_parser("export", help="write results as csv, jsonl, latex, markdown, plots or html")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--out", required=True, help="output file (a directory for plots and html)")
    parser.add_argument("--records", default=None,
                        help="html: record store whose top/random windows the pages show (default: each "
                             "recording's stored path, if it still exists)")
    _add_query_filters(parser, limit=None)
    parser.add_argument("--json", action="store_true", help="print a JSON summary of what was written")
    parser.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from neuron_explainer.db import open_database
    from neuron_explainer.export import export

    query = _query_from_args(args)
    with open_database(args.db, create=False) as database:
        result = export(database, args.format, args.out, query=query, records=args.records)
    if args.json:
        print_json({"format": result.format, "paths": [str(path) for path in result.paths], "rows": result.rows,
                    "notes": list(result.notes)})
    else:
        for note in result.notes:
            print(f"note: {note}")
        print(f"wrote {result.rows} rows to {', '.join(str(path) for path in result.paths)}")
    return 0


def _add_split_size_flags(parser: argparse.ArgumentParser) -> None:
    from neuron_explainer.pipeline.config import SPLIT_DEFAULTS

    parser.add_argument("--explain-windows", type=int, default=SPLIT_DEFAULTS.explain_top,
                        help="top windows shown to the explainer")
    parser.add_argument("--score-top-windows", type=int, default=SPLIT_DEFAULTS.score_top,
                        help="held-out top windows scored")
    parser.add_argument("--score-random-windows", type=int, default=SPLIT_DEFAULTS.score_random,
                        help="random windows scored")


def _add_split_flags(parser: argparse.ArgumentParser) -> None:
    from neuron_explainer.pipeline.config import SPLIT_DEFAULTS

    parser.add_argument("--seed", type=int, default=0, help="split seed (explain and score must use the same)")
    _add_split_size_flags(parser)
    parser.add_argument("--calibrate-windows", type=int, default=SPLIT_DEFAULTS.calibrate_top,
                        help="top and random windows (each) for calibration and best-of-n")
    parser.add_argument("--split-groups", choices=["auto", "documents"], default="auto",
                        help="what a split keeps on one side: auto (whole documents; adjacent windows in stores "
                             "without document ids) or documents (refuse stores without them)")
    parser.add_argument("--concurrency", type=int, default=8, help="neurons processed at once")
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def _split_config(args: argparse.Namespace) -> Any:
    from neuron_explainer.explain import SplitConfig, SplitGroups

    return SplitConfig(seed=args.seed, explain_top=args.explain_windows, score_top=args.score_top_windows,
                       score_random=args.score_random_windows, calibrate_top=args.calibrate_windows,
                       calibrate_random=args.calibrate_windows, stratified=getattr(args, "stratified", False),
                       groups=SplitGroups(args.split_groups))


def _print_summary(args: argparse.Namespace, summary: Any) -> None:
    if args.json:
        print_json(summary.as_dict())
    else:
        print(f"wrote {summary.succeeded} results and {summary.failed} failures for {summary.neurons} neurons "
              f"to {summary.out} ({summary.prompt_tokens} prompt + {summary.completion_tokens} completion tokens)")


def _add_explain(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("explain", help="explain neurons of a record store with an LLM (JSONL out)")
    parser.add_argument("--records", required=True, help="record store directory (from `record`)")
    parser.add_argument("--neurons", default="all", help="neuron SPEC: 3:17, 3:*, 0-3:0-99, all, comma lists")
    parser.add_argument("--explainer", default="token-pairs",
                        help="explainer: token-pairs (default), sasc, ngram, or any registered one")
    parser.add_argument("--llm", default="local:default", help="explainer backend, e.g. openai:gpt-4o-mini")
    parser.add_argument("--out", required=True, help="JSONL file for explanations and failures")
    parser.add_argument("--polarity", choices=["positive", "negative", "both"], default="positive")
    parser.add_argument("--candidates", type=int, default=1, help="explanations drawn; best on the calibrate split")
    parser.add_argument("--simulator", default=None, help="simulator ranking best-of-n candidates (default: best)")
    parser.add_argument("--stratified", action="store_true",
                        help="explain windows spread over the activation range instead of at random")
    parser.add_argument("--with-weights", action="store_true",
                        help="token-pairs: also show the neuron's weight views (run `weights` on the store first)")
    _add_split_flags(parser)
    parser.set_defaults(handler=_cmd_explain)


def _cmd_explain(args: argparse.Namespace) -> int:
    from neuron_explainer.explain import ExplainConfig
    from neuron_explainer.explain_and_score import run_explain

    config = ExplainConfig(split=_split_config(args), candidates=args.candidates, with_weights=args.with_weights)
    summary = run_explain(args.records, args.neurons, llm=args.llm, out=args.out, config=config,
                          polarity=args.polarity, simulator=args.simulator, explainer=args.explainer,
                          concurrency=args.concurrency, progress=sys.stderr.isatty())
    _print_summary(args, summary)
    return 0


def _add_score(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("score", help="score explanations from a JSONL file with a registered scorer "
                                               "(simulation, detection, fuzzing; JSONL out)")
    parser.add_argument("--records", required=True, help="record store directory the explanations came from")
    parser.add_argument("--neurons", default="all", help="neuron SPEC: 3:17, 3:*, 0-3:0-99, all, comma lists")
    parser.add_argument("--explanations", required=True, help="JSONL written by `explain`")
    parser.add_argument("--scorer", default="simulation",
                        help="simulation (default: simulate the held-out windows and correlate), detection or "
                             "fuzzing (the --llm chat model classifies passages; cheaper), or any registered one")
    parser.add_argument("--simulator", default=None,
                        help="simulation scorer: all-at-once, generated, lexical, embedding or any registered one "
                             "(default: all-at-once if the backend allows, else generated; lexical without --llm)")
    parser.add_argument("--llm", default=None,
                        help="backend of the simulator or of the detection/fuzzing scorer, e.g. local:default")
    parser.add_argument("--out", required=True, help="JSONL file for scores and failures")
    parser.add_argument("--baselines", action="store_true",
                        help="simulation scorer: also score shuffled and empty explanations")
    _add_split_flags(parser)
    parser.set_defaults(handler=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from neuron_explainer.explain_and_score import run_score
    from neuron_explainer.scoring import ScoreConfig

    summary = run_score(args.records, args.neurons, explanations=args.explanations, out=args.out,
                        scorer=args.scorer, simulator=args.simulator, llm=args.llm,
                        config=ScoreConfig(split=_split_config(args)), baselines=args.baselines,
                        concurrency=args.concurrency, progress=sys.stderr.isatty())
    _print_summary(args, summary)
    return 0


def _add_serve(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="serve a site made by `export --format html` on 127.0.0.1")
    parser.add_argument("site", help="site directory")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.set_defaults(handler=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from neuron_explainer.export.html import serve_site

    def ready(url: str) -> None:
        print(f"serving {args.site} at {url} (Ctrl-C to stop)", flush=True)

    serve_site(args.site, host=args.host, port=args.port, ready=ready)
    return 0


def _comma_list(text: str | None) -> list[str | None]:
    return [None] if text is None else [item.strip() for item in text.split(",") if item.strip()]


def _add_eval(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="evaluate the methods: planted neurons (known truth) or real ones")
    kinds = parser.add_subparsers(dest="eval_kind", required=True, metavar="KIND", parser_class=type(parser))
    planted = kinds.add_parser("planted", help="recover synthetic neurons whose concept is known")
    planted.add_argument("--planted", default=None, help="suite file (TOML); default: the built-in suite")
    planted.add_argument("--explainer", default="lexicon",
                         help="explainer(s), comma-separated: token-pairs, sasc, lexicon, ngram (default lexicon)")
    planted.add_argument("--simulator", default=None,
                         help="simulator(s), comma-separated: all-at-once, generated, lexical, embedding "
                              "(default: the best the backend allows; lexical without --llm)")
    planted.add_argument("--llm", default=None, help="backend(s), comma-separated, e.g. local:default")
    planted.add_argument("--only", default=None,
                         help="evaluate only these neurons or categories, comma-separated (e.g. token,word-list)")
    planted.add_argument("--limit", type=int, default=None, help="evaluate only the first N (selected) neurons")
    planted.add_argument("--tokenizer", default="default", help="model whose tokenizer cuts the corpus windows")
    planted.add_argument("--corpus", default="python-docs", help="corpus the planted neurons read")
    planted.add_argument("--windows", type=int, default=10_000, help="most corpus windows")
    planted.add_argument("--ctx", type=int, default=64, help="tokens per window")
    planted.add_argument("--store", default=None, help="where to write the planted record store (default: cache)")
    planted.add_argument("--seed", type=int, default=0, help="split and sampling seed")
    _add_split_size_flags(planted)
    planted.add_argument("--db", default=None,
                         help="keep the run's results in this database (default: a temporary one per method)")
    planted.add_argument("--concurrency", type=int, default=8, help="neurons processed at once")
    planted.add_argument("--details", action="store_true", help="also list every neuron's explanation (table)")
    planted.add_argument("--format", choices=["table", "json"], default="table")
    planted.add_argument("--out", default=None, help="also write the JSON report to this file")
    planted.set_defaults(handler=_cmd_eval_planted)
    real = kinds.add_parser("real", help="score distributions, baseline gap, agreement and stability")
    real.add_argument("--records", required=True, help="record store the results were made from")
    real.add_argument("--db", default=DEFAULT_DB, help=f"database URL or SQLite file (default {DEFAULT_DB})")
    real.add_argument("--layer", default=None, help="only these layers: N, A-B or a comma list")
    real.add_argument("--simulator", default=None,
                      help="compute missing shuffled baselines with this simulator (lexical, embedding, ...)")
    real.add_argument("--llm", default=None, help="backend of an LLM simulator for the baselines")
    real.add_argument("--concurrency", type=int, default=8, help="neurons scored at once for baselines")
    real.add_argument("--polarity", choices=["positive", "negative"], default="positive",
                      help="which side's explanations to report (default positive)")
    real.add_argument("--format", choices=["table", "json"], default="table")
    real.add_argument("--out", default=None, help="also write the JSON report to this file")
    real.set_defaults(handler=_cmd_eval_real)


def _cmd_eval_planted(args: argparse.Namespace) -> int:
    from neuron_explainer.eval import (PlantedEvalConfig, PlantedRecordingConfig, format_planted_report,
                                       parse_methods, run_planted_eval, write_json)
    from neuron_explainer.explain import SplitConfig

    methods = parse_methods(_comma_list(args.explainer), _comma_list(args.simulator), _comma_list(args.llm))
    config = PlantedEvalConfig(
        methods=tuple(methods), planted=args.planted, store=args.store, limit=args.limit,
        only=tuple(item for item in _comma_list(args.only) if item), concurrency=args.concurrency,
        split=SplitConfig(seed=args.seed, explain_top=args.explain_windows, score_top=args.score_top_windows,
                          score_random=args.score_random_windows), db=args.db,
        recording=PlantedRecordingConfig(tokenizer=args.tokenizer, corpus=args.corpus, windows=args.windows,
                                         window_length=args.ctx, seed=args.seed))
    report = run_planted_eval(config, progress=sys.stderr.isatty())
    if args.out:
        write_json(report.as_dict(), args.out)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print(format_planted_report(report, neurons=args.details))
    return 0


def _cmd_eval_real(args: argparse.Namespace) -> int:
    from neuron_explainer.db import parse_int_list
    from neuron_explainer.eval import format_real_report, run_real_eval, write_json

    report = run_real_eval(args.records, args.db, simulator=args.simulator, llm=args.llm,
                           layers=parse_int_list(args.layer, what="layer") if args.layer else (),
                           concurrency=args.concurrency, polarity=args.polarity)
    if args.out:
        write_json(report.as_dict(), args.out)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print(format_real_report(report))
    return 0


def _add_run(commands: argparse._SubParsersAction) -> None:
    from neuron_explainer.pipeline.config import SECTIONS, config_flags

    parser = commands.add_parser(
        "run", help="the nightly run: record if needed, then explain, simulate and score; resumable",
        description="Every key of the TOML config is also a flag (`[record] top_k` is --top-k); flags win. "
                    "Re-running the same command skips finished work and resumes interrupted work.")
    parser.add_argument("--config", default=None,
                        help="TOML file with run settings, one table per section below ([run], [record], ...)")
    parser.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    parser.add_argument("--plan", action="store_true",
                        help="print the projected requests, tokens, dollars and hours of this run; spend nothing")
    groups = {section: parser.add_argument_group(f"[{section}]", model.__doc__.split(": ", 1)[-1])
              for section, model in SECTIONS.items()}
    for name, setting in config_flags().items():
        item, flag, group = setting.field, setting.option, groups[setting.section]
        doc = " ".join((item.description or "").split())
        if setting.key != name:
            doc += f" (TOML: [{setting.section}] {setting.key})"
        if name in ("explainers", "scorers"):
            single = "--" + name.removesuffix("s")
            group.add_argument(single, flag, dest=name, default=None, help=f"{doc} Comma-separated.")
        elif name == "ray":
            group.add_argument(flag, dest=name, nargs="?", const="auto", default=None, metavar="ADDRESS", help=doc)
        elif isinstance(item.default, bool):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=doc)
        elif isinstance(item.default, enum.Enum):
            group.add_argument(flag, dest=name, choices=[member.value for member in type(item.default)],
                               default=None, help=doc)
        else:
            group.add_argument(flag, dest=name, type=_flag_type(item.annotation), default=None, help=doc)
    parser.set_defaults(handler=_cmd_run)


def _mean_text(values: dict[str, Any]) -> str:
    """`mean 0.312 over 9 defined, 1 undefined (0.281 with undefined = 0), median 0.300` for a ScoreMean dict."""
    if values["mean"] is None:
        return f"no defined score ({values['undefined']} undefined)"
    text = (f"mean {values['mean']:.3f} over {values['defined']} defined, {values['undefined']} undefined "
            f"({values['mean_undefined_as_zero']:.3f} with undefined = 0)")
    return text + (f", median {values['median']:.3f}" if values.get("median") is not None else "")


def _flag_type(annotation: Any) -> Callable[[str], Any]:
    """int or float for fields annotated so (optional or not); str otherwise."""
    kinds = set(typing.get_args(annotation)) | {annotation}
    for kind in (int, float):
        if kind in kinds:
            return kind
    return str


def _cmd_run(args: argparse.Namespace) -> int:
    from neuron_explainer.pipeline import RunProgress, config_flags, load_config, run_pipeline
    from neuron_explainer.interrupts import second_interrupt_exits
    from neuron_explainer.progress import Snapshot, progress_reporter

    overrides = {name: getattr(args, name) for name in config_flags()}
    config = load_config(args.config, overrides)
    if args.plan:
        from neuron_explainer.pipeline.plan import format_plan, plan_run

        plan = plan_run(config)
        if args.json:
            print_json(plan.as_dict())
        else:
            print(format_plan(plan))
        return 0
    with progress_reporter(sys.stderr) as report:
        def on_progress(progress: RunProgress) -> None:
            report(Snapshot(done=progress.done, total=progress.total, failed=progress.failed,
                            cost_usd=progress.cost_usd, activity=progress.activity))

        with second_interrupt_exits("interrupted twice: stopped at once; results of the last few seconds that were "
                                    "not yet committed are lost, the same command redoes them"):
            summary = run_pipeline(config, progress=sys.stderr.isatty(), on_progress=on_progress)
    if args.json:
        print_json(summary.as_dict())
    else:
        print(f"run {summary.run_id}: {summary.status}"
              + (f" ({summary.stop_reason})" if summary.stop_reason else ""))
        print(f"  records   {summary.records}")
        print(f"  neurons   {summary.selected} selected, {summary.done} processed, {summary.skipped} already done")
        print(f"  results   {summary.explained} explained, {summary.scored} scored, {summary.failed} failed")
        print(f"  usage     {summary.prompt_tokens} prompt + {summary.completion_tokens} completion tokens, "
              f"${summary.cost_usd:.4f}")
        if summary.stored:
            print("  nothing left to do for this selection (--rescore redoes scores, --retry-failed permanent "
                  "failures); stored in the database:")
        for label, table in (("score", summary.scores), ("shuffled", summary.shuffled), ("stored", summary.stored)):
            for polarity, values in table.items():
                print(f"  {label:<9} {polarity}: {_mean_text(values)}")
        if summary.causal is not None:
            mean = summary.causal["mean"]
            print(f"  causal    {summary.causal['scored']} scored ({summary.causal['undefined']} undefined)"
                  + (f", mean {mean:.3f}" if mean is not None else "") + f" in {summary.causal['seconds']:.1f} s")
        print(f"  took      {summary.seconds:.1f} s")
        for line in summary.failures:
            print(f"  failed    {line}")
    if summary.status == "stopped: backend failing":
        sys.stderr.write(f"neuron-explainer: stopped: {summary.stop_reason}\n")
        return EXIT_BACKEND_DOWN
    return 0


_INTERRUPTED = {
    "run": "interrupted; every neuron finished before the interrupt is saved, run the same command to resume",
    "record": "interrupted; nothing was recorded (a store is only kept once complete), run the same command again",
    "explain": "interrupted; the results finished before the interrupt are in the --out file",
    "score": "interrupted; the results finished before the interrupt are in the --out file",
}
"""What an interrupted command leaves behind, said only where it is true."""


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
    _add_record,
    _add_show_record,
    _add_weights,
    _add_query,
    _add_show,
    _add_runs,
    _add_failures,
    _add_export,
    _add_serve,
    _add_explain,
    _add_score,
    _add_eval,
    _add_run,
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
    if not sys.stderr.isatty():
        from neuron_explainer.progress import quiet_progress_bars

        quiet_progress_bars()
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
        sys.stderr.write(f"neuron-explainer: {_INTERRUPTED.get(args.command, 'interrupted')}\n")
        if argv is None:
            _exit_without_waiting_for_abandoned_work(130)
        return 130


def _exit_without_waiting_for_abandoned_work(code: int) -> None:
    """End the installed command now: the interpreter's exit would join threads still busy with interrupted work (a
    forward pass, a slot-scoring chunk) and free a loaded model, seconds to minutes on a loaded CPU. Everything
    finished was committed while the interrupt unwound; in-process callers (tests) keep their process. The atexit
    handlers still run (a local Ray cluster is shut down, logs flushed): only the joins of worker threads are
    skipped, which the interpreter does separately."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
