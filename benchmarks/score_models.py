"""Score Keras models (run folders' stage models or any model folder) on several labelled files.

For claims that need more than one test split: SST-2's ``test.tsv`` (872 sentences, GLUE dev) and
``test1821.tsv`` (1,821, the official test set with its labels) are independent; ``validation.tsv``
overlaps the training phrases and is for model selection only. Prints accuracy (or entity F1) per file
and over all files together, and writes the logits' predictions so paired intervals can be computed.

    python benchmarks/score_models.py --models runs/teacher/finetune/model \\
        --files ../shared/data/sst2/test.tsv,../shared/data/sst2/test1821.tsv --train-file ../shared/data/sst2/train.tsv
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import write_results

from tfcompress.data import encoding, readers
from tfcompress.evaluate import metrics
from tfcompress.models import loading
from tfcompress.models.facts import reads_case
from tfcompress.pipeline.stages.common import keras_predict_fn


def score(model_dir: str, files: list[str], train_file: str, max_length: int, batch_size: int) -> dict:
    labels = readers.read_text_classification(train_file).label_names
    tokenizer = loading.load_tokenizer(model_dir)
    model = loading.load_model(model_dir, labels=labels)
    predict = keras_predict_fn(model)
    out, correct, total = {}, 0, 0
    for path in files:
        examples = readers.read_text_classification(path, label_names=labels)
        data = encoding.encode(tokenizer, examples, max_length=max_length, case_segments=reads_case(model))
        logits = metrics.predict_logits(predict, data, batch_size=batch_size, progress=False)
        predictions = np.asarray(logits).argmax(-1)
        hits = predictions == np.asarray(data.labels)
        out[Path(path).name] = {"accuracy": float(hits.mean()), "examples": int(len(hits)),
                                "predictions": predictions.tolist()}
        correct, total = correct + int(hits.sum()), total + len(hits)
    out["combined"] = {"accuracy": correct / total, "examples": total}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="comma-separated model folders")
    parser.add_argument("--files", required=True, help="comma-separated labelled files (TSV/CSV/JSONL)")
    parser.add_argument("--train-file", required=True, help="the training file: its labels define the classes")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--name", default="score_models", help="results/<name>.json")
    args = parser.parse_args(argv)
    files = [f for f in args.files.split(",") if f]
    results, started = {}, time.time()
    for model_dir in [m for m in args.models.split(",") if m]:
        results[model_dir] = score(model_dir, files, args.train_file, args.max_length, args.batch_size)
        row = ", ".join(f"{name} {value['accuracy']:.4f} ({value['examples']})" for name, value in results[model_dir].items())
        print(f"{model_dir}: {row}", flush=True)
    lines = ["| model | " + " | ".join(Path(f).name for f in files) + " | combined |", "|---" * (len(files) + 2) + "|"]
    for model_dir, value in results.items():
        lines.append(f"| `{model_dir}` | " + " | ".join(f"{value[Path(f).name]['accuracy']:.4f}" for f in files)
                     + f" | {value['combined']['accuracy']:.4f} |")
    command = "python benchmarks/score_models.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    write_results(args.name, command, {"models": results, "seconds": round(time.time() - started, 1)}, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
