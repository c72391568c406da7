"""The parity gate and the artifact record: score an artifact with LiteRT against its Keras model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tfcompress.evaluate.integer import record_fields
from tfcompress.evaluate.metrics import agreement, compute_metrics, predict_logits, primary_metric
from tfcompress.evaluate.runtime import TFLiteModel, float_ops, sizes
from tfcompress.utils import get_logger

log = get_logger("runtime")
# --------------------------------------------------------------------------------------------
# Evaluation record and parity gate


def parity_gate(artifact_metric: float, reference_metric: float, accuracy_budget: float = 1.0) -> bool:
    """True if the artifact's metric is at most ``accuracy_budget`` points below the reference.

    Args:
        artifact_metric: the artifact's metric in [0, 1].
        reference_metric: the Keras model's metric in [0, 1].
        accuracy_budget: allowed drop in percentage points (1.0 = one point).
    """
    if accuracy_budget < 0:
        raise ValueError(f"accuracy_budget={accuracy_budget!r}: must be >= 0 points")
    # 1e-9 absorbs float noise in metrics that are exactly at the budget.
    return (reference_metric - artifact_metric) * 100.0 <= accuracy_budget + 1e-9


def logit_error(logits, keras_logits, labels, task: str) -> dict:
    """Mean and max absolute difference between an artifact's logits and the Keras model's, over the
    scored rows (sequence: every example; token: positions whose label is not IGNORE_INDEX)."""
    diffs = []
    for index, (ours, theirs) in enumerate(zip(logits, keras_logits)):
        ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
        if task == "token":
            label = np.asarray(labels[index])
            width = min(len(ours), len(theirs), len(label))
            keep = label[:width] >= 0
            ours, theirs = ours[:width][keep], theirs[:width][keep]
        diffs.append(np.abs(ours - theirs).reshape(-1))
    values = np.concatenate(diffs) if diffs else np.zeros(0, np.float32)
    if not values.size:
        return {"mean": 0.0, "max": 0.0}
    return {"mean": round(float(values.mean()), 6), "max": round(float(values.max()), 6)}


def artifact_record(name: str, path, data, keras_logits, reference_metrics: dict,
                    quantization: str, seq_length: int, task: str = "sequence",
                    sparsity: float = 0.0, accuracy_budget: float = 1.0,
                    latency_runs: int = 100, latency_warmup: int = 10, output_dir=None,
                    batch_size: int = 32, min_agreement: float = 0.0, agreement_data=None,
                    agreement_keras_logits=None, agreement_split: str = "test") -> dict:
    """Evaluate one artifact on ``data`` and build its ``report.json`` record.

    Args:
        name: artifact name (``"int8"``).
        path: the ``.tflite`` file.
        data: ``EncodedData`` eval set (the full eval set for reported numbers).
        keras_logits: the Keras model's logits on ``data`` (same order), for agreement.
        reference_metrics: the Keras model's metrics (``compute_metrics`` output).
        quantization: mode name recorded in the record.
        seq_length: the artifact's sequence length.
        task: ``sequence`` or ``token``.
        sparsity: weight sparsity of the exported model (from ``prune.sparsity_report``).
        accuracy_budget: parity-gate budget in points of the primary metric.
        latency_runs / latency_warmup: timing settings.
        output_dir: paths in the record are made relative to it when given.
        batch_size: evaluation batch size (the artifact still runs each row at batch 1).
        min_agreement: the gate's agreement floor.
        agreement_data / agreement_keras_logits / agreement_split: a larger unlabelled-use split (and
            the Keras logits on it) to measure agreement and logit error on instead of ``data``
            (agreement needs no labels; SST-2's validation file has 6,735 sentences, its test file
            872); ``agreement_test`` keeps the value on ``data``.

    Returns:
        The record: name, path, format, quantization, seq_length, sparsity,
        size_bytes, gzip_bytes, metrics, agreement, latency_ms, float_ops, passed
        (plus reference_metric and primary_metric for the reader; xnnpack_partitions: how many
        pieces the CPU runtime's XNNPACK delegate runs, see :func:`xnnpack_partitions`; ``integer_only``
        and ``integer_check``: the integer-only verdict read from the graph, its offending ops and the
        per-op-type precision table, see :func:`tfcompress.evaluate.integer.integer_report`).
    """
    artifact = TFLiteModel(path, num_threads=2)
    logits = predict_logits(artifact.predict, data, batch_size=batch_size, pad_to=seq_length,
                            progress=False)
    metrics = compute_metrics(task, logits, data.labels, data.label_names)
    metric_name = primary_metric(task)
    on_split = (logits, keras_logits, data.labels)
    if agreement_data is not None:
        split_logits = predict_logits(artifact.predict, agreement_data, batch_size=batch_size, pad_to=seq_length,
                                      progress=False)
        on_split = (split_logits, agreement_keras_logits, agreement_data.labels)
    example = data.padded_batch(np.arange(1), pad_to=seq_length)[0]
    latency = {}
    for threads in (1, 2):
        timed = TFLiteModel(path, num_threads=threads)
        stats = timed.latency(example, warmup=latency_warmup, runs=latency_runs)
        latency[f"threads{threads}"] = {"p50": round(stats["p50"], 3), "p90": round(stats["p90"], 3)}
    shown_path = Path(path)
    if output_dir is not None:
        try:
            shown_path = shown_path.resolve().relative_to(Path(output_dir).resolve())
        except ValueError:
            pass
    record = {
        "name": name,
        "path": str(shown_path),
        "format": "tflite",
        "quantization": quantization,
        "seq_length": int(seq_length),
        "sparsity": float(sparsity),
        **sizes(path),
        "metrics": metrics,
        "agreement": (agreed := agreement(*on_split, task)),
        "agreement_split": agreement_split if agreement_data is not None else "test",
        "agreement_examples": len(on_split[2]),
        "agreement_test": agreement(logits, keras_logits, data.labels, task),
        "logit_error": logit_error(*on_split, task),
        "latency_ms": latency,
        "float_ops": float_ops(path),
        **record_fields(path),
        "xnnpack_partitions": artifact.xnnpack_partitions(),
        "passed": (parity_gate(metrics[metric_name], reference_metrics[metric_name], accuracy_budget)
                   and agreed >= min_agreement),
        "min_agreement": float(min_agreement),
        "primary_metric": metric_name,
        "reference_metric": float(reference_metrics[metric_name]),
        "accuracy_budget": float(accuracy_budget),
    }
    return record
