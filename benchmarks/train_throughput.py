#!/usr/bin/env python
"""Training throughput: tfcompress's Trainer against the stock HF TF ``model.fit`` path, same run.

Stock path (what the Hugging Face TF docs show): tokenise with ``padding="max_length"`` to 64,
``model.compile(AdamW)`` and ``model.fit`` with batch 32. tfcompress: the Trainer's custom
``tf.function`` step on length-bucketed batches padded per batch (same model, batch size, optimizer
family and examples). Each path trains ``--steps`` steps after ``--warmup`` untimed ones (tracing);
samples/s are over the timed steps only. The two are interleaved (stock, ours, stock, ours) so
machine load affects both alike.

    python benchmarks/train_throughput.py --steps 150 --warmup 10

Writes benchmarks/results/train_throughput.json and appends to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from _common import percentiles, write_results

from tfcompress.data import encoding
from tfcompress.data import readers
from tfcompress.models import facts
from tfcompress.models import loading
from tfcompress._compat import keras
from tfcompress.cli.options import default_data_dir
from tfcompress.config.training import TrainConfig
from tfcompress.train.trainer import Hook, Trainer


class _StepTimer(Hook):
    def __init__(self):
        self.times, self.sizes, self._start = [], [], 0.0

    def on_step_begin(self, trainer, step):
        self._start = time.perf_counter()

    def on_step_end(self, trainer, step, logs):
        self.times.append(time.perf_counter() - self._start)


class _FitTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def stock_round(model, tokenizer, texts, labels, batch_size, steps, warmup, max_length):
    n = batch_size * (steps + warmup)
    encoded = tokenizer(texts[:n], padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    inputs = {k: encoded[k] for k in facts.model_input_names(model)}
    timer = _FitTimer()
    model.fit(inputs, np.asarray(labels[:n]), batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
              callbacks=[timer])
    return timer.times[warmup:]


def ours_round(model, data, batch_size, steps, warmup, output_dir):
    timer = _StepTimer()
    config = TrainConfig(max_steps=steps + warmup, batch_size=batch_size, learning_rate=5e-5, log_every=10**6,
                         checkpoint_every=10**6, histograms=False)
    Trainer(model, "sequence", config, output_dir, hooks=[timer]).fit(data)
    return timer.times[warmup:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default=loading.DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved stock/ours rounds")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir("sst2")
    examples = readers.read_text_classification(f"{data_dir}/train.tsv")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(examples))
    texts = [examples.texts[i] for i in order]
    labels = [examples.labels[i] for i in order]
    tokenizer = loading.load_tokenizer(args.model)
    n = args.batch_size * (args.steps + args.warmup)
    subset = readers.TextClassificationExamples(texts[:n], labels[:n], examples.label_names, "sst2 sample")
    encoded = encoding.encode(tokenizer, subset, max_length=args.max_length)

    stock_model = loading.load_model(args.model, labels=examples.label_names)
    stock_model.compile(optimizer=keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    our_model = loading.load_model(args.model, labels=examples.label_names)
    stock_times, our_times = [], []
    import tempfile

    for round_index in range(args.rounds):
        stock_times += stock_round(stock_model, tokenizer, texts, labels, args.batch_size, args.steps, args.warmup,
                                   args.max_length)
        with tempfile.TemporaryDirectory() as tmp:
            our_times += ours_round(our_model, encoded, args.batch_size, args.steps, args.warmup, tmp)
        print(f"round {round_index}: stock {args.batch_size / np.median(stock_times):.1f} samples/s, "
              f"tfcompress {args.batch_size / np.median(our_times):.1f} samples/s", flush=True)
    stock_sps = args.batch_size * len(stock_times) / float(np.sum(stock_times))
    our_sps = args.batch_size * len(our_times) / float(np.sum(our_times))
    lengths = encoded.lengths()
    result = {
        "settings": vars(args),
        "stock": {"samples_per_second": stock_sps, "step_seconds": percentiles(stock_times), "padded_length": args.max_length},
        "tfcompress": {"samples_per_second": our_sps, "step_seconds": percentiles(our_times),
                       "mean_tokens_per_example": float(np.mean(lengths))},
        "speedup": our_sps / stock_sps,
    }
    command = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    lines = ["| path | samples/s | step p50 (s) | step p90 (s) |", "|---|---|---|---|",
             f"| stock `model.fit`, padded to {args.max_length} | {stock_sps:.1f} | "
             f"{result['stock']['step_seconds']['p50']:.3f} | {result['stock']['step_seconds']['p90']:.3f} |",
             f"| tfcompress Trainer, per-batch padding | {our_sps:.1f} | "
             f"{result['tfcompress']['step_seconds']['p50']:.3f} | {result['tfcompress']['step_seconds']['p90']:.3f} |",
             "", f"Speed-up: **{result['speedup']:.2f}x** (batch {args.batch_size}, {len(our_times)} timed steps per path "
             f"after {args.warmup} warm-up steps per round, {args.rounds} interleaved rounds; SST-2 train sample, "
             f"mean {np.mean(lengths):.1f} tokens per sentence)"]
    write_results("train_throughput", command.strip(), result, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
