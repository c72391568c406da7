#!/usr/bin/env python
"""Teacher labelling speed: the teacher's logits in float32 and under Keras' ``mixed_bfloat16`` policy, same run.

Distilling from a large teacher spends much of its time labelling: the distill stage runs the teacher once over
every training text and augmented copy (:func:`tfcompress.compress.teacher_logits.compute_logits`, length-bucketed
batches) before the student trains. Here the same teacher weights are built under each policy and label the same
``--texts`` SST-2 training texts in interleaved rounds (float32, bfloat16, float32, ...). Reported: texts/s per
policy (all timed rounds together), the speed ratio, and how far the bfloat16 logits are from the float32 ones
(max and mean absolute difference, share of equal argmax). The policy is the distill stage's own switch:
``--set distill_train.mixed_precision=mixed_bfloat16`` (the cache key records it as ``teacher_dtype``).

    python benchmarks/teacher_labelling.py --teacher sentence-transformers/all-mpnet-base-v2 --texts 2000 --rounds 3

Writes benchmarks/results/teacher_labelling.json and adds a section to benchmarks/RESULTS.md (``--smoke``: a tiny
model on tiny data, results under ``--results-dir`` only).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

from _common import smoke_data_dir, smoke_model_dir, write_results

from tfcompress.cli.options import default_data_dir
from tfcompress.compress import teacher_logits
from tfcompress.data import encoding, readers
from tfcompress.models import facts, loading
from tfcompress.train.trainer import set_mixed_precision

POLICIES = ("float32", "mixed_bfloat16")


def _build(teacher: str, labels, policy: str, weights=None):
    set_mixed_precision(None if policy == "float32" else policy)
    try:
        model = loading.load_model(teacher, task="sequence", labels=labels)
    finally:
        set_mixed_precision(None)
    if weights is not None:  # the same weights (a checkpoint without a head gets a fresh one per load)
        model.set_weights(weights)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="sentence-transformers/all-mpnet-base-v2",
                        help="a model folder or hub name (the packaged all-mpnet-base-v2 by default)")
    parser.add_argument("--data-dir", default=None, help="SST-2 folder (train.tsv)")
    parser.add_argument("--texts", type=int, default=2000, help="training texts labelled per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per policy (the first is warm-up too)")
    parser.add_argument("--batch-size", type=int, default=64, help="the distill stage's eval_batch_size")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on tiny data, no RESULTS.md section")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    temporary = tempfile.TemporaryDirectory() if args.smoke else None
    if args.smoke:
        args.teacher = smoke_model_dir(temporary.name)
        args.data_dir = smoke_data_dir(temporary.name, train=64)
        args.texts, args.rounds = min(args.texts, 64), min(args.rounds, 2)
    examples = readers.read_text_classification(f"{args.data_dir or default_data_dir('sst2')}/train.tsv")
    order = np.random.default_rng(0).permutation(len(examples))[:args.texts]
    subset = readers.TextClassificationExamples([examples.texts[i] for i in order], [examples.labels[i] for i in order],
                                                examples.label_names, "sst2 sample")
    models = {"float32": _build(args.teacher, examples.label_names, "float32")}
    models["mixed_bfloat16"] = _build(args.teacher, examples.label_names, "mixed_bfloat16",
                                      models["float32"].get_weights())
    data = encoding.encode(loading.load_tokenizer(args.teacher), subset, max_length=args.max_length,
                           input_names=facts.model_input_names(models["float32"]))
    seconds = {policy: [] for policy in POLICIES}
    logits = {}
    for round_index in range(args.rounds + 1):  # round 0 traces the functions: not timed
        for policy in POLICIES:
            started = time.perf_counter()
            logits[policy] = teacher_logits.compute_logits(models[policy], data, batch_size=args.batch_size)
            if round_index:
                seconds[policy].append(time.perf_counter() - started)
        if round_index:
            print(f"round {round_index}: " + ", ".join(f"{p} {len(data) / seconds[p][-1]:.1f} texts/s" for p in POLICIES),
                  flush=True)
    speed = {policy: len(data) * len(seconds[policy]) / float(np.sum(seconds[policy])) for policy in POLICIES}
    difference = np.abs(logits["mixed_bfloat16"] - logits["float32"])
    agreement = float(np.mean(logits["mixed_bfloat16"].argmax(-1) == logits["float32"].argmax(-1)))
    result = {"settings": {k: v for k, v in vars(args).items() if k != "results_dir"},
              "texts_per_second": speed, "speedup": speed["mixed_bfloat16"] / speed["float32"],
              "round_seconds": seconds, "mean_tokens": float(np.mean(data.lengths())),
              "logit_abs_diff": {"max": float(difference.max()), "mean": float(difference.mean())},
              "argmax_agreement": agreement, "logit_scale": float(np.abs(logits["float32"]).mean())}
    command = "python benchmarks/teacher_labelling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["| Keras policy | texts/s | speed vs float32 |", "|---|---|---|",
             f"| float32 | {speed['float32']:.1f} | 1 |",
             f"| mixed_bfloat16 | {speed['mixed_bfloat16']:.1f} | **{result['speedup']:.2f}x** |", "",
             f"{len(data)} SST-2 training texts (mean {result['mean_tokens']:.1f} tokens), batch {args.batch_size}, "
             f"{args.rounds} timed rounds per policy, interleaved, after one untimed round. bfloat16 logits vs float32: "
             f"max |diff| {difference.max():.4f}, mean {difference.mean():.4f} (mean |logit| "
             f"{result['logit_scale']:.3f}); argmax equal on {agreement:.4f}."]
    path = write_results("teacher_labelling", command.strip(), result, lines, results_dir=args.results_dir,
                         append_markdown=not args.smoke)
    print("\n".join(lines))
    if temporary is not None:
        temporary.cleanup()
    return path


if __name__ == "__main__":
    main()
