"""Benchmark the recorder: recording overhead vs a bare forward pass, memory flatness in N, and dtype speed.

Throughput: the same batches run through (a) a bare forward pass truncated at the deepest requested layer and
(b) the recorder's step (capture every requested layer + fold into top-k / random sample / stats), interleaved
batch by batch and alternating which goes first, so machine load hits both alike. The ratio
record throughput / bare throughput should be >= 0.90.

Memory: `record` runs in a fresh subprocess for N and 4N windows; the peak resident set of the recording itself
(the high-water mark is reset after the model loads) should agree within 10%: the recorder keeps nothing per
window in memory.

Dtype: bare forward tokens/s in float32 vs bfloat16 on the same batches, interleaved.

Prints human-readable lines and a final JSON line {"bench": "record", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _batches(subject: Any, windows: int, batch_size: int) -> list:
    from neuron_explainer.corpus import open_corpus, window_batches

    corpus = open_corpus("python-docs")
    return list(window_batches(corpus.documents(), subject.tokenizer, length=64, max_windows=windows,
                               batch_size=batch_size))


def throughput(subject: Any, layers: list[int], batches: list) -> dict:
    """Interleaved bare-forward vs record-step timing over the same batches."""
    from neuron_explainer.activations.accumulate import RecordingAccumulator
    from neuron_explainer.activations.recorder import record_batch

    accumulator = RecordingAccumulator({layer: subject.neurons_per_layer for layer in layers}, positions=64,
                                       top_k=40, random_k=40, quantile_tokens=2048, both=False, seed=0)
    deepest = max(layers)

    def bare(batch) -> float:
        start = time.perf_counter()
        subject.forward_only(batch, deepest_layer=deepest)
        return time.perf_counter() - start

    def recording(batch) -> float:
        start = time.perf_counter()
        record_batch(subject, accumulator, batch, layers)
        return time.perf_counter() - start

    bare(batches[0])  # warm-up (allocator, kernels); not counted
    bare_seconds = record_seconds = 0.0
    for index, batch in enumerate(batches):
        if index % 2 == 0:
            bare_seconds += bare(batch)
            record_seconds += recording(batch)
        else:
            record_seconds += recording(batch)
            bare_seconds += bare(batch)
    count = sum(len(batch) for batch in batches)
    return {"windows": count, "bare_windows_per_s": count / bare_seconds,
            "record_windows_per_s": count / record_seconds, "throughput_ratio": bare_seconds / record_seconds}


def dtype_speed(subjects: dict[str, Any], layers: list[int], batches: list) -> dict:
    """Bare forward tokens/s per dtype on the same batches, interleaved."""
    seconds: dict[str, list[float]] = {name: [] for name in subjects}
    deepest = max(layers)
    for subject in subjects.values():
        subject.forward_only(batches[0], deepest_layer=deepest)
    for index, batch in enumerate(batches):
        order = list(subjects) if index % 2 == 0 else list(reversed(subjects))
        for name in order:
            start = time.perf_counter()
            subjects[name].forward_only(batch, deepest_layer=deepest)
            seconds[name].append(time.perf_counter() - start)
    tokens = sum(batch.size for batch in batches)
    return {f"{name}_tokens_per_s": tokens / sum(values) for name, values in seconds.items()} | {
        "bf16_speedup": sum(seconds["float32"]) / sum(seconds["bfloat16"]),
        "bf16_speedup_median_batch": statistics.median(
            f / b for f, b in zip(seconds["float32"], seconds["bfloat16"]))}


def peak_memory(model: str, layer_spec: str, windows: int, batch_size: int) -> float:
    """Peak RSS (MiB) of a `record` run, in a fresh process, counted from after the model has loaded."""
    with tempfile.TemporaryDirectory() as directory:
        output = subprocess.run(
            [sys.executable, __file__, "--memory-child", "--model", model, "--layers", layer_spec,
             "--windows", str(windows), "--batch-size", str(batch_size), "--out", str(Path(directory) / "store")],
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
    parser.add_argument("--layers", default="0-3", help="layer SPEC to record (default 0-3)")
    parser.add_argument("--windows", type=int, default=640, help="windows for the throughput comparison")
    parser.add_argument("--memory-windows", type=int, default=256, help="N for the N vs 4N memory comparison")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="float32", help="dtype of the throughput and memory runs")
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute on 2 idle cores)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-dtype", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args)
        return
    from neuron_explainer.core.neurons import parse_layers
    from neuron_explainer.subject import Subject, describe_model

    if args.quick:
        args.windows, args.memory_windows = 96, 32
    info = describe_model(args.model)
    layers = parse_layers(args.layers, info.num_layers)
    subject = Subject.load(args.model, dtype=args.dtype)
    batches = _batches(subject, args.windows, args.batch_size)
    result: dict = {"bench": "record", "model": args.model, "layers": args.layers, "dtype": args.dtype,
                    "batch_size": args.batch_size, "threads": _threads()}
    figures = throughput(subject, layers, batches)
    result.update(figures)
    print(f"record vs bare forward ({figures['windows']} windows, layers {args.layers}, {args.dtype}): "
          f"{figures['record_windows_per_s']:.1f} vs {figures['bare_windows_per_s']:.1f} windows/s, "
          f"ratio {figures['throughput_ratio']:.3f} (target >= 0.90)")
    if not args.skip_dtype:
        subjects = {name: subject if args.dtype == name else Subject.load(args.model, dtype=name)
                    for name in ("float32", "bfloat16")}
        speeds = dtype_speed(subjects, layers, batches[:max(2, len(batches) // 2)])
        result.update(speeds)
        print(f"bare forward: float32 {speeds['float32_tokens_per_s']:.0f} tok/s, bfloat16 "
              f"{speeds['bfloat16_tokens_per_s']:.0f} tok/s (bf16 speed-up {speeds['bf16_speedup']:.2f}x)")
        del subjects
    del subject, batches
    if not args.skip_memory:
        small = peak_memory(args.model, args.layers, args.memory_windows, args.batch_size)
        large = peak_memory(args.model, args.layers, 4 * args.memory_windows, args.batch_size)
        result.update({"memory_windows": args.memory_windows, "peak_rss_mib_n": small, "peak_rss_mib_4n": large,
                       "memory_ratio": large / small})
        print(f"peak RSS while recording: {small:.0f} MiB for {args.memory_windows} windows, {large:.0f} MiB for "
              f"{4 * args.memory_windows} (ratio {large / small:.3f}, target <= 1.10)")
    print(json.dumps({key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
