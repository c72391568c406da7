#!/usr/bin/env python
"""Integer-only artifacts of one released model beside its float-island int8 and TFLite's int16x8, same run.

For a finished run folder: the Keras model the artifacts came from (the export stage's source), its
released ``int8`` artifact as it is, and freshly made ``integer`` variants (LiteRT quantizer:
``integer`` = the default recipe with outlier scaling, ``integer-plain`` without it, ``integer-int16``
every op int16, ``integer-fc`` only FULLY_CONNECTED in int8, ``integer-learned`` the default recipe with the ranges a
``qat.target=integer`` QAT run saved beside the source model, ``integer-smooth<alpha>`` (e.g.
``integer-smooth0.5``) the default recipe plus scale migration from the LayerNorm outputs into the
Dense kernels that read them, ``smoothing.migrate_activation_scales``) and ``int16x8`` (stock converter). Each
runs with ai-edge-litert on the given SST-2 files: accuracy, agreement with Keras, max logit
difference, integer-only verdict and MAC share from the graph, the int8 input step (quantization
scale) of every FULLY_CONNECTED (median and max), batch-1 latency at 2 threads.

    nice -n 10 python benchmarks/integer_variants.py --run-dir runs/sst2 \\
        --variants integer,int8 --files test.tsv,test1821.tsv,validation.tsv

About 8 minutes for those on 2 CPU cores (3-layer student, seq 44); int16 kernels take ~100 ms per
sentence there, so give ``integer-int16`` and ``int16x8`` test.tsv only. Writes
benchmarks/results/integer_variants.json, or integer_variants-<tag>.json with ``--tag`` (RESULTS.md is
left alone: ``append_markdown=False``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import write_results
from tfcompress.cli.options import default_data_dir
from tfcompress.compress import qat_integer
from tfcompress.data import encoding, readers
from tfcompress.evaluate import integer, metrics, runtime
from tfcompress.export import litert_quantizer, tflite
from tfcompress.models import loading
from tfcompress.models.facts import reads_case
from tfcompress.pipeline.stages.common import keras_predict_fn

RECIPES = {"integer": ({}, 90.0), "integer-plain": ({}, None), "integer-int16": ({"int8_ops": ()}, 90.0),
           "integer-fc": ({"int8_ops": ("FULLY_CONNECTED",)}, 90.0)}


SMOOTH_PREFIX = "integer-smooth"


def make_artifact(name, model, seq_length, train, folder, run_dir, source) -> Path:
    if name == "int8":
        return run_dir / "export" / "int8.tflite"  # the released float-island artifact, as it is
    path = folder / f"{name}.tflite"
    if name == "integer-learned":  # a model QAT-trained with qat.target=integer: its learned ranges
        learned = qat_integer.read_ranges(source)
        if not learned:
            raise SystemExit(f"integer-learned: {source} holds no learned ranges (QAT with --set qat.target=integer)")
        litert_quantizer.to_integer_tflite(model, seq_length, train, output_path=path,
                                           outlier_percentile=RECIPES["integer"][1], learned_ranges=learned)
        return path
    if name in RECIPES or name.startswith(SMOOTH_PREFIX):
        fields, percentile = RECIPES.get(name, RECIPES["integer"])
        alpha = float(name[len(SMOOTH_PREFIX):]) if name.startswith(SMOOTH_PREFIX) else None
        litert_quantizer.to_integer_tflite(model, seq_length, train, output_path=path, outlier_percentile=percentile,
                                           recipe=litert_quantizer.IntegerRecipe(**fields), smooth_alpha=alpha)
    else:
        tflite.to_tflite(model, name, seq_length=seq_length, representative=train, output_path=path)
    return path


def fully_connected_input_steps(path) -> dict:
    """Median and max quantization step of the artifact's FULLY_CONNECTED inputs (None when all are float)."""
    steps = integer.fully_connected_steps(path)
    return {"count": len(steps), "median": float(np.median(steps)) if steps else None,
            "max": float(np.max(steps)) if steps else None}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir("sst2"),
                        help="SST-2 folder (train.tsv and the --files); default ../shared/data/sst2")
    parser.add_argument("--variants", default="integer,int8")
    parser.add_argument("--files", default="test.tsv")
    parser.add_argument("--source-model", default=None,
                        help="the Keras model (default: the export stage's source in report.json)")
    parser.add_argument("--seq-length", type=int, default=0, help="default: the export stage's")
    parser.add_argument("--tag", default="", help="write benchmarks/results/integer_variants-<tag>.json")
    args = parser.parse_args()
    if args.data_dir is None:
        parser.error("no ../shared/data/sst2 here: pass --data-dir")
    report = json.loads((args.run_dir / "report.json").read_text())
    export = next((stage for stage in report["stages"] if stage["name"] == "export"), {})
    source = args.source_model or export.get("source_model")
    seq_length = args.seq_length or int(export.get("seq_length") or 0)
    if not source or not seq_length:
        parser.error(f"{args.run_dir}/report.json has no export stage: pass --source-model and --seq-length")
    model, tokenizer = loading.load_model(source), loading.load_tokenizer(source)
    train = encoding.encode(tokenizer, readers.read_text_classification(args.data_dir / "train.tsv"), max_length=64,
                            case_segments=reads_case(model))
    splits = {}
    for name in args.files.split(","):
        data = encoding.encode(tokenizer, readers.read_text_classification(args.data_dir / name), max_length=seq_length,
                               case_segments=reads_case(model))
        logits = metrics.predict_logits(keras_predict_fn(model), data, pad_to=seq_length, progress=False)
        splits[name] = (data, logits)
    keras = {name: float(np.mean(np.argmax(logits, -1) == np.asarray(data.labels))) for name, (data, logits) in splits.items()}
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants.split(","):
            started = time.time()
            path = make_artifact(variant, model, seq_length, train, Path(folder), args.run_dir, source)
            check = integer.integer_report(path)
            artifact = runtime.TFLiteModel(path, num_threads=2)
            row = {"integer_only": check["integer_only"], "offenders": len(check["offenders"]),
                   "mac_share": check["mac_share"], "make_seconds": round(time.time() - started, 1),
                   "fully_connected_input_step": fully_connected_input_steps(path),
                   "size_bytes": path.stat().st_size, "latency_ms_2threads": artifact.latency(warmup=5, runs=50)}
            for name, (data, keras_logits) in splits.items():
                logits = metrics.predict_logits(artifact.predict, data, pad_to=seq_length, progress=False)
                row[name] = {"accuracy": float(np.mean(np.argmax(logits, -1) == np.asarray(data.labels))),
                             "agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(keras_logits, -1))),
                             "max_abs_logit_diff": float(np.abs(logits - keras_logits).max())}
            rows[variant] = row
            print(variant, json.dumps(row), flush=True)
    lines = [f"- {variant}: integer-only {row['integer_only']}, " + ", ".join(
        f"{name} {row[name]['accuracy']:.4f} (Keras {keras[name]:.4f}, agreement {row[name]['agreement']:.4f})"
        for name in splits) for variant, row in rows.items()]
    write_results("integer_variants" + (f"-{args.tag}" if args.tag else ""), "python benchmarks/integer_variants.py " + " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items() if value not in (None, 0, "")),
        {"source_model": source, "seq_length": seq_length, "keras": keras, "variants": rows}, lines,
        append_markdown=False)


if __name__ == "__main__":
    main()
