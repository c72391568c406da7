#!/usr/bin/env python
"""TFLite artifacts of one fine-tuned model: the stock converter path beside tfcompress's, same run.

Stock path = what a user writes by hand: ``TFLiteConverter`` on the model's serving function at a
fixed length, dynamic-range, and full-int8 with a representative dataset (no graph changes).
tfcompress = the same converter on the quantization-friendly graph (clipped attention mask,
explicit LayerNorm), fp16, int16x8, int8 with the LayerNorm/residual ops kept in float, and int4
weights by the LiteRT quantizer.
Every artifact runs with ai-edge-litert on the full test split; accuracy, agreement with the
Keras model, size raw/gzip and batch-1 latency p50/p90 at 1 and 2 threads (after warm-up).

    python benchmarks/export_variants.py --model runs/sst2/finetune/model --seq-length 64

Writes benchmarks/results/export_variants.json and appends to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


from _common import HERE, write_results
from tfcompress.utils import atomic_write_json

from tfcompress.data import encoding
from tfcompress.data import readers
from tfcompress.config import constants
from tfcompress.evaluate import gate
from tfcompress.evaluate import metrics
from tfcompress.export import int4
from tfcompress.export import rewrites
from tfcompress.export import tflite
from tfcompress.models import facts
from tfcompress.models import loading
from tfcompress.models.facts import reads_case
from tfcompress._compat import tf
from tfcompress.cli.options import default_data_dir

VARIANTS = {
    # name: (mode, to_tflite keyword arguments, path)
    "stock-fp32": ("fp32", {"quantization_friendly": False}, "stock"),
    "stock-dynamic": ("dynamic", {"quantization_friendly": False}, "stock"),
    "stock-int8": ("int8", {"quantization_friendly": False}, "stock"),
    "fp16": ("fp16", {}, "tfcompress"),
    "dynamic": ("dynamic", {}, "tfcompress"),
    "int8": ("int8", {}, "tfcompress"),
    "int8-float-layernorm": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS}, "tfcompress"),
    # which half of the LayerNorm group costs the accuracy: its internals, or the residual ADDs
    "int8-float-layernorm-not-add": ("int8", {"denylisted_ops": tuple(op for op in constants.LAYER_NORM_OPS if op != "ADD")},
                                     "tfcompress"),
    "int8-float-add": ("int8", {"denylisted_ops": ("ADD",)}, "tfcompress"),
    # + the attention matmuls in float: LiteRT's CPU int8 BATCH_MATMUL is slow next to XNNPACK's float one
    "int8-float-layernorm-matmul": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS + ("BATCH_MATMUL",)},
                                    "tfcompress"),
    # where the rest of the int8 error sits (mean-pooling head, 2026-11-24): the pooling SUM, or the
    # int8 activations of the Dense layers (FULLY_CONNECTED in float = dynamic-range-like)
    "int8-float-layernorm-matmul-sum": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS + ("BATCH_MATMUL", "SUM")},
                                        "tfcompress"),
    "int8-float-layernorm-matmul-fc": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS + (
        "BATCH_MATMUL", "FULLY_CONNECTED")}, "tfcompress"),
    # the pipeline's default int8 since 2026-11-25: the feed-forward outputs' outlier channels scaled down
    # before conversion and back up in float (rewrites.scale_outlier_channels), with and without
    # SOFTMAX in float too
    "int8-float-layernorm-matmul-outliers": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS + ("BATCH_MATMUL",),
                                                      "outlier_percentile": 90.0}, "tfcompress"),
    "int8-float-layernorm-matmul-softmax-outliers": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS + (
        "BATCH_MATMUL", "SOFTMAX"), "outlier_percentile": 90.0}, "tfcompress"),
    "int8-float-layernorm-matmul-softmax": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS + (
        "BATCH_MATMUL", "SOFTMAX")}, "tfcompress"),
    # + GELU in float (the default since 2026-11-25, for latency): XNNPACK runs neither int8 SOFTMAX
    # nor int8 GELU, so each one splits the delegated graph (14 partitions for the 6-layer model);
    # with both in float it is 2
    "int8-float-layernorm-matmul-softmax-gelu-outliers": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS + (
        "BATCH_MATMUL", "SOFTMAX", "GELU"), "outlier_percentile": 90.0}, "tfcompress"),
    # all-integer with the scaling applied by hand (to_tflite applies it only with a float residual path)
    "int8-outliers-by-hand": ("int8", {"scale_outliers_by_hand": 90.0}, "tfcompress"),
    "int16x8": ("int16x8", {}, "tfcompress"),
    # int4 weights in the matmuls and the word embeddings (EMBEDDING_LOOKUP), by the LiteRT quantizer: one
    # scale per 128 input weights (the default), per output channel, per 32 or 64
    "int4": ("int4", {}, "tfcompress"),
    "int4-channel": ("int4", {"block_size": 0}, "tfcompress"),
    "int4-block32": ("int4", {"block_size": 32}, "tfcompress"),
    "int4-block64": ("int4", {"block_size": 64}, "tfcompress"),
}


def convert(model, name: str, path, seq_length: int, calibration, num_calibration: int) -> str:
    """Write variant ``name`` of :data:`VARIANTS` to ``path``; returns its quantization mode."""
    mode, kwargs, _ = VARIANTS[name]
    kwargs = dict(kwargs)
    percentile = kwargs.pop("scale_outliers_by_hand", None)
    undo = lambda: None  # noqa: E731
    if percentile is not None:
        samples = tflite.representative_features(calibration, facts.model_input_names(model), seq_length,
                                                  num_calibration)
        undo = rewrites.scale_outlier_channels(model, samples, percentile)
    try:
        if mode == "int4":
            int4.to_int4_tflite(model, seq_length, output_path=path, **kwargs)
        else:
            tflite.to_tflite(model, mode, seq_length=seq_length, representative=calibration,
                             num_calibration=num_calibration, output_path=path, **kwargs)
    finally:
        undo()
    return mode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned HF directory (e.g. runs/sst2/finetune/model)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seq-length", type=int, default=64)
    parser.add_argument("--num-calibration", type=int, default=200)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--max-test-samples", type=int, default=0)
    parser.add_argument("--test-file", default="test.tsv", help="scored file in --data-dir (default: %(default)s)")
    parser.add_argument("--name", default="export_variants", help="results/<name>.json (default: %(default)s)")
    parser.add_argument("--save-dir", default=None,
                        help="keep the artifacts here as <variant>.tflite (default: a temporary folder), e.g. to "
                             "time them again with `tfcompress bench --rounds`")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir or default_data_dir("sst2"))
    tokenizer = loading.load_tokenizer(args.model)
    model = loading.load_model(args.model)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    train = readers.read_text_classification(data_dir / "train.tsv", label_names=label_names)
    test = readers.read_text_classification(data_dir / args.test_file, label_names=label_names)
    if args.max_test_samples:
        test = readers.TextClassificationExamples(test.texts[:args.max_test_samples],
                                                      test.labels[:args.max_test_samples], label_names, "head")
    calibration = encoding.encode(tokenizer, readers.TextClassificationExamples(
        train.texts[:5000], train.labels[:5000], label_names, "train head"), max_length=args.seq_length,
        case_segments=reads_case(model))
    test_data = encoding.encode(tokenizer, test, max_length=args.seq_length, case_segments=reads_case(model))

    @tf.function(reduce_retracing=True)
    def keras_predict(features):
        return model(features, training=False).logits

    keras_fn = lambda f: keras_predict({k: tf.constant(v) for k, v in f.items()}).numpy()  # noqa: E731
    keras_logits = metrics.predict_logits(keras_fn, test_data, pad_to=args.seq_length, progress=False)
    keras_metrics = metrics.compute_metrics("sequence", keras_logits, test_data.labels, label_names)
    print(f"keras fp32: accuracy {keras_metrics['accuracy']:.4f}", flush=True)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.save_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in [v for v in args.variants.split(",") if v]:
            mode, _, path_kind = VARIANTS[name]
            path = out_dir / f"{name}.tflite"
            try:
                convert(model, name, path, args.seq_length, calibration, args.num_calibration)
            except Exception as error:  # record, keep measuring the others
                rows[name] = {"path": path_kind, "error": f"{type(error).__name__}: {str(error)[:300]}"}
                print(f"{name}: failed: {rows[name]['error']}", flush=True)
                continue
            record = gate.artifact_record(name, path, test_data, keras_logits, keras_metrics, quantization=mode,
                                             seq_length=args.seq_length, latency_runs=args.latency_runs)
            record["path"] = path_kind
            rows[name] = record
            # partial results survive an interrupted run (int16x8 runs ~1.5 s per sentence on CPU)
            atomic_write_json(HERE / "results" / f"{args.name}.partial.json",
                              {"keras": keras_metrics, "artifacts": rows})
            print(f"{name}: accuracy {record['metrics']['accuracy']:.4f} agreement {record['agreement']:.4f} "
                  f"size {record['size_bytes'] / 1e6:.1f} MB gzip {record['gzip_bytes'] / 1e6:.1f} MB "
                  f"p50 2 threads {record['latency_ms']['threads2']['p50']:.2f} ms", flush=True)
    stock_dynamic = rows.get("stock-dynamic", {})
    lines = ["| artifact | path | accuracy | Δ vs Keras (pt) | agreement | size MB | gzip MB | p50 ms 1 thr | p50 ms 2 thr | p50 ratio vs stock dynamic |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| Keras fp32 | - | {keras_metrics['accuracy']:.4f} | 0 | 1 | - | - | - | - | - |"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | {row['path']} | failed: {row['error'][:80]} |||||||")
            continue
        accuracy = row["metrics"]["accuracy"]
        ratio = (row["latency_ms"]["threads2"]["p50"] / stock_dynamic["latency_ms"]["threads2"]["p50"]
                 if "latency_ms" in stock_dynamic else float("nan"))
        lines.append(f"| {name} | {row['path']} | {accuracy:.4f} | {100 * (accuracy - keras_metrics['accuracy']):+.1f} | "
                     f"{row['agreement']:.4f} | {row['size_bytes'] / 1e6:.1f} | {row['gzip_bytes'] / 1e6:.1f} | "
                     f"{row['latency_ms']['threads1']['p50']:.2f} | {row['latency_ms']['threads2']['p50']:.2f} | {ratio:.2f} |")
    lines.append("")
    lines.append(f"Model: `{args.model}`; {len(test_data)} sentences of {args.test_file} at seq {args.seq_length}; "
                 f"{args.num_calibration} calibration sentences from train.tsv.")
    write_results(args.name, "python benchmarks/export_variants.py " + " ".join(sys.argv[1:]),
                  {"keras": keras_metrics, "artifacts": rows, "settings": vars(args)}, lines)
    (HERE / "results" / f"{args.name}.partial.json").unlink(missing_ok=True)  # the run finished
    print("\n".join(lines))


if __name__ == "__main__":
    main()
