"""Evaluation shared by Keras models and TFLite artifacts.

Everything here takes a ``predict_fn(features) -> logits`` working on dicts of NumPy int32 arrays,
so the same code scores a Keras model (``lambda f: model(f, training=False).logits``), the Trainer's
``predict_fn()`` and a TFLite runtime (``runtime.TFLiteModel(path).predict``, with ``pad_to`` set to
the artifact's fixed sequence length).

Metrics:
    * sequence task: accuracy, macro-F1 and a per-class report (scikit-learn).
    * token task: entity-level precision/recall/F1 with seqeval, strict span matching on IOB2
      (an entity counts only if its type, start and end all match). Never token-level F1 with ``O``,
      which rewards the ~83% of CoNLL tokens that are ``O``. ``accuracy`` is token accuracy over
      the labelled positions (first sub-tokens), reported for information only.

Positions labelled ``IGNORE_INDEX`` (-100: special tokens, non-first sub-tokens) are dropped
before scoring; for the sequence task, examples with a negative label are dropped.

Example::

    metrics = evaluate(lambda features: model(features, training=False).logits, encoded_test)
    print(metrics["accuracy"], metrics["f1"])
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.data.encoding import EncodedData, keep_positions
from tfcompress.utils import is_tty

PRIMARY_METRICS = {"sequence": "accuracy", "token": "f1"}


def primary_metric(task: str) -> str:
    """The metric a task is judged on: ``"accuracy"`` (sequence) or ``"f1"`` (token: entity F1)."""
    if task not in PRIMARY_METRICS:
        raise ValueError(f"task={task!r}: must be one of {tuple(PRIMARY_METRICS)}")
    return PRIMARY_METRICS[task]


def _predictions(values, task: str):
    """Argmax over the class axis when given logits; pass through integer predictions.

    Returns an int array [N] (sequence) or a list of int arrays per example / an int array [N, T] (token).
    """
    class_ndim = 2 if task == "sequence" else 3
    if isinstance(values, (list, tuple)):
        if task == "sequence":
            array = np.asarray(values)
            return array.argmax(-1) if array.ndim == 2 else array.astype(np.int64)
        return [np.asarray(v).argmax(-1) if np.asarray(v).ndim == 2 else np.asarray(v).astype(np.int64)
                for v in values]
    array = np.asarray(values)
    if array.ndim == class_ndim:
        return array.argmax(-1)
    if array.ndim == class_ndim - 1:
        return array.astype(np.int64)
    raise ValueError(f"{task} predictions: got an array of shape {array.shape}; expected logits with "
                     f"{class_ndim} dims or predictions with {class_ndim - 1}")


def _token_pairs(predictions, labels) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per example (labels, predictions) at the non-ignored positions."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predicted examples but {len(labels)} labelled ones")
    pairs = []
    for index, (pred, gold) in enumerate(zip(predictions, labels)):
        pred, gold = np.asarray(pred).reshape(-1), np.asarray(gold).reshape(-1)
        if len(pred) < len(gold):
            if np.any(gold[len(pred):] != IGNORE_INDEX):
                raise ValueError(f"example {index}: {len(pred)} predictions for {len(gold)} label positions")
            gold = gold[:len(pred)]
        pred = pred[:len(gold)]  # padding beyond the labels
        keep = gold != IGNORE_INDEX
        pairs.append((gold[keep], pred[keep]))
    return pairs


def _sequence_metrics(predictions, labels, label_names) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    predictions = np.asarray(predictions).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    keep = labels >= 0
    predictions, labels = predictions[keep], labels[keep]
    if len(labels) == 0:
        raise ValueError("no labelled examples to score (all labels negative)")
    ids = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=ids, zero_division=0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        # macro over the classes present in labels or predictions (scikit-learn's default), so a
        # class absent from both does not count as F1 = 0
        "f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "per_class": per_class,
        "num_examples": int(len(labels)),
    }


def _token_metrics(predictions, labels, label_names) -> dict:
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    names = np.asarray(label_names, dtype=object)
    y_true, y_pred = [], []
    correct = total = 0
    for gold, pred in _token_pairs(predictions, labels):
        if len(gold) == 0:
            continue
        if pred.min() < 0 or pred.max() >= len(names):
            raise ValueError(f"prediction ids outside 0..{len(names) - 1}")
        y_true.append(list(names[gold]))
        y_pred.append(list(names[pred]))
        correct += int((gold == pred).sum())
        total += len(gold)
    if total == 0:
        raise ValueError("no labelled positions to score (all labels are IGNORE_INDEX)")
    options = dict(mode="strict", scheme=IOB2, zero_division=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when a type never occurs
        report = classification_report(y_true, y_pred, output_dict=True, **options)
        result = {
            "f1": float(f1_score(y_true, y_pred, **options)),
            "precision": float(precision_score(y_true, y_pred, **options)),
            "recall": float(recall_score(y_true, y_pred, **options)),
        }
    result["accuracy"] = correct / total
    result["per_entity"] = {
        kind: {"precision": float(row["precision"]), "recall": float(row["recall"]),
               "f1": float(row["f1-score"]), "support": int(row["support"])}
        for kind, row in report.items() if not kind.endswith(" avg")
    }
    result["num_examples"] = len(y_true)
    return result


def compute_metrics(task: str, logits_or_preds, labels, label_names: Sequence[str]) -> dict:
    """Score predictions against labels.

    Args:
        task: "sequence" or "token".
        logits_or_preds: sequence: logits [N, C] or predicted ids [N]. token: logits [N, T, C] or
            ids [N, T], or a list of per-example [T_i, C] / [T_i] arrays. Positions past an example's
            labels (padding) are ignored.
        labels: sequence: ids [N] (negative = unlabelled, dropped). token: [N, T] or per-example
            arrays with ``IGNORE_INDEX`` at positions not scored.
        label_names: class names / IOB2 tags, index = id.

    Returns:
        sequence: ``{"accuracy", "f1" (macro), "per_class": {name: {precision, recall, f1, support}},
        "num_examples"}``. token: ``{"f1", "precision", "recall"`` (entity-level, seqeval strict
        IOB2), ``"accuracy"`` (token accuracy on labelled positions), ``"per_entity": {type: {...}},
        "num_examples"}``.
    """
    primary_metric(task)
    predictions = _predictions(logits_or_preds, task)
    if task == "sequence":
        return _sequence_metrics(predictions, labels, list(label_names))
    return _token_metrics(predictions, labels, list(label_names))


def _as_logits(output) -> np.ndarray:
    """NumPy logits from what a predict_fn returns: an array, a tf.Tensor, a dict or an HF output."""
    if hasattr(output, "logits"):
        output = output.logits
    elif isinstance(output, dict):
        output = output["logits"] if "logits" in output else next(iter(output.values()))
    if hasattr(output, "numpy"):
        output = output.numpy()
    return np.asarray(output)


def predict_logits(predict_fn: Callable[[dict], np.ndarray], data: EncodedData, batch_size: int = 32,
                   pad_to: int | None = None, progress: bool = True, truncate: bool = False):
    """Run ``predict_fn`` over ``data`` in length-bucketed batches; results in example order.

    Args:
        predict_fn: ``features {name: int32 [B, T]} -> logits`` ([B, C] or [B, T, C]); may return a
            tf.Tensor, a dict with "logits" or an object with ``.logits``.
        data: the encoded examples.
        batch_size: examples per call (a TFLite artifact with a fixed batch dimension needs its size;
            the last batch may be smaller).
        pad_to: fixed sequence width (TFLite artifacts); None pads each batch to its longest.
        progress: tqdm bar (also off when stderr is not a terminal).
        truncate: with ``pad_to``, cut longer examples (first ``pad_to - 1`` tokens and the last one)
            instead of raising. Token task: the logits then cover only the kept positions, and
            :func:`evaluate` cuts the labels the same way, so the words dropped are not scored.

    Returns:
        sequence: float array [N, C]. token: list of per-example [T_i, C] arrays (T_i = the example's
        length, or ``min(length, pad_to)`` when truncated).

    Raises:
        ValueError: an example is longer than ``pad_to`` and ``truncate`` is False.
    """
    from tqdm.auto import tqdm

    lengths = data.lengths()
    if pad_to is not None and not truncate and len(data) and int(lengths.max()) > pad_to:
        too_long = int((lengths > pad_to).sum())
        raise ValueError(f"{too_long} examples are longer than pad_to={pad_to} (longest "
                         f"{int(lengths.max())}); encode with max_length={pad_to} or pass truncate=True")
    results: list = [None] * len(data)
    batches = data.batches(batch_size, shuffle=False)
    for indices in tqdm(batches, desc="evaluating", unit="batch", disable=not progress or not is_tty()):
        features, _ = data.padded_batch(indices, pad_to=pad_to, truncate=truncate)
        logits = _as_logits(predict_fn(features))
        if logits.shape[0] != len(indices):
            raise ValueError(f"predict_fn returned {logits.shape[0]} rows for a batch of {len(indices)}")
        for row, index in enumerate(indices):
            if data.task == "sequence":
                results[index] = logits[row]
            else:
                length = int(lengths[index]) if pad_to is None else min(int(lengths[index]), pad_to)
                results[index] = logits[row, :length]
    if data.task == "sequence":
        return np.stack(results) if results else np.zeros((0, len(data.label_names)), np.float32)
    return results


def evaluate(predict_fn: Callable[[dict], np.ndarray], data: EncodedData, batch_size: int = 32,
             pad_to: int | None = None, progress: bool = True, truncate: bool = False) -> dict:
    """:func:`predict_logits` then :func:`compute_metrics`; adds ``num_truncated`` (at encoding).

    Args: as :func:`predict_logits`.
    """
    logits = predict_logits(predict_fn, data, batch_size=batch_size, pad_to=pad_to, progress=progress,
                            truncate=truncate)
    labels = data.labels
    if data.task == "token" and pad_to is not None and truncate:
        labels = [label[keep_positions(len(label), pad_to)] for label in labels]
    metrics = compute_metrics(data.task, logits, labels, data.label_names)
    metrics["num_truncated"] = int(data.num_truncated)
    return metrics


def agreement(logits_a, logits_b, labels, task: str) -> float:
    """Fraction of scored positions where two models' argmax predictions agree.

    Used to compare a compressed model or a TFLite artifact with its reference. Scored positions:
    every example with a non-negative label (sequence; ``labels=None`` scores all), every position
    not labelled ``IGNORE_INDEX`` (token).

    Args:
        logits_a, logits_b: logits (or predicted ids) in any form :func:`compute_metrics` accepts.
        labels: the labels, only used to choose positions.
        task: "sequence" or "token".
    """
    primary_metric(task)
    pred_a, pred_b = _predictions(logits_a, task), _predictions(logits_b, task)
    if task == "sequence":
        pred_a, pred_b = np.asarray(pred_a).reshape(-1), np.asarray(pred_b).reshape(-1)
        if len(pred_a) != len(pred_b):
            raise ValueError(f"{len(pred_a)} predictions against {len(pred_b)}")
        keep = np.ones(len(pred_a), bool) if labels is None else np.asarray(labels).reshape(-1) >= 0
        if not keep.any():
            raise ValueError("no positions to compare")
        return float((pred_a[keep] == pred_b[keep]).mean())
    if len(pred_a) != len(pred_b):
        raise ValueError(f"{len(pred_a)} predicted examples against {len(pred_b)}")
    same = total = 0
    for (gold, a), (_, b) in zip(_token_pairs(pred_a, labels), _token_pairs(pred_b, labels)):
        same += int((a == b).sum())
        total += len(gold)
    if total == 0:
        raise ValueError("no positions to compare (all labels are IGNORE_INDEX)")
    return same / total


