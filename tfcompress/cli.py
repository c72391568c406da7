"""The ``tfcompress`` command line: one parser function per subcommand.

::

    tfcompress run sst2 --smoke                       # a recipe's whole stage chain (resumable)
    tfcompress finetune --train-file train.csv --output-dir runs/mine
    tfcompress prune    --train-file train.csv --output-dir runs/mine --prune-sparsity 0.8
    tfcompress trim     --train-file train.csv --output-dir runs/mine
    tfcompress export   --train-file train.csv --output-dir runs/mine --export int8,dynamic
    tfcompress evaluate --train-file train.csv --test-file test.csv --output-dir runs/mine --release
    tfcompress bench runs/mine/export/int8.tflite --threads 1,2
    tfcompress env

Stage commands run one stage of the pipeline (:mod:`tfcompress.pipeline`) in ``--output-dir``; the
model they start from is ``--model``, or by default the model the latest earlier stage saved in that
folder (so ``finetune``, ``prune``, ``export``, ``evaluate`` chain by sharing ``--output-dir``).
Every config field can be overridden with ``--set section.field=value``; bad flags and bad overrides
exit with code 2 and a message naming the field.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import sys
from pathlib import Path

class FORMATTER(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to flags whose help does not state its default already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------- env
def _env_parser(subparsers) -> None:
    parser = subparsers.add_parser("env", help="print versions and hardware (paste into bug reports)",
                                   description="Print versions of TF, tf-keras, TFMOT, transformers, LiteRT "
                                               "and the CPU/GPU devices TensorFlow sees.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_env)


def environment() -> dict:
    from tfcompress._compat import tf, versions

    info = {"versions": versions(), "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()],
            "gpu_available": bool(tf.config.list_physical_devices("GPU")),
            "tf_keras_is_tf_keras": tf.keras.__name__.startswith("tf_keras")}
    try:
        from tfcompress.models import packaged_model_path

        info["packaged_model"] = packaged_model_path()
    except Exception as error:  # report, don't fail: env is for bug reports
        info["packaged_model"] = f"unavailable ({error})"
    return info


def _env(args) -> int:
    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for name, version in info["versions"].items():
        print(f"{name:32s} {version}")
    for key in ("platform", "cpu", "cpu_count", "devices", "gpu_available", "tf_keras_is_tf_keras", "packaged_model"):
        print(f"{key:32s} {info[key]}")
    return 0


# ------------------------------------------------------------------------------------- run
def _run_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a recipe's whole stage chain (resumable)",
        description="Run a recipe script (recipes/NAME.py or a path) with the remaining arguments, e.g. "
                    "`tfcompress run sst2 --smoke`. The recipe's stages (finetune, prune, export, evaluate, "
                    "release by default) run in order; a rerun skips finished stages and resumes an "
                    "interrupted one. `tfcompress run sst2 --help` lists the recipe's own flags.")
    parser.add_argument("recipe", help="recipe name in recipes/ (sst2, conll2003, custom_csv) or a path to a "
                                       "recipe script")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER,
                        help="arguments passed to the recipe (see `tfcompress run RECIPE --help`)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    path = Path(args.recipe)
    if not path.is_file():
        path = Path(__file__).resolve().parents[1] / "recipes" / f"{args.recipe}.py"
    if not path.is_file():
        print(f"tfcompress run: error: recipe {args.recipe!r} not found (tried {args.recipe} and {path})",
              file=sys.stderr)
        return 2
    sys.argv = [f"tfcompress run {args.recipe}", *args.recipe_args]
    runpy.run_path(str(path), run_name="__main__")
    return 0


# ------------------------------------------------------------------------------ stage commands
STAGE_HELP = {
    "finetune": ("fine-tune a model on your data",
                 "Fine-tune --model on --train-file (best checkpoint on --eval-file, numbers on --test-file); "
                 "saves OUTPUT/finetune/model."),
    "distill": ("distil a fine-tuned teacher into a smaller student",
                "Distil the teacher (--distill-from, else the latest model in --output-dir, else --model) into "
                "a --student-layers student initialised from evenly spaced teacher blocks; saves "
                "OUTPUT/distill/model and records teacher and student metrics."),
    "prune": ("magnitude-prune a model while fine-tuning (TFMOT)",
              "Prune the encoder Dense kernels (and the embeddings with --prune-embeddings) of the latest model "
              "in --output-dir (or --model) with TFMOT wrappers while fine-tuning, strip, save OUTPUT/prune/model "
              "and record per-layer sparsity and saved sizes."),
    "trim": ("keep only the vocabulary the training data uses",
             "Trim the word-embedding table of the latest model in --output-dir (or --model) to the tokens the "
             "--train-file uses, plus special tokens and single characters (--trim-keep-first N keeps the first N "
             "vocabulary ids too); saves OUTPUT/trim/model with the trimmed tokenizer and records the test metric "
             "before and after."),
    "qat": ("quantization-aware training (TFMOT)",
            "Quantization-aware fine-tuning of the latest model in --output-dir (or --model) with TFMOT "
            "wrappers on the encoder Dense layers; saves OUTPUT/qat/model (stripped) and the wrapped weights "
            "that the export stage converts to qat-int8."),
    "export": ("export TFLite artifacts",
               "Convert the latest model in --output-dir (or --model) to one .tflite per --export mode at a fixed "
               "sequence length; int8/int16x8 are calibrated on training examples."),
    "evaluate": ("evaluate exported artifacts with ai_edge_litert and gate them",
                 "Run every artifact of --output-dir's export stage on the test file: metric, agreement with the "
                 "Keras model, size, gzip size, latency p50/p90 at 1 and 2 threads, parity gate "
                 "(--accuracy-budget). --release also writes the release bundles of those that pass."),
}


def _stage_defaults():
    from tfcompress.pipeline import RecipeConfig

    return RecipeConfig(name="cli", output_dir="runs/tfcompress", stages=["finetune"])


def _stage_parser(subparsers, name: str) -> argparse.ArgumentParser:
    from tfcompress import pipeline

    short, description = STAGE_HELP[name]
    parser = subparsers.add_parser(name, help=short, description=description, formatter_class=FORMATTER)
    defaults = _stage_defaults()
    pipeline.add_common_arguments(parser, defaults)
    if name != "finetune":
        pipeline.model_defaults_to_run_folder(parser, defaults)
    pipeline.add_data_file_arguments(parser, defaults, task_choice=True)
    if name in ("finetune",):
        pipeline.add_finetune_arguments(parser, defaults)
    if name == "distill":
        pipeline.add_distill_arguments(parser, defaults)
    if name == "prune":
        pipeline.add_prune_arguments(parser, defaults)
    if name == "trim":
        pipeline.add_trim_arguments(parser, defaults, chain=False)
    if name == "qat":
        pipeline.add_qat_arguments(parser, defaults)
    if name == "export":
        pipeline.add_export_arguments(parser, defaults)
    if name == "evaluate":
        pipeline.add_evaluate_arguments(parser, defaults, release=True)
        parser.add_argument("--release", action="store_true",
                            help="also run the release stage: bundle every artifact that passed the gate into "
                                 "OUTPUT/release/<name>/")
    parser.set_defaults(handler=_stage_command, stage=name, parser=parser)
    return parser


def _stage_command(args) -> int:
    from tfcompress import pipeline

    parser = args.parser
    defaults = _stage_defaults()
    stages = [args.stage] + (["release"] if getattr(args, "release", False) else [])
    if args.model is None:
        args.model = pipeline.latest_model(args.output_dir, args.stage) or defaults.model
    if args.stage == "qat" and not (args.qat_epochs or 0) > 0:
        args.qat_epochs = None  # keep qat_train.epochs from the defaults / --set
    try:
        config = pipeline.config_from_args(args, defaults, stages=stages)
    except ValueError as error:
        parser.error(str(error))
    report = pipeline.run(config)
    pipeline.print_summary(report, config.output_dir)
    return 0


# ------------------------------------------------------------------------------------- bench
def _bench_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="latency of .tflite artifacts (batch 1, warm-up excluded)", formatter_class=FORMATTER,
        description="Time .tflite artifacts with ai_edge_litert at batch 1: p50, p90 and mean over --runs "
                    "invocations after --warmup untimed ones, for each thread count. Inputs are all-ones token "
                    "ids with a full attention mask at the artifact's own sequence length. Also shows into how many "
                    "pieces the XNNPACK delegate splits the graph (1: all of it runs in XNNPACK).")
    parser.add_argument("artifacts", nargs="*", help=".tflite files")
    parser.add_argument("--run-dir", default=None,
                        help="a run folder: benchmark every artifact listed in its report.json")
    parser.add_argument("--threads", default="1,2", help="comma-separated interpreter thread counts")
    parser.add_argument("--runs", type=int, default=100, help="timed invocations per thread count")
    parser.add_argument("--warmup", type=int, default=10, help="untimed invocations first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the artifacts in turn this many times (A B C A B C ...) and report the "
                             "median of each statistic over the rounds: a comparison that is fair when the "
                             "machine's load drifts")
    parser.add_argument("--no-xnnpack", action="store_true",
                        help="time LiteRT's builtin kernels only (without its default XNNPACK delegate): what "
                             "a runtime without XNNPACK would run (XNNPACK pieces then show 0)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=_bench, parser=parser)


def _bench(args) -> int:
    parser = args.parser
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads {args.threads!r}: expected comma-separated integers, e.g. 1,2")
    if not threads or min(threads) < 1:
        parser.error(f"--threads {args.threads!r}: thread counts must be >= 1")
    if args.runs < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error(f"--runs {args.runs} / --warmup {args.warmup} / --rounds {args.rounds}: need runs >= 1, "
                     f"warmup >= 0 and rounds >= 1")
    paths = [Path(p) for p in args.artifacts]
    if args.run_dir:
        report_path = Path(args.run_dir) / "report.json"
        if not report_path.is_file():
            parser.error(f"--run-dir {args.run_dir}: no report.json there")
        paths += [Path(args.run_dir) / a["path"] for a in json.loads(report_path.read_text()).get("artifacts", [])
                  if a.get("path")]
    if not paths:
        parser.error("give .tflite files or --run-dir")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such artifact: {', '.join(missing)}")
    from tfcompress.runtime import TFLiteModel, sizes

    import numpy as np

    interpreters = {(path, count): TFLiteModel(path, num_threads=count, xnnpack=not args.no_xnnpack)
                    for path in paths for count in threads}
    samples = {key: [] for key in interpreters}
    for _ in range(args.rounds):
        for key, model in interpreters.items():
            samples[key].append(model.latency(warmup=args.warmup, runs=args.runs))
    results = []
    for path in paths:
        row = {"artifact": str(path), **sizes(path), "latency_ms": {}, "rounds": args.rounds,
               "xnnpack": not args.no_xnnpack,
               "xnnpack_partitions": interpreters[(path, threads[0])].xnnpack_partitions(),
               "seq_length": int(interpreters[(path, threads[0])].seq_length)}
        for count in threads:
            rounds = samples[(path, count)]
            row["latency_ms"][f"threads{count}"] = {k: round(float(np.median([r[k] for r in rounds])), 3)
                                                   for k in rounds[0]}
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    header = "artifact | seq | MB | gzip MB | XNNPACK pieces | " + " | ".join(f"p50/p90 ms @{t} thr" for t in threads)
    print(header)
    for row in results:
        cells = [f"{row['latency_ms'][f'threads{t}']['p50']:.2f}/{row['latency_ms'][f'threads{t}']['p90']:.2f}"
                 for t in threads]
        print(f"{row['artifact']} | {row['seq_length']} | {row['size_bytes'] / 1e6:.2f} | "
              f"{row['gzip_bytes'] / 1e6:.2f} | {row['xnnpack_partitions']} | " + " | ".join(cells))
    return 0


# ------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfcompress",
        description="Compress Hugging Face TF encoders to TFLite: fine-tune, distil, prune, quantize, export, "
                    "evaluate against the Keras model, release for mobile apps.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGE_HELP:
        _stage_parser(subparsers, name)
    _bench_parser(subparsers)
    _run_parser(subparsers)
    _env_parser(subparsers)
    return parser


SUBCOMMANDS = ("finetune", "distill", "prune", "trim", "qat", "export", "evaluate", "bench", "run", "env")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
