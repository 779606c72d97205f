"""Benchmark recording at real model widths without real weights: windows/s per layer and peak memory.

Models are built from the configurations written below (Llama-3.2-1B; Llama-3-8B) with random weights and
transformers' default initialisation: no download. Recording cost depends on the shapes (width, MLP size,
vocabulary, heads), not on the weight values, so the throughput and memory are those of the trained models. A
model is cut to `--layers` blocks (same width, vocabulary and MLP size), because an 8B model does not fit a small
machine whole and the per-layer cost is what a projection needs.

Each configuration runs in a fresh process (its peak memory is its own): the same batches of random token ids go
through a bare forward pass and through the recorder's step (all kept layers), interleaved, and it reports
windows/s, layer-windows/s (windows/s x layers recorded: the per-layer rate), the recording / bare ratio, the
weights' size and the peak memory (resident set on CPU, allocator peak on CUDA). From the per-layer rate it
projects the hours to record every layer of the full model over 1M windows on the device it ran on.

    .venv/bin/python scripts/bench_sizes.py [--quick] [--configs llama-3.2-1b llama-3-8b] [--layers 2]
        [--windows 32] [--batch-size 8] [--dtype float32] [--device cpu|cuda]

Prints human-readable lines and a final JSON line {"bench": "sizes", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

WINDOW_LENGTH = 64
PROJECTED_WINDOWS = 1_000_000

# Shapes from the published config.json files of meta-llama/Llama-3.2-1B and meta-llama/Meta-Llama-3-8B.
CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True, "hidden_act": "silu",
        "bos_token_id": 128000, "eos_token_id": 128001,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    },
    "llama-3-8b": {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "bos_token_id": 128000, "eos_token_id": 128001,
    },
}


def build_subject(name: str, layers: int, dtype: str, device: str) -> tuple[Any, int]:
    """A Subject over a random-weight bare Llama backbone cut to `layers` blocks; (subject, full depth)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    from neuron_explainer.subject.hooks import resolve_hook_point
    from neuron_explainer.subject.loading import LoadedModel
    from neuron_explainer.subject.subject import Subject

    settings = dict(CONFIGS[name])
    full_depth = settings["num_hidden_layers"]
    settings["num_hidden_layers"] = min(layers, full_depth)
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(**settings)).to(dtype=getattr(torch, dtype), device=device).eval()
    # Only the BOS id matters to the special-token policy; the windows are random token ids.
    tokenizer = types.SimpleNamespace(bos_token_id=settings["bos_token_id"])
    loaded = LoadedModel(model=model, tokenizer=tokenizer, model_id=f"random:{name}", fingerprint="random",
                         is_encoder=False)
    return Subject(loaded, resolve_hook_point(model)), full_depth


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration in this process: bare vs record throughput and peak memory."""
    import torch

    from neuron_explainer.activations.accumulate import RecordingAccumulator
    from neuron_explainer.activations.recorder import record_batch

    cuda = args.device.startswith("cuda")
    started = time.perf_counter()
    subject, full_depth = build_subject(args.config, args.layers, args.dtype, args.device)
    build_s = time.perf_counter() - started
    weights_mib = sum(p.numel() * p.element_size() for p in subject.model.parameters()) / 2**20
    layers = list(range(subject.num_layers))
    generator = torch.Generator().manual_seed(1)
    vocab = CONFIGS[args.config]["vocab_size"]
    batches = [torch.randint(0, vocab, (args.batch_size, WINDOW_LENGTH), generator=generator)
               for _ in range(max(1, args.windows // args.batch_size))]
    accumulator = RecordingAccumulator({layer: subject.neurons_per_layer for layer in layers},
                                       positions=WINDOW_LENGTH, top_k=40, random_k=40, quantile_tokens=2048,
                                       both=False, seed=0, device=subject.loaded.device)

    def timed(step: Any) -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def bare(batch: Any) -> float:
        return timed(lambda: subject.forward_only(batch, deepest_layer=layers[-1]))

    def recording(batch: Any) -> float:
        return timed(lambda: record_batch(subject, accumulator, batch, layers))

    _reset_peak(cuda)
    bare(batches[0])  # warm-up: kernels, allocator
    seconds = {"bare": 0.0, "record": 0.0}
    for index, batch in enumerate(batches):
        steps = (("bare", bare), ("record", recording)) if index % 2 == 0 else (("record", recording), ("bare", bare))
        for name, step in steps:
            seconds[name] += step(batch)
    windows = len(batches) * args.batch_size
    record_per_s = windows / seconds["record"]
    layer_windows_per_s = record_per_s * len(layers)
    hours_full_model = PROJECTED_WINDOWS * full_depth / layer_windows_per_s / 3600
    return {
        "config": args.config, "device": args.device, "dtype": args.dtype, "layers_kept": len(layers),
        "full_depth": full_depth, "hidden": CONFIGS[args.config]["hidden_size"],
        "mlp_neurons_per_layer": subject.neurons_per_layer, "vocab": vocab, "windows": windows,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "build_s": round(build_s, 1),
        "weights_mib": round(weights_mib, 1), "bare_windows_per_s": round(windows / seconds["bare"], 3),
        "record_windows_per_s": round(record_per_s, 3), "layer_windows_per_s": round(layer_windows_per_s, 3),
        "record_vs_bare": round(seconds["bare"] / seconds["record"], 3), "peak_mib": round(_peak_mib(cuda), 1),
        "projected_hours_all_layers_1m_windows": round(hours_full_model, 1),
    }


def _reset_peak(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_mib(cuda: bool) -> float:
    """Peak memory of the process: CUDA allocator peak on a GPU, else the resident-set high-water mark."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def _load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--layers", type=int, default=2, help="blocks kept from each configuration (default 2)")
    parser.add_argument("--windows", type=int, default=32, help="windows per configuration (default 32)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="1 layer, 8 windows")
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.layers, args.windows = 1, 8
    if args.config:
        print(json.dumps(measure(args)))
        return
    rows = []
    for name in args.configs:
        load = _load_average()
        command = [sys.executable, __file__, "--config", name, "--layers", str(args.layers), "--windows",
                   str(args.windows), "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--device",
                   args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1]) | {"load_average_start": load,
                                                              "load_average_end": _load_average()}
        rows.append(row)
        print(f"{name} ({row['layers_kept']} of {row['full_depth']} layers, {row['mlp_neurons_per_layer']} neurons "
              f"per layer, {args.dtype} on {args.device}): {row['record_windows_per_s']} windows/s recording "
              f"({row['layer_windows_per_s']} layer-windows/s), bare {row['bare_windows_per_s']} windows/s, ratio "
              f"{row['record_vs_bare']}; weights {row['weights_mib']:.0f} MiB, peak {row['peak_mib']:.0f} MiB; "
              f"all {row['full_depth']} layers over 1M windows: {row['projected_hours_all_layers_1m_windows']} h "
              f"(load {load} -> {row['load_average_end']})", flush=True)
    print(json.dumps({"bench": "sizes", "device": args.device, "dtype": args.dtype,
                      "configs": {row["config"]: row for row in rows}}))


if __name__ == "__main__":
    main()
