"""Entity F1 of token-classification models on one CoNLL file, each paired with the first model.

Each model reads its case segment ids as it was trained (``config.json``: ``case_segments``, or
``--case-segments`` for models saved before they were recorded); every sentence is read alone (no
document context). Entities are seqeval's strict IOB2 spans; a paired
bootstrap over the sentences (the same resampled sentences for both models) gives the 95 % interval of
each model's F1 minus the first model's. Each model's F1 is checked against the pipeline's own seqeval
score of the same predictions.

    python benchmarks/compare_ner.py --models runs/a/distill/model,runs/b/distill/model \\
        --file ../shared/data/conll2003/test.txt --train-file ../shared/data/conll2003/train.txt
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from _common import write_results

from tfcompress.data import encoding, readers
from tfcompress.evaluate import metrics
from tfcompress.models import loading
from tfcompress.models.facts import model_input_names, reads_case
from tfcompress.pipeline.stages.common import keras_predict_fn


def sentence_counts(logits, data) -> np.ndarray:
    """Per sentence ``[true positives, predicted entities, gold entities]`` (strict IOB2 spans)."""
    from seqeval.scheme import IOB2, Entities

    names = np.asarray(data.label_names, dtype=object)
    predictions = [np.asarray(row).argmax(-1) for row in logits]
    counts = []
    for gold, pred in metrics._token_pairs(predictions, data.labels):
        spans = [Entities([list(names[tags])], IOB2).entities[0] for tags in (gold, pred)]
        gold_set, pred_set = ({(e.tag, e.start, e.end) for e in entities} for entities in spans)
        counts.append((len(gold_set & pred_set), len(pred_set), len(gold_set)))
    return np.asarray(counts, np.int64)


def f1(counts: np.ndarray) -> np.ndarray:
    """Micro entity F1 of ``counts`` summed over the last-but-one axis."""
    total = counts.sum(axis=-2)
    denominator = total[..., 1] + total[..., 2]
    return np.where(denominator > 0, 2.0 * total[..., 0] / np.maximum(denominator, 1), 0.0)


def paired_f1_difference(counts: np.ndarray, base: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """F1(counts) - F1(base) in points, with the 95 % paired bootstrap interval over the sentences."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), size=(resamples, len(base)))
    deltas = (f1(counts[picks]) - f1(base[picks])) * 100.0
    low, high = np.percentile(deltas, [2.5, 97.5])
    return {"delta_pt": float((f1(counts) - f1(base)) * 100.0),
            "ci95_pt": [round(float(low), 3), round(float(high), 3)], "sentences": int(len(base)),
            "resamples": resamples}


def score(model_dir: str, path: str, labels: list[str], case: str, max_length: int, batch_size: int) -> tuple:
    tokenizer, model = loading.load_tokenizer(model_dir), loading.load_model(model_dir, task="token", labels=labels)
    case_segments = reads_case(model) if case == "auto" else case == "true"
    data = encoding.encode(tokenizer, readers.read_conll(path, labels), max_length=max_length,
                           input_names=model_input_names(model), case_segments=case_segments)
    logits = metrics.predict_logits(keras_predict_fn(model), data, batch_size=batch_size, progress=False)
    counts = sentence_counts(logits, data)
    pipeline_f1 = metrics.compute_metrics("token", logits, data.labels, data.label_names)["f1"]
    if abs(pipeline_f1 - float(f1(counts))) > 1e-9:
        raise AssertionError(f"{model_dir}: per-sentence F1 {float(f1(counts))} differs from seqeval's {pipeline_f1}")
    return counts, {"f1": pipeline_f1, "case_segments": case_segments, "sentences": int(len(counts))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="comma-separated model folders; the first is the base")
    parser.add_argument("--file", required=True, help="the CoNLL file to score (test.txt)")
    parser.add_argument("--train-file", required=True, help="the training file: its tags define the label order")
    parser.add_argument("--case-segments", default="", help="per model: auto (config.json), true or false")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--name", default="compare_ner", help="results/<name>.json")
    parser.add_argument("--results-dir", default=None, help="write the JSON there and leave RESULTS.md alone (tests)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    cases = args.case_segments.split(",") if args.case_segments else ["auto"] * len(models)
    if len(cases) != len(models) or any(c not in ("auto", "true", "false") for c in cases):
        parser.error(f"--case-segments: one of auto/true/false per model ({len(models)}), got {args.case_segments!r}")
    labels = readers.read_conll(args.train_file).label_names
    started, counts, results = time.time(), {}, {}
    for model_dir, case in zip(models, cases):
        counts[model_dir], results[model_dir] = score(model_dir, args.file, labels, case, args.max_length,
                                                      args.batch_size)
    base = models[0]
    lines = ["| model | case segments | entity F1 | minus the first, pt (95 % paired bootstrap) |", "|---|---|---|---|"]
    for model_dir in models:
        if model_dir != base:
            results[model_dir]["vs_first"] = paired_f1_difference(counts[model_dir], counts[base])
        versus = results[model_dir].get("vs_first")
        text = f"{versus['delta_pt']:+.2f} ({versus['ci95_pt'][0]:+.2f} .. {versus['ci95_pt'][1]:+.2f})" \
            if versus else ""
        row = results[model_dir]
        lines.append(f"| `{model_dir}` | {row['case_segments']} | {row['f1']:.4f} | {text} |")
        print(lines[-1], flush=True)
    command = "python benchmarks/compare_ner.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    return write_results(args.name, command, {"file": args.file, "models": results,
                                              "seconds": round(time.time() - started, 1)}, lines,
                         results_dir=args.results_dir, append_markdown=args.results_dir is None)


if __name__ == "__main__":
    main()
