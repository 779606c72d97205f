"""Benchmark the recorder: recording throughput against a bare forward pass per dtype and depth, and flat memory.

Throughput: for each dtype (float32, bfloat16) and each layer set (layers 0-3, all layers) the same batches run
through (a) a bare forward pass truncated at the deepest requested layer and (b) the recorder's step (capture every
requested layer + fold into top-k / random sample / stats), interleaved batch by batch and alternating which goes
first, so machine load hits both alike. The ratio record throughput / bare throughput should be >= 0.95; it is
printed for every dtype and layer set side by side, with the process CPU-time ratio (less sensitive to other
processes on a shared machine) and the load average.

Two window counts per layer set, from one pass: the short count (--windows 640 for up to 4 layers, --deep-windows 192
for more; the figures of earlier runs) and the night count (--night-windows 1024: a real recording has at least
1,000 windows). Each layer's first batches cost more than later ones (every window enters the top-k lists and the
samples while they fill), so a short count weighs them more than a night does; the short figure is the ratio over
the pass's first windows, the night figure over all of them. --night-windows 0 measures the short count only.

Memory: `record` runs in a fresh subprocess for N and 4N windows; the peak resident set of the recording itself
(the high-water mark is reset after the model loads) should agree within 10%: the recorder keeps nothing per
window in memory.

    .venv/bin/python scripts/bench_record.py [--quick] [--layer-sets 0-3 all] [--dtypes float32 bfloat16]
        [--night-windows 1024] [--compare-torch]

Prints human-readable lines and a final JSON line {"bench": "record", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_RATIO = 0.95
"""Recording throughput / bare forward-pass throughput to reach."""


def _batches(subject: Any, windows: int, batch_size: int) -> list:
    from neuron_explainer.corpus import open_corpus, window_batches

    corpus = open_corpus("python-docs")
    return list(window_batches(corpus.documents(), subject.tokenizer, length=64, max_windows=windows,
                               batch_size=batch_size))


def throughput(subject: Any, layers: list[int], batches: list, *, compare_torch: bool = False,
               short_windows: int | None = None) -> dict:
    """Interleaved bare-forward vs record-step timing over the same batches (wall and process CPU time).

    With `compare_torch`, a third step records with torch operations only (the recorder without fold.c), so the
    kernel's gain is measured under the same load. With `short_windows`, the figures over the first that many
    windows are also returned, under "short"."""
    from neuron_explainer.activations import native
    from neuron_explainer.activations.accumulate import RecordingAccumulator
    from neuron_explainer.activations.recorder import record_batch

    def accumulator(use_kernel: bool) -> RecordingAccumulator:
        return RecordingAccumulator({layer: subject.neurons_per_layer for layer in layers}, positions=64, top_k=40,
                                    random_k=40, quantile_tokens=2048, both=False, seed=0, use_kernel=use_kernel)

    deepest = max(layers)

    def timed(step) -> Any:
        def run(batch) -> tuple[float, float]:
            wall, cpu = time.perf_counter(), time.process_time()
            step(batch)
            return time.perf_counter() - wall, time.process_time() - cpu
        return run

    steps = {"bare": timed(lambda batch: subject.forward_only(batch, deepest_layer=deepest))}
    kernel = accumulator(True)
    steps["record"] = timed(lambda batch: record_batch(subject, kernel, batch, layers))
    if compare_torch:
        torch_ops = accumulator(False)
        steps["record_torch"] = timed(lambda batch: record_batch(subject, torch_ops, batch, layers))
    steps["bare"](batches[0])  # warm-up (allocator, kernels); not counted
    totals = {name: [0.0, 0.0] for name in steps}
    names = list(steps)
    count, short = 0, None
    for index, batch in enumerate(batches):
        # Rotate which goes first, so a load spike or a warm cache favours none.
        for name in names[index % len(names):] + names[:index % len(names)]:
            wall, cpu = steps[name](batch)
            totals[name][0] += wall
            totals[name][1] += cpu
        count += len(batch)
        if count == short_windows:
            short = _figures(count, {name: list(values) for name, values in totals.items()})
    figures = {"kernel": native.fold_library() is not None, **_figures(count, totals)}
    if short is not None and count > short_windows:
        figures["short"] = short
    return figures


def _figures(count: int, totals: dict[str, list[float]]) -> dict:
    figures = {"windows": count, "bare_windows_per_s": count / totals["bare"][0],
               "record_windows_per_s": count / totals["record"][0],
               "throughput_ratio": totals["bare"][0] / totals["record"][0],
               "cpu_time_ratio": totals["bare"][1] / totals["record"][1]}
    if "record_torch" in totals:
        figures.update({"torch_ops_throughput_ratio": totals["bare"][0] / totals["record_torch"][0],
                        "torch_ops_cpu_time_ratio": totals["bare"][1] / totals["record_torch"][1]})
    return figures


def peak_memory(model: str, layer_spec: str, windows: int, batch_size: int, dtype: str) -> float:
    """Peak RSS (MiB) of a `record` run, in a fresh process, counted from after the model has loaded."""
    with tempfile.TemporaryDirectory() as directory:
        output = subprocess.run(
            [sys.executable, __file__, "--memory-child", "--model", model, "--layers", layer_spec,
             "--windows", str(windows), "--batch-size", str(batch_size), "--dtype", dtype, "--out", str(Path(directory) / "store")],
            check=True, capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def memory_child(args: argparse.Namespace) -> None:
    from neuron_explainer.activations import RecordConfig, record
    from neuron_explainer.subject import Subject

    subject = Subject.load(args.model, dtype=args.dtype)
    # Loading a checkpoint briefly holds two copies of the weights; reset the high-water mark so the figure is
    # the recording's own peak (Linux: writing 5 to clear_refs resets VmHWM).
    resettable = Path("/proc/self/clear_refs").exists()
    if resettable:
        Path("/proc/self/clear_refs").write_text("5")
    record(RecordConfig(model=args.model, layers=args.layers, windows=args.windows, batch_size=args.batch_size,
                        dtype=args.dtype), args.out, progress=False, subject=subject)
    if resettable:
        status = Path("/proc/self/status").read_text()
        peak_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        print(peak_kib / 1024)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--layer-sets", nargs="+", default=["0-3", "all"],
                        help="layer SPECs whose recording is compared with a bare pass (default: 0-3 all)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="model dtypes compared")
    parser.add_argument("--windows", type=int, default=640, help="windows per comparison with at most 4 layers")
    parser.add_argument("--deep-windows", type=int, default=192,
                        help="windows per comparison with more than 4 layers (each costs a deeper pass)")
    parser.add_argument("--night-windows", type=int, default=1024,
                        help="windows of the night-length comparison, of which the short count is the start (0: "
                             "short count only)")
    parser.add_argument("--memory-windows", type=int, default=256, help="N for the N vs 4N memory comparison")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32", help="dtype of the memory runs")
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 idle cores)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also time the recorder with torch operations only (without fold.c), interleaved")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--layers", default="0-3", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return
    from neuron_explainer.core.neurons import parse_layers
    from neuron_explainer.subject import Subject, describe_model

    if args.quick:
        args.windows, args.deep_windows, args.night_windows, args.memory_windows = 96, 64, 0, 32
    info = describe_model(args.model)
    load_before = _load_average()
    result: dict = {"bench": "record", "model": args.model, "batch_size": args.batch_size, "threads": _threads(),
                    "load_average_start": load_before}
    print(f"load average (1/5/15 min) at start: {load_before}")
    ratios: dict[str, dict[str, Any]] = {}
    for dtype in args.dtypes:
        subject = Subject.load(args.model, dtype=dtype)
        for spec in args.layer_sets:
            layers = parse_layers(spec, info.num_layers)
            windows = args.windows if len(layers) <= 4 else args.deep_windows
            figures = throughput(subject, layers, _batches(subject, max(windows, args.night_windows), args.batch_size),
                                 compare_torch=args.compare_torch, short_windows=windows)
            ratios.setdefault(spec, {})[dtype] = figures
            print(f"layers {spec:>5} {dtype:>8} (C kernel {'on' if figures['kernel'] else 'unavailable'}; target >= "
                  f"{TARGET_RATIO}):")
            counts = [("short", figures["short"]), ("night", figures)] if "short" in figures else [("short", figures)]
            for label, part in counts:
                torch_ops = (f"; torch operations only: {part['torch_ops_throughput_ratio']:.3f} (CPU-time "
                             f"{part['torch_ops_cpu_time_ratio']:.3f})" if args.compare_torch else "")
                print(f"  {label}: first {part['windows']:>5} windows: record {part['record_windows_per_s']:7.1f} vs "
                      f"bare {part['bare_windows_per_s']:7.1f} windows/s: ratio {part['throughput_ratio']:.3f} "
                      f"(CPU-time ratio {part['cpu_time_ratio']:.3f}){torch_ops}")
            print(f"  load {_load_average()}", flush=True)
        del subject

    def short(figures: dict) -> dict:
        return figures.get("short", figures)

    result["layer_sets"] = {spec: {dtype: _rounded(figures) for dtype, figures in by_dtype.items()}
                            for spec, by_dtype in ratios.items()}
    nights = any("short" in figures for by_dtype in ratios.values() for figures in by_dtype.values())
    for label, pick in [("short", short)] + ([("night", lambda figures: figures)] if nights else []):
        print(f"\nrecording / bare forward pass, {label} count, side by side (wall-time ratio, CPU-time ratio; "
              "windows):")
        print(f"{'layers':>8} " + " ".join(f"{dtype:>24}" for dtype in args.dtypes))
        for spec, by_dtype in ratios.items():
            print(f"{spec:>8} " + " ".join(f"{pick(by_dtype[d])['throughput_ratio']:8.3f} "
                                           f"({pick(by_dtype[d])['cpu_time_ratio']:.3f}; "
                                           f"{pick(by_dtype[d])['windows']:>5})" for d in args.dtypes))
    every = [short(figures)["throughput_ratio"] for by_dtype in ratios.values() for figures in by_dtype.values()]
    result["throughput_ratio"] = min(every)
    result.update({f"throughput_ratio_{dtype}": min(short(by_dtype[dtype])["throughput_ratio"]
                                                    for by_dtype in ratios.values()) for dtype in args.dtypes})
    if nights:
        result.update({f"night_throughput_ratio_{dtype}": min(by_dtype[dtype]["throughput_ratio"]
                                                              for by_dtype in ratios.values())
                       for dtype in args.dtypes})
    if "float32" in args.dtypes and "bfloat16" in args.dtypes:
        first = next(iter(ratios.values()))
        result["bf16_bare_speedup"] = (first["bfloat16"]["bare_windows_per_s"]
                                       / first["float32"]["bare_windows_per_s"])
    if not args.skip_memory:
        small = peak_memory(args.model, args.layer_sets[0], args.memory_windows, args.batch_size, args.dtype)
        large = peak_memory(args.model, args.layer_sets[0], 4 * args.memory_windows, args.batch_size, args.dtype)
        result.update({"memory_windows": args.memory_windows, "peak_rss_mib_n": small, "peak_rss_mib_4n": large,
                       "memory_ratio": large / small})
        print(f"peak RSS while recording layers {args.layer_sets[0]}: {small:.0f} MiB for {args.memory_windows} "
              f"windows, {large:.0f} MiB for {4 * args.memory_windows} (ratio {large / small:.3f}, target <= 1.10)")
    result["load_average_end"] = _load_average()
    print(f"load average (1/5/15 min) at end: {result['load_average_end']}")
    print(json.dumps({key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}))


def _rounded(figures: dict) -> dict:
    return {key: _rounded(value) if isinstance(value, dict) else round(value, 4) if isinstance(value, float) else value
            for key, value in figures.items()}


def _load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
