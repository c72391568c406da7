#!/usr/bin/env python
"""End to end, same run, same machine: the hand-made Keras/TFLite path against the tfcompress recipe.

Per task (SST-2 accuracy, CoNLL-2003 entity F1), from the same starting model and the same training
examples:

* stock: ``loading.load_model`` (so the safetensors workaround applies), every example padded to the
  recipe's ``max_length`` (64 SST-2, 128 CoNLL; ``padding="max_length"``), ``model.compile(AdamW(5e-5))``
  with no loss and the labels inside the input dict (the HF TF model computes its own loss, -100
  masked for tokens: the HF-documented way), ``model.fit`` for ``--stock-epochs``, batch = the
  recipe's, seeded with the recipe's ``train.seed`` as our finetune is. Then the stock converter,
  dynamic-range and full int8 (representative dataset, ``TFLITE_BUILTINS_INT8``, float I/O), the
  ``stock-*`` variants of benchmarks/export_variants.py.
* tfcompress: the recipe (recipes/sst2.py, recipes/conll2003.py) through ``tfcompress.pipeline``,
  stages ``--tfc-stages``; its numbers are read from its report.json.

Every stock artifact is converted at the length the stock model was trained at (what that user ships;
``--stock-seq-length`` to change it) and each path is scored at its own artifacts' length
with ``gate.artifact_record`` on the same test set (metric, size raw/gzip). Latency: after both
paths are built, every artifact of both is timed again here, batch 1, 1 and 2 threads, in
``--latency-rounds`` interleaved rounds (p50 = median over rounds), so the ratios compare numbers taken
side by side; the evaluate stage's own figures stay in the JSON as ``pipeline_latency_ms``.
Training samples/s: stock = examples / summed ``model.fit`` batch times; tfcompress = the finetune
stage's ``train_samples_per_second`` (examples / summed step times); both include the first
(tracing) step.

    python benchmarks/stock_vs_tfcompress.py --max-train-samples 4000
    python benchmarks/stock_vs_tfcompress.py --tasks sst2 --output-dir runs/bench
    python benchmarks/stock_vs_tfcompress.py --smoke --results-dir /tmp/results   # tiny model, ~1 min
    python benchmarks/stock_vs_tfcompress.py --tasks sst2 --seeds 42,43,44 --test-files test1821.tsv \
        --output-dir runs/bench-seeds --set student.teacher=runs/teacher/teacher/model ...

With ``--seeds`` both paths run once per seed (``<dir>/<task>/seed<S>``; a seed whose comparison
finished is read back from its ``stock_vs_tfcompress.json`` rather than run again, so the benchmark
can be continued across interruptions) and the summary first gives the mean over seeds, on each test
file and on all together, with a paired interval against stock dynamic (``benchmarks/_multiseed.py``).

The pipeline is resumable: ``--output-dir`` pointing at a folder whose recipe stages already finished
with the same config (``<dir>/sst2``) reuses them and only the stock path is trained.

Writes benchmarks/results/stock_vs_tfcompress.json and appends to benchmarks/RESULTS.md
(``--smoke``: stock_vs_tfcompress-smoke.json only).
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _multiseed
from _common import smoke_data_dir, smoke_model_dir, write_results
from export_variants import convert
from train_throughput import _FitTimer

from tfcompress import utils
from tfcompress.compress import prune
from tfcompress.config import recipe
from tfcompress.evaluate import gate
from tfcompress.evaluate import runtime
from tfcompress.models import loading
from tfcompress.pipeline import runner
from tfcompress._compat import keras
from tfcompress.pipeline.stages import common
from tfcompress.cli import options

TASKS = {"sst2": "sequence", "conll2003": "token"}
STOCK_ARTIFACTS = ("stock-dynamic", "stock-int8")
# verdict thresholds against stock dynamic
DOMINATES = {"gzip_ratio": 0.5, "latency_ratio": 0.6}
FULL_INTEGER_BUDGET_PT = 0.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sst2,conll2003", help="comma-separated, from sst2,conll2003 "
                                                                   "(default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help="starting model for both paths (default: the recipe's, the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--data-root", default=None,
                        help="folder holding sst2/ and conll2003/ (default: ../shared/data)")
    parser.add_argument("--max-train-samples", type=int, default=0,
                        help="first N training examples for both paths (0: all; default: %(default)s)")
    parser.add_argument("--max-test-samples", type=int, default=0,
                        help="first N test examples for every evaluation (0: all; default: %(default)s)")
    parser.add_argument("--stock-epochs", type=int, default=1, help="stock model.fit epochs (default: %(default)s)")
    parser.add_argument("--tfc-epochs", type=float, default=None,
                        help="tfcompress finetune epochs (the prune stage keeps the recipe's) (default: the "
                             "recipe's, so the default run is the recipe's default chain)")
    parser.add_argument("--tfc-stages", default=None,
                        help="tfcompress recipe stages, comma-separated (default: the recipe's default chain; "
                             "SST-2: finetune,distill,prune,trim,export,evaluate,release)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="extra recipe config override, as the recipes' --set (repeatable), e.g. "
                             "'export.int8_float_ops=' for a full-integer int8 artifact")
    parser.add_argument("--latency-runs", type=int, default=100,
                        help="timed batch-1 runs per thread count, both paths (default: %(default)s)")
    parser.add_argument("--latency-warmup", type=int, default=10,
                        help="untimed runs first, both paths (default: %(default)s)")
    parser.add_argument("--latency-rounds", type=int, default=3,
                        help="interleaved rounds over every artifact of both paths; p50/p90 = median over "
                             "rounds (default: %(default)s)")
    parser.add_argument("--stock-seq-length", type=int, default=0,
                        help="sequence length of the stock artifacts (default 0: the padded training length, "
                             "64 SST-2 / 128 CoNLL, what a hand-made path ships)")
    parser.add_argument("--seeds", default="",
                        help="comma-separated seeds, declared before the run: each runs both paths (the recipe with "
                             "--seed S, the stock fit seeded S); the summary gives every seed and their mean "
                             "(default: the recipe's seed)")
    parser.add_argument("--test-files", default="",
                        help="comma-separated labelled files in the task's data folder that every artifact of both "
                             "paths is scored on besides the recipe's test file, e.g. test1821.tsv (sequence tasks)")
    parser.add_argument("--output-dir", default=None,
                        help="keep the tfcompress run folders here (<dir>/<task>; default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and data (64 train / 32 test), seconds per stage; writes "
                             "stock_vs_tfcompress-smoke.json, not RESULTS.md")
    parser.add_argument("--results-dir", default=None, help="where the JSON goes (default: benchmarks/results)")
    args = parser.parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()] or [None]
    args.test_files = [name for name in args.test_files.split(",") if name]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {','.join(TASKS)}")
    if args.smoke:
        args.max_train_samples, args.max_test_samples = args.max_train_samples or 64, args.max_test_samples or 32
        args.latency_runs, args.latency_warmup = min(args.latency_runs, 10), min(args.latency_warmup, 2)
        args.latency_rounds = min(args.latency_rounds, 1)
    return args


def recipe_config(task: str, args, output_dir, model, data_dir, seed: int | None = None) -> recipe.RecipeConfig:
    """The recipe's config exactly as its command line would build it."""
    module = importlib.import_module(f"tfcompress.recipes.{task}")
    parser = argparse.ArgumentParser()
    options.add_recipe_arguments(parser, module.DEFAULTS)
    argv = ["--output-dir", str(output_dir), "--max-train-samples", str(args.max_train_samples),
            "--set", f"evaluate.latency_runs={args.latency_runs}",
            "--set", f"evaluate.latency_warmup={args.latency_warmup}"]
    argv += ["--stages", args.tfc_stages] if args.tfc_stages else []
    argv += ["--epochs", str(args.tfc_epochs)] if args.tfc_epochs is not None else []
    argv += ["--model", model] if model else []
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    argv += ["--seed", str(seed)] if seed is not None else []
    if args.smoke:  # two artifacts keep it short; --set export.modes=... overrides
        argv += ["--smoke", "--export", "dynamic,int8", "--set", f"data.max_eval_samples={args.max_test_samples}"]
        if "distill" in module.DEFAULTS.stages:  # the tiny model has 2 blocks
            argv += ["--student-layers", "1"]
        if "trim" in module.DEFAULTS.stages:  # the tiny vocabulary is below any keep_first: really trim it
            argv += ["--trim-keep-first", "0"]
    argv += ["--set", f"data.max_test_samples={args.max_test_samples}"] if args.max_test_samples else []
    for assignment in args.set:
        argv += ["--set", assignment]
    return options.config_from_args(parser.parse_args(argv), module.DEFAULTS, module.FILES, task)


def stock_path(context: runner.Context, seq_length: int, epochs: int, folder: Path, resumable: bool = False) -> dict:
    """Train, size, convert and evaluate the hand-made path; returns its records.

    Seeded with the recipe's ``train.seed`` (our finetune stage's seed) before the classifier is
    initialised, so the stock model is the same whichever tfcompress stages ran (or were reused)
    earlier in this process; without it its accuracy moved with their random-number use.
    ``resumable``: Keras' own ``BackupAndRestore`` saves the fit every ``train.checkpoint_every`` steps
    in ``folder/fit-backup`` and a rerun continues from there (the shuffled order of the resumed epoch
    then differs from an uninterrupted fit; the record says how many steps this process trained).
    """
    config = context.config  # same files, caps, tokenizer and test encoding as the recipe
    utils.set_seed(config.train.seed)
    train = context.encoded("train")
    features, labels = train.padded_batch(np.arange(len(train)), pad_to=config.data.max_length, truncate=True)
    model = loading.load_model(config.model, task=config.task, labels=context.label_names)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=5e-5, weight_decay=0.01))  # HF's internal loss
    timer = _FitTimer()
    callbacks = [timer]
    if resumable:
        callbacks.insert(0, keras.callbacks.BackupAndRestore(str(folder / "fit-backup"),
                                                             save_freq=config.train.checkpoint_every))
    started = time.perf_counter()
    history = model.fit({**features, "labels": labels}, batch_size=config.train.batch_size, epochs=epochs,
                        shuffle=True, verbose=0, callbacks=callbacks)
    shutil.rmtree(folder / "fit-backup", ignore_errors=True)  # Keras deletes the checkpoint, not its folder
    steps = epochs * -(-len(train) // config.train.batch_size)
    resumed = len(timer.times) < steps  # BackupAndRestore skipped the steps an earlier process trained
    examples = len(timer.times) * config.train.batch_size if resumed else len(train) * epochs
    training = {"examples": len(train), "epochs": epochs, "batch_size": config.train.batch_size,
                "seed": config.train.seed, "resumed": resumed,
                "padded_length": config.data.max_length, "wall_seconds": time.perf_counter() - started,
                "step_seconds": float(np.sum(timer.times)), "steps": len(timer.times),
                "samples_per_second": examples / float(np.sum(timer.times)),
                "loss_per_epoch": [float(v) for v in history.history["loss"]]}
    print(f"stock fit: {training['samples_per_second']:.1f} samples/s", flush=True)
    loading.save_model(model, context.tokenizer(), folder / "stock-keras")
    sizes = prune.saved_size(folder / "stock-keras")
    keras_logits, keras_metrics = common.test_logits_and_metrics(context, model, seq_length)
    keras_record = {"metrics": common.scalars(keras_metrics), "size_bytes": sizes["raw"],
                    "gzip_bytes": sizes["gzip"]}
    test, cfg = context.encoded("test", seq_length), config.evaluate
    artifacts = {}
    for name in STOCK_ARTIFACTS:
        path = folder / f"{name}.tflite"
        try:
            mode = convert(model, name, path, seq_length, train, config.export.num_calibration)
        except Exception as error:  # record it, measure the others
            artifacts[name] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
            continue
        artifacts[name] = gate.artifact_record(
            name, path, test, keras_logits, keras_metrics, quantization=mode, seq_length=seq_length,
            task=config.task, accuracy_budget=cfg.accuracy_budget, latency_runs=cfg.latency_runs,
            latency_warmup=cfg.latency_warmup, batch_size=cfg.batch_size)
        artifacts[name]["path"] = f"stock/{name}.tflite" if resumable else f"{name}.tflite (deleted)"
    return {"training": training, "keras": keras_record, "artifacts": artifacts}


def stock_settings(config: recipe.RecipeConfig, seq_length: int, epochs: int) -> dict:
    """What the stock path's result depends on: a kept stock record is reused only with these."""
    data, train = config.data, config.train
    return {"model": config.model, "train_file": data.train_file, "test_file": data.test_file,
            "max_train_samples": data.max_train_samples, "max_test_samples": data.max_test_samples,
            "max_length": data.max_length, "batch_size": train.batch_size, "seed": train.seed,
            "seq_length": seq_length, "epochs": epochs, "num_calibration": config.export.num_calibration,
            "artifacts": list(STOCK_ARTIFACTS)}


def kept_stock_path(context: runner.Context, seq_length: int, epochs: int, folder: Path) -> dict:
    """:func:`stock_path` kept in ``folder``: its record (``stock.json``) and artifacts are reused when
    made with the same settings, else the folder is made again; a fit killed before the record was
    written resumes from Keras' backup."""
    record_path, settings = folder / "stock.json", stock_settings(context.config, seq_length, epochs)
    if record_path.is_file():
        kept = json.loads(record_path.read_text())
        if kept.get("settings") == settings:
            print(f"stock path: reusing {record_path}", flush=True)
            return kept["stock"]
        print(f"stock path: {record_path} was made with other settings; training it again", flush=True)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stock = stock_path(context, seq_length, epochs, folder, resumable=True)
    stock["seconds"] = time.time() - started
    utils.atomic_write_json(record_path, {"settings": settings, "stock": stock})
    return stock


def same_run_latency(artifacts: dict[str, tuple[Path, dict]], runs: int, warmup: int, rounds: int = 3) -> dict:
    """Batch-1 latency of every artifact, both paths, measured here in interleaved rounds.

    ``artifacts``: name -> (path, one example padded to that artifact's length). Each round times
    every artifact at 1 and 2 threads (``runtime.TFLiteModel.latency``: ``warmup`` untimed runs, then
    ``runs`` timed ones); a p50/p90 is the median over rounds, so a burst of load hits both paths
    alike instead of whichever happened to run during it.
    """
    rounds_seen: dict[str, dict[str, list]] = {name: {} for name in artifacts}
    for _ in range(rounds):
        for name, (path, example) in artifacts.items():
            for threads in (1, 2):
                stats = runtime.TFLiteModel(path, num_threads=threads).latency(example, warmup=warmup, runs=runs)
                rounds_seen[name].setdefault(f"threads{threads}", []).append(stats)
    return {name: {key: {"p50": round(float(np.median([s["p50"] for s in values])), 3),
                         "p90": round(float(np.median([s["p90"] for s in values])), 3)}
                   for key, values in per_thread.items()}
            for name, per_thread in rounds_seen.items()}


def _artifact_inputs(context: runner.Context, ours: runner.Context, stock_dir: Path, stock: dict,
                     output_dir: Path, report: dict) -> dict[str, tuple[Path, object, int]]:
    """Every measurable artifact of both paths: (path, the test split encoded for it, its length).

    The stock artifacts read the starting model's token ids (``context``); ours read the ids of the
    model they were exported from (``ours``: a trim stage renumbers the vocabulary).
    """
    chosen = {}
    for name, record in stock["artifacts"].items():
        if "error" not in record:
            length = int(record["seq_length"])
            chosen[name] = (stock_dir / f"{name}.tflite", context.encoded("test", length), length)
    for record in report["artifacts"]:
        path = output_dir / record["path"]
        if not record.get("stock") and path.is_file():
            length = int(record["seq_length"])
            chosen[f"tfcompress {record['name']}"] = (path, ours.encoded("test", length), length)
    return chosen


def paired_difference(correct: np.ndarray, base_correct: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy of one artifact minus the stock dynamic one's, on the same test examples, in points.

    ``correct`` / ``base_correct``: per-example booleans. A paired bootstrap over the examples gives the
    95 % interval of the difference; ``only_this`` / ``only_base`` count the examples exactly one of the
    two got right (the only ones that move the difference).
    """
    correct, base_correct = np.asarray(correct, bool), np.asarray(base_correct, bool)
    if correct.shape != base_correct.shape or not correct.size:
        raise ValueError(f"paired_difference: need equal, non-empty shapes, got {correct.shape} and {base_correct.shape}")
    diff = correct.astype(np.float64) - base_correct.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1) * 100.0
    low, high = np.percentile(means, [2.5, 97.5])
    return {"delta_pt": float(diff.mean() * 100.0), "ci95_pt": [round(float(low), 3), round(float(high), 3)],
            "only_this": int((correct & ~base_correct).sum()), "only_base": int((~correct & base_correct).sum()),
            "examples": int(diff.size), "resamples": resamples}


def correctness(artifacts: dict[str, tuple[Path, object, int]]) -> dict[str, np.ndarray]:
    """Per-example correctness (classification) of every artifact on the data it is given."""
    from tfcompress.evaluate.metrics import predict_logits

    correct = {}
    for name, (path, test, length) in artifacts.items():
        logits = predict_logits(runtime.TFLiteModel(path, num_threads=2).predict, test, pad_to=length, progress=False)
        correct[name] = np.argmax(np.asarray(logits), axis=-1) == np.asarray(test.labels)
    return correct


def paired_vs_stock(artifacts: dict[str, tuple[Path, object, int]]) -> dict:
    """Per-example correctness of every artifact (classification; ``artifacts`` from
    :func:`_artifact_inputs`), each paired with ``stock-dynamic``."""
    correct = correctness(artifacts)
    if "stock-dynamic" not in correct:
        return {}
    return {name: paired_difference(values, correct["stock-dynamic"])
            for name, values in correct.items() if name != "stock-dynamic"}


def compare(task: str, stock: dict, report: dict, latency: dict | None = None, paired: dict | None = None) -> dict:
    """Table rows, ratios against stock dynamic, and the verdicts.

    ``latency`` (row name -> ``latency_ms``, from :func:`same_run_latency`) replaces the latencies the
    pipeline's evaluate stage recorded (kept as ``pipeline_latency_ms``), so every ratio compares
    numbers taken side by side. ``paired`` (row name -> :func:`paired_difference`, classification only)
    adds the 95 % interval of each artifact's difference from stock dynamic.
    """
    metric = report["metric"]
    stages = {s["name"]: s for s in report["stages"]}
    released = set((stages.get("release") or {}).get("released", []))
    rows = [{"row": "stock Keras fp32", **stock["keras"]}]
    rows += [{"row": name, **record} for name, record in stock["artifacts"].items()]
    rows += [{"row": f"tfcompress {name} (Keras)", **{k: stages[name].get(k) for k in ("metrics", "size_bytes", "gzip_bytes")}}
             for name in ("finetune", "distill", "prune", "trim", "qat") if name in stages]
    rows += [{"row": f"tfcompress {a['name']}", "released": a["name"] in released, **a}
             for a in report["artifacts"] if not a.get("stock")]
    for row in rows:
        if paired and row["row"] in paired:
            row["paired_vs_stock_dynamic"] = paired[row["row"]]
        if latency and row["row"] in latency:
            row["pipeline_latency_ms"] = row.get("latency_ms")
            row["latency_ms"] = latency[row["row"]]
    base = next((row for row in rows if row["row"] == "stock-dynamic"), {})
    base_ok = "latency_ms" in base
    for row in rows:
        value = (row.get("metrics") or {}).get(metric)
        row["metric"] = value
        row["p50_ms_2_threads"] = (row.get("latency_ms") or {}).get("threads2", {}).get("p50")
        if base_ok and value is not None:
            row["delta_vs_stock_dynamic_pt"] = 100.0 * (value - base["metrics"][metric])
            row["gzip_ratio_vs_stock_dynamic"] = row["gzip_bytes"] / base["gzip_bytes"] if row.get("gzip_bytes") else None
            row["latency_ratio_vs_stock_dynamic"] = (row["p50_ms_2_threads"] / base["latency_ms"]["threads2"]["p50"]
                                                     if row["p50_ms_2_threads"] else None)
    ours = [r for r in rows if r.get("released")]
    dominating = [r["name"] for r in ours if base_ok and r["delta_vs_stock_dynamic_pt"] >= 0
                  and r["gzip_ratio_vs_stock_dynamic"] <= DOMINATES["gzip_ratio"]
                  and r["latency_ratio_vs_stock_dynamic"] <= DOMINATES["latency_ratio"]]
    full_integer = [r for r in ours if r.get("float_ops") == []]
    close = [r["name"] for r in full_integer if base_ok and r["delta_vs_stock_dynamic_pt"] >= -FULL_INTEGER_BUDGET_PT]
    finetune_sps = (stages.get("finetune") or {}).get("train_samples_per_second")
    stock_sps = stock["training"]["samples_per_second"]
    return {"metric": metric, "rows": rows, "released": sorted(released),
            "train_samples_per_second": {"stock": stock_sps, "tfcompress_finetune": finetune_sps,
                                         "tfcompress_prune": (stages.get("prune") or {}).get("train_samples_per_second"),
                                         "ratio": finetune_sps / stock_sps if finetune_sps else None},
            "verdict": {"stock_dynamic_measured": base_ok, "released_dominates_stock_dynamic": bool(dominating),
                        "dominating_artifacts": dominating, "released_full_integer": [r["name"] for r in full_integer],
                        "full_integer_within_0_5pt_of_stock_dynamic": bool(close)}}


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary(task: str, result: dict) -> list[str]:
    metric = result["metric"]
    lines = [f"### {task} ({metric}; tfcompress artifacts at seq {result['seq_length']}, stock at seq "
             f"{result['stock_seq_length']}; {result['test_examples']} test examples)",
             "", f"| row | {metric} | size MB | gzip MB | p50 ms 2 thr | Δ vs stock dynamic (pt) | gzip ratio | "
             "latency ratio | released | 95 % CI of Δ (pt) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['row']} | failed: {row['error'][:80]} |||||||||")
            continue
        mb = lambda key: _number(row[key] / 1e6 if row.get(key) else None, ".2f")  # noqa: E731
        released = {True: "yes", False: "no"}.get(row.get("released"), "-")
        ci = (row.get("paired_vs_stock_dynamic") or {}).get("ci95_pt")
        ci = f"{ci[0]:+.2f} .. {ci[1]:+.2f}" if ci else "-"
        lines.append(f"| {row['row']} | {_number(row['metric'], '.4f')} | {mb('size_bytes')} | {mb('gzip_bytes')} | "
                     f"{_number(row['p50_ms_2_threads'], '.2f')} | {_number(row.get('delta_vs_stock_dynamic_pt'), '+.2f')} | "
                     f"{_number(row.get('gzip_ratio_vs_stock_dynamic'), '.2f')} | "
                     f"{_number(row.get('latency_ratio_vs_stock_dynamic'), '.2f')} | "
                     f"{released} | {ci} |")
    sps, verdict = result["train_samples_per_second"], result["verdict"]
    ours = (f"tfcompress finetune {sps['tfcompress_finetune']:.1f} (ratio **{sps['ratio']:.2f}x**)"
            if sps.get("ratio") is not None else "tfcompress: no finetune stage in this chain")
    lines += ["", f"Training samples/s: stock `model.fit` {sps['stock']:.1f}, {ours}.",
              f"Released artifact dominates stock dynamic ({metric} ≥, gzip ≤ {DOMINATES['gzip_ratio']}x, p50 ≤ "
              f"{DOMINATES['latency_ratio']}x): **{'yes' if verdict['released_dominates_stock_dynamic'] else 'no'}** "
              f"({', '.join(verdict['dominating_artifacts']) or 'none'}).",
              f"Released full-integer artifact within {FULL_INTEGER_BUDGET_PT} pt of stock dynamic: "
              f"**{'yes' if verdict['full_integer_within_0_5pt_of_stock_dynamic'] else 'no'}** (full-integer released: "
              f"{', '.join(verdict['released_full_integer']) or 'none'}).", ""]
    return lines


def seed_settings(args) -> dict:
    """What one seed's result depends on besides the seed: a finished seed is reused only with these."""
    keys = ("model", "data_root", "max_train_samples", "max_test_samples", "stock_epochs", "tfc_epochs", "tfc_stages",
            "set", "stock_seq_length", "test_files", "smoke")
    return {key: getattr(args, key) for key in keys}


def score_files(config: recipe.RecipeConfig, names: list[str], stock_dir: Path, stock: dict, output_dir: Path,
                report: dict, source_model: str) -> dict:
    """Per-example correctness of every artifact of both paths on the recipe's test file and on each of
    ``names`` (files beside it): artifact row -> file name -> [0/1, ...]."""
    files = [Path(config.data.test_file)] + [Path(config.data.test_file).parent / name for name in names]
    out: dict[str, dict[str, list[int]]] = {}
    for path in files:
        scored = config.copy()
        scored.data.test_file = str(path)
        context, ours = runner.Context(scored), runner.Context(scored)
        ours.current_model = source_model
        for name, hits in correctness(_artifact_inputs(context, ours, stock_dir, stock, output_dir, report)).items():
            out.setdefault(name, {})[path.name] = hits.astype(int).tolist()
    return out


def run_task(task: str, args, folder: Path, seed: int | None = None) -> dict:
    data_dir = None
    if args.smoke and not args.data_root:
        data_dir = smoke_data_dir(folder, task, args.max_train_samples, args.max_test_samples)
    elif args.data_root:
        data_dir = Path(args.data_root) / task
    model = args.model
    if args.smoke and not model:
        model = smoke_model_dir(folder, TASKS[task], num_labels=2 if task == "sst2" else 9)
    output_dir = Path(args.output_dir) / task if args.output_dir else folder / f"tfcompress-{task}"
    if seed is not None:
        output_dir = output_dir / f"seed{seed}"
        finished = output_dir / "stock_vs_tfcompress.json"  # a seed both paths finished: not run again
        if args.output_dir and finished.is_file():
            previous = json.loads(finished.read_text())
            recorded = previous.get("settings")
            if recorded is None:
                print(f"{task} seed {seed}: reusing {finished} (it does not record its settings: delete it to rerun)",
                      flush=True)
                return previous
            if recorded == seed_settings(args):
                print(f"{task} seed {seed}: reusing {finished}", flush=True)
                return previous
            print(f"{task} seed {seed}: {finished} was made with other settings; running it again", flush=True)
    config = recipe_config(task, args, output_dir, model, data_dir, seed)
    started = time.time()
    report = runner.run(config)
    options.print_summary(report, output_dir)
    tfc_seconds = time.time() - started
    export_stage = report.stage("export")
    if not export_stage:
        raise SystemExit(f"{task}: --tfc-stages must include export")
    seq_length = int(export_stage["seq_length"])
    stock_seq_length = args.stock_seq_length or config.data.max_length
    context = runner.Context(config)  # the starting model's tokenisation: the stock path's
    if args.output_dir:  # kept beside the run: a finished stock path is reused, an interrupted fit resumes
        stock_dir = output_dir / "stock"
        stock = kept_stock_path(context, stock_seq_length, args.stock_epochs, stock_dir)
    else:
        stock_dir = folder / f"stock-{task}-{seed}"
        stock_dir.mkdir()
        started = time.time()
        stock = stock_path(context, stock_seq_length, args.stock_epochs, stock_dir)
        stock["seconds"] = time.time() - started
    ours = runner.Context(config)
    ours.current_model = export_stage["source_model"]  # its tokenizer: a trim stage renumbers the ids
    inputs = _artifact_inputs(context, ours, stock_dir, stock, output_dir, report.data)
    latency = same_run_latency({name: (path, test.padded_batch(np.arange(1), pad_to=length)[0])
                                for name, (path, test, length) in inputs.items()},
                               runs=args.latency_runs, warmup=args.latency_warmup, rounds=args.latency_rounds)
    # per-example correctness; entity F1 has no per-example pairing
    paired = paired_vs_stock(inputs) if TASKS[task] == "sequence" else None
    result = compare(task, stock, report.data, latency, paired)
    test_examples = len(context.examples("test"))
    result.update({"seq_length": seq_length, "stock_seq_length": stock_seq_length, "test_examples": test_examples, "stock": stock,
                   "tfcompress": {"seconds": tfc_seconds, "config": config.to_dict(), "report": report.data}})
    if seed is not None or args.test_files:
        if TASKS[task] != "sequence":
            raise SystemExit(f"{task}: --seeds/--test-files summarise per-sentence accuracy (sequence tasks)")
        result["seed"] = seed
        result["settings"] = seed_settings(args)
        result["files"] = score_files(config, args.test_files, stock_dir, stock, output_dir, report.data,
                                      export_stage["source_model"])
        if seed is not None and args.output_dir:
            utils.atomic_write_json(output_dir / "stock_vs_tfcompress.json", result)
    return result


def main(argv=None):
    args = parse_args(argv)
    results, lines = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            if args.seeds == [None] and not args.test_files:
                results[task] = run_task(task, args, Path(tmp))
                section = summary(task, results[task])
            else:
                per_seed = {seed: run_task(task, args, Path(tmp), seed) for seed in args.seeds}
                results[task] = {"seeds": per_seed, "aggregate": _multiseed.aggregate(per_seed, DOMINATES)}
                section = _multiseed.summary_lines(task, results[task]["aggregate"], DOMINATES)
                for seed, result in per_seed.items():
                    section += summary(f"{task}, seed {seed}", result)
            lines += section
            print("\n".join(section), flush=True)
    name = "stock_vs_tfcompress-smoke" if args.smoke else "stock_vs_tfcompress"
    command = "python benchmarks/stock_vs_tfcompress.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_results(name, command.strip(), {"settings": vars(args), "tasks": results}, lines,
                         results_dir=args.results_dir, append_markdown=not args.smoke)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
