"""Run every scripts/bench_*.py, collect each one's final JSON line and write docs/benchmarks.md.

Each benchmark runs in its own process (so its peak memory is its own) with `--quick` when asked. Its last stdout
line that is a JSON object with a "bench" key is its result. The report lists, per benchmark, the figures that
have a target (value, target, met or not), every other figure it printed, its wall time and peak RSS, and the
machine it all ran on. A benchmark that fails or prints no JSON is reported as such; the others still run.

    .venv/bin/python scripts/bench_all.py [--quick] [--only record,llm] [--skip viewer] [--timeout 3600]
        [--out docs/benchmarks.md] [--json results.json]

The last line printed is {"bench": "all", ...} with every collected result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


@dataclass(frozen=True)
class Target:
    """A figure a benchmark prints and the value it should reach."""

    bench: str
    """The benchmark's name (its JSON "bench")."""
    key: str
    """The figure's key in the JSON line (dots reach into nested objects)."""
    label: str
    """What it measures."""
    target: str
    """The target, as text."""
    met: Callable[[float], bool]
    """Whether a value meets it."""


TARGETS = (
    Target("record", "throughput_ratio_float32",
           "recording throughput / bare forward pass, short count (640 / 192 windows), float32 (worst layer set)",
           ">= 0.95", lambda value: value >= 0.95),
    Target("record", "throughput_ratio_bfloat16",
           "recording throughput / bare forward pass, short count (640 / 192 windows), bfloat16 (worst layer set)",
           ">= 0.95", lambda value: value >= 0.95),
    Target("record", "night_throughput_ratio_float32",
           "recording throughput / bare forward pass over 1,024 windows, float32 (worst layer set)", ">= 0.95",
           lambda value: value >= 0.95),
    Target("record", "night_throughput_ratio_bfloat16",
           "recording throughput / bare forward pass over 1,024 windows, bfloat16 (worst layer set)", ">= 0.95",
           lambda value: value >= 0.95),
    Target("record", "memory_ratio", "recorder peak RSS at 4N windows / at N windows", "<= 1.10",
           lambda value: value <= 1.10),
    Target("llm", "local_speedup", "local slot simulator: batched + prefix-cached vs naive", ">= 5x",
           lambda value: value >= 5.0),
    Target("llm", "remote_efficiency", "API concurrency utilisation (achieved / ideal requests per second)",
           ">= 0.90", lambda value: value >= 0.90),
    Target("db", "filtered_top50_ms", "filtered, sorted top-50 query (ms; database size under db below)", "< 200 ms",
           lambda value: value < 200.0),
    Target("db", "batching_speedup", "batched writer vs one transaction per record, 64 producers", "> 1x",
           lambda value: value > 1.0),
    Target("sasc", "batching_speedup", "isolated n-gram sweep: batched vs one n-gram per forward pass", "> 1x",
           lambda value: value > 1.0),
    Target("sasc", "explainer.speedup", "SASC explainer neurons per minute, batched vs one neuron and prompt at a time",
           ">= 3x", lambda value: value >= 3.0),
    Target("pipeline", "neurons_per_minute", "end-to-end neurons per minute, offline default (token-pairs + "
           "all-at-once on local:default)", ">= 0.5 / min", lambda value: value >= 0.5),
    Target("pipeline", "llm_free_neurons_per_minute", "end-to-end neurons per minute, LLM-free (lexicon + lexical)",
           ">= 100 / min", lambda value: value >= 100.0),
    Target("pipeline", "peak_rss_mib", "peak memory of a run with the local model loaded (MiB)", "<= 4096",
           lambda value: value <= 4096),
)


def machine() -> dict[str, Any]:
    """What the benchmarks ran on."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(),
                            # Other work on the machine slows every figure; ratios less so.
                            "load_average": " / ".join(f"{value:.2f}" for value in os.getloadavg())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        info.setdefault("cpu", platform.processor())
    try:
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        info["torch"] = "not installed"
    # Without importing torch (seconds): the NVIDIA driver lists its GPUs.
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
        info["gpu"] = "; ".join(listed.splitlines()) or None
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    try:
        info["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = "unknown"
    return info


def discover(directory: Path, only: set[str], skip: set[str]) -> list[Path]:
    """The bench scripts to run (by the name after `bench_`)."""
    scripts = []
    for path in sorted(directory.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if name == "all" or (only and name not in only) or name in skip:
            continue
        scripts.append(path)
    return scripts


def last_json(stdout: str) -> dict[str, Any] | None:
    """The last stdout line that is a JSON object with a "bench" key."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and "bench" in value:
                return value
    return None


def run_one(path: Path, *, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one bench script; returns its JSON (or an error), wall time and peak RSS."""
    command = [sys.executable, str(path)] + (["--quick"] if quick else [])
    started = time.perf_counter()
    with open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(command, cwd=REPO, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    # Read both pipes in threads so a chatty benchmark never blocks on a full pipe.
    output: dict[str, str] = {}
    readers = [threading.Thread(target=lambda name=name, pipe=pipe: output.__setitem__(name, pipe.read()))
               for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    for reader in readers:
        reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"script": path.name, "seconds": round(seconds, 1),
                              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "returncode": process.returncode}
    figures = last_json(output.get("stdout", ""))
    if timed_out.is_set():
        result["error"] = f"timed out after {timeout:.0f} s"
    elif process.returncode != 0:
        lines = [line for line in output.get("stderr", "").splitlines() if line.strip()]
        result["error"] = f"exit code {process.returncode}: {lines[-1] if lines else 'no message'}"
    elif figures is None:
        result["error"] = "printed no final JSON line with a \"bench\" key"
    if figures is not None:
        result["figures"] = figures
    return result


def _lookup(figures: dict[str, Any], key: str) -> Any:
    value: Any = figures
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(_flatten(value, name + "."))
        elif key != "bench":
            items.append((name, value))
    return items


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def render(results: list[dict[str, Any]], info: dict[str, Any], *, quick: bool, when: str | None = None) -> str:
    """docs/benchmarks.md."""
    when = when or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    gpu = info.get("gpu") or "none"
    lines = [
        "# Benchmarks", "",
        "Written by `scripts/bench_all.py`, which runs every `scripts/bench_*.py` "
        f"{'with `--quick` (small sizes)' if quick else '(full sizes)'} and collects each one's final JSON line. "
        "Regenerate with `.venv/bin/python scripts/bench_all.py" + (" --quick" if quick else "") + "`. "
        "Ratios are measured side by side within one run, so they hold across machines better than the "
        "absolute figures." + (" Quick sizes check that every benchmark runs; the targets are meant for full-size "
                               "runs, and small sizes understate speed-ups." if quick else ""), "",
        "## Machine", "",
        f"- measured {when}, commit {info.get('commit', 'unknown')}",
        f"- CPU: {info.get('cpu', 'unknown')}, {info.get('cpu_count')} cores; memory {info.get('memory_gib', '?')} GiB;"
        f" GPU: {gpu}",
        f"- {info.get('platform')}, Python {info.get('python')}, torch {info.get('torch')}",
        f"- load average (1 / 5 / 15 min) when the run started: {info.get('load_average', 'not recorded')}", "",
        "## Figures with a target", "",
        "| benchmark | figure | value | target | met |", "|---|---|---|---|---|",
    ]
    # A script is bench_NAME.py; its JSON names the same bench (a failed script has no JSON to ask).
    by_bench = {result["script"].removesuffix(".py").removeprefix("bench_"): result for result in results}
    by_bench.update({result["figures"]["bench"]: result for result in results if "figures" in result})
    for target in TARGETS:
        result = by_bench.get(target.bench)
        value = _lookup(result["figures"], target.key) if result and "figures" in result else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            met = "yes" if target.met(float(value)) else "**no**"
            lines.append(f"| {target.bench} | {target.label} | {_cell(value)} | {target.target} | {met} |")
        else:
            why = "not run" if result is None else "failed" if "figures" not in result else "not reported"
            lines.append(f"| {target.bench} | {target.label} | ({why}) | {target.target} | - |")
    lines += ["", "## Runs", "", "| script | seconds | peak RSS (MiB) | status |", "|---|---|---|---|"]
    for result in results:
        status = result.get("error", "ok")
        lines.append(f"| {result['script']} | {result['seconds']} | {result['peak_rss_mib']} | {_cell(status)} |")
    for result in results:
        if "figures" not in result:
            continue
        lines += ["", f"## {result['figures']['bench']} ({result['script']})", "", "| figure | value |", "|---|---|"]
        lines += [f"| {name} | {_cell(value)} |" for name, value in _flatten(result["figures"])]
    return "\n".join(lines) + "\n"


HAND_WRITTEN_MARKER = "<!-- hand-written below: bench_all.py keeps everything after this line -->"
"""Analyses written by people (profiles, projections) that a regenerated report must not lose."""


def write_report(path: Path, report: str) -> None:
    """Write the generated report, keeping the hand-written part of the existing file (from its marker on)."""
    try:
        existing = path.read_text(encoding="utf-8")
    except OSError:
        existing = ""
    if HAND_WRITTEN_MARKER in existing:
        report += "\n" + existing[existing.index(HAND_WRITTEN_MARKER):]
    path.write_text(report, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run every benchmark with --quick")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (record, llm, db, ...)")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per benchmark (default 600 with --quick, 7200 without)")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"), help="markdown report to write")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    parser.add_argument("--from-json", default=None,
                        help="write the report from a JSON file saved with --json instead of running anything")
    parser.add_argument("--scripts", default=str(SCRIPTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        write_report(Path(args.out), render(saved["results"], saved["machine"], quick=saved["quick"],
                                            when=saved.get("measured_at")))
        print(f"wrote {args.out}")
        return 0
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    timeout = args.timeout or (600.0 if args.quick else 7200.0)
    scripts = discover(Path(args.scripts), only, skip)
    if not scripts:
        print("no benchmark scripts selected", file=sys.stderr)
        return 2
    info = machine()
    measured_at = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = []
    for path in scripts:
        print(f"running {path.name}{' --quick' if args.quick else ''} ...", flush=True)
        result = run_one(path, quick=args.quick, timeout=timeout)
        status = result.get("error", "ok")
        print(f"  {result['seconds']} s, peak {result['peak_rss_mib']} MiB: {status}", flush=True)
        results.append(result)
    write_report(Path(args.out), render(results, info, quick=args.quick, when=measured_at))
    print(f"wrote {args.out}")
    summary = {"bench": "all", "quick": args.quick, "measured_at": measured_at, "machine": info, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return 0 if all("error" not in result for result in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
