#!/usr/bin/env python
"""How cost grows: TFLite latency vs sequence length, and Trainer throughput vs batch size.

Latency: for each length L in ``--lengths`` and mode in ``--modes``, the model is exported with
tfcompress's own ``tflite.to_tflite`` exactly as the pipeline's export stage does (int8 with the
pipeline's default float ops, ``ExportStageConfig().int8_float_ops``; calibration on
``--calibration-samples`` SST-2 training sentences) and run with ``tfcompress.runtime`` at batch 1,
``--threads`` threads, full-length input, ``--latency-warmup`` untimed then ``--runs`` timed runs.

Throughput: the tfcompress Trainer (timed as in benchmarks/train_throughput.py: per-step wall time
of ``--steps`` steps after ``--warmup`` untimed ones) at each batch size in ``--batches``, on the
same sample of SST-2 training sentences (length-bucketed batches padded per batch).

Both are fitted with a power law ``y = a * x**b`` (least squares on log-log axes); ``b`` is the
growth exponent (1: linear; latency above 1 means attention's quadratic term shows).

    python benchmarks/scaling.py
    python benchmarks/scaling.py --smoke --results-dir /tmp/results    # tiny model, seconds

Writes benchmarks/results/scaling.json and appends to benchmarks/RESULTS.md (``--smoke``:
scaling-smoke.json only).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from _common import fit_power_law, smoke_data_dir, smoke_model_dir, write_results
from train_throughput import ours_round

from tfcompress.data import encoding
from tfcompress.data import readers
from tfcompress.evaluate import runtime
from tfcompress.export import tflite
from tfcompress.models import facts
from tfcompress.models import loading
from tfcompress.config.recipe import ExportStageConfig
from tfcompress.cli.options import default_data_dir


def _ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="HF model directory or hub name (default: the packaged all-MiniLM-L6-v2 with a "
                             "new 2-label head)")
    parser.add_argument("--data-dir", default=None, help="SST-2 folder with train.tsv (default: ../shared/data/sst2)")
    parser.add_argument("--lengths", type=_ints, default=[16, 32, 64, 128, 256],
                        help="comma-separated sequence lengths of the artifacts (default: 16,32,64,128,256)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated export modes (default: fp32,dynamic,int8; --smoke: fp32,int8)")
    parser.add_argument("--threads", type=int, default=2, help="interpreter threads (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 runs per artifact (default: %(default)s)")
    parser.add_argument("--latency-warmup", type=int, default=10,
                        help="untimed runs before timing (default: %(default)s)")
    parser.add_argument("--calibration-samples", type=int, default=100,
                        help="training sentences for int8 calibration (default: %(default)s)")
    parser.add_argument("--batches", type=_ints, default=[8, 16, 32, 64],
                        help="comma-separated training batch sizes (default: 8,16,32,64)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per batch size (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed training steps first (tracing) (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and data, lengths 16,32, batches 4,8, few runs; writes scaling-smoke.json, "
                             "not RESULTS.md")
    parser.add_argument("--results-dir", default=None, help="where the JSON goes (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.batches = [16, 32], [4, 8]
        args.runs, args.latency_warmup, args.steps, args.warmup = 5, 2, 3, 1
        args.calibration_samples = min(args.calibration_samples, 8)
    args.modes = [m for m in (args.modes or ("fp32,int8" if args.smoke else "fp32,dynamic,int8")).split(",") if m]
    return args


def measure_latency(model, calibration, lengths, modes, threads, runs, warmup, folder) -> dict:
    """``{mode: {length: record}}`` for artifacts exported as the pipeline's export stage does."""
    float_ops = ExportStageConfig().int8_float_ops
    out = {mode: {} for mode in modes}
    for length in lengths:
        for mode in modes:
            path = Path(folder) / f"{mode}-{length}.tflite"
            tflite.to_tflite(model, mode, seq_length=length,
                             representative=calibration if mode in ("int8", "int16x8") else None,
                             num_calibration=len(calibration), denylisted_ops=float_ops if mode == "int8" else (),
                             output_path=path)
            latency = runtime.TFLiteModel(path, num_threads=threads).latency(warmup=warmup, runs=runs)
            out[mode][length] = {"latency_ms": latency, **runtime.sizes(path)}
            path.unlink()
            print(f"{mode} L={length}: p50 {latency['p50']:.2f} ms", flush=True)
    return out


def measure_throughput(model, train, batches, steps, warmup, folder) -> dict:
    """``{batch: record}``: Trainer samples/s over the timed steps."""
    out = {}
    for batch in batches:
        times = ours_round(model, train, batch, steps, warmup, Path(folder) / f"train-{batch}")
        out[batch] = {"samples_per_second": batch * len(times) / float(np.sum(times)),
                      "step_seconds_p50": float(np.median(times)), "timed_steps": len(times)}
        print(f"batch {batch}: {out[batch]['samples_per_second']:.1f} samples/s", flush=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    modes = args.modes
    with tempfile.TemporaryDirectory() as tmp:
        model_path = smoke_model_dir(tmp) if args.smoke and not args.model else args.model
        data_dir = Path(args.data_dir or (smoke_data_dir(tmp, "sst2") if args.smoke else default_data_dir("sst2")))
        examples = readers.read_text_classification(data_dir / "train.tsv")
        order = np.random.default_rng(0).permutation(len(examples))
        count = max(args.batches) * (args.steps + args.warmup) + args.calibration_samples
        picked = [order[i % len(order)] for i in range(count)]
        sample = readers.TextClassificationExamples([examples.texts[i] for i in picked],
                                                        [examples.labels[i] for i in picked],
                                                        examples.label_names, "sst2 train sample")
        model = loading.load_model(model_path, task="sequence", labels=examples.label_names)
        encoded = encoding.encode(loading.load_tokenizer(model_path), sample, max_length=max(args.lengths),
                                     input_names=facts.model_input_names(model))
        calibration = encoded.select(np.arange(args.calibration_samples))
        train = encoded.select(np.arange(args.calibration_samples, len(encoded)))
        latency = measure_latency(model, calibration, args.lengths, modes, args.threads, args.runs,
                                  args.latency_warmup, tmp)
        throughput = measure_throughput(model, train, args.batches, args.steps, args.warmup, tmp)

    fits = {mode: fit_power_law(args.lengths, [latency[mode][L]["latency_ms"]["p50"] for L in args.lengths])
            for mode in modes}
    throughput_fit = fit_power_law(args.batches, [throughput[b]["samples_per_second"] for b in args.batches])
    result = {"settings": vars(args), "model": model_path or loading.DEFAULT_MODEL,
              "latency": {mode: {str(L): r for L, r in rows.items()} for mode, rows in latency.items()},
              "latency_fit": fits,
              "throughput": {str(b): r for b, r in throughput.items()}, "throughput_fit": throughput_fit,
              "mean_train_tokens": float(np.mean(train.lengths()))}
    lines = [f"Latency p50 (ms), batch 1, {args.threads} threads, {args.runs} runs after {args.latency_warmup}:", "",
             "| mode | " + " | ".join(f"L={L}" for L in args.lengths) + " | fitted b (latency ∝ L^b) |",
             "|---|" + "---|" * (len(args.lengths) + 1)]
    for mode in modes:
        lines.append(f"| {mode} | " + " | ".join(f"{latency[mode][L]['latency_ms']['p50']:.2f}" for L in args.lengths)
                     + f" | {fits[mode]['b']:.2f} |")
    lines += ["", f"Trainer samples/s ({args.steps} steps after {args.warmup} warm-up, SST-2 sample, mean "
                  f"{result['mean_train_tokens']:.1f} tokens, per-batch padding):", "",
              "| batch | " + " | ".join(str(b) for b in args.batches) + " | fitted b (samples/s ∝ batch^b) |",
              "|---|" + "---|" * (len(args.batches) + 1),
              "| samples/s | " + " | ".join(f"{throughput[b]['samples_per_second']:.1f}" for b in args.batches)
              + f" | {throughput_fit['b']:.2f} |"]
    name = "scaling-smoke" if args.smoke else "scaling"
    path = write_results(name, "python benchmarks/scaling.py " + " ".join(sys.argv[1:] if argv is None else argv),
                         result, lines, results_dir=args.results_dir, append_markdown=not args.smoke)
    print("\n".join(lines) + f"\n\nwrote {path}")
    return path


if __name__ == "__main__":
    main()
