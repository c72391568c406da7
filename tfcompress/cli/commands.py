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
    tfcompress launch --workers 2 -- tfcompress run sst2 --smoke      # 2 local workers (TF_CONFIG)

Stage commands run one stage of the pipeline (:mod:`tfcompress.pipeline`) in ``--output-dir``; the
model they start from is ``--model``, or by default the model the latest earlier stage saved in that
folder (so ``finetune``, ``prune``, ``export``, ``evaluate`` chain by sharing ``--output-dir``).
Every config field can be overridden with ``--set section.field=value``; bad flags and bad overrides
exit with code 2 and a message naming the field.
"""
from __future__ import annotations

import argparse
import importlib
import runpy
import sys
from pathlib import Path

from tfcompress.cli import bench, env, launch, options
from tfcompress.cli.formatting import FORMATTER
from tfcompress.config import RecipeConfig

RECIPES = ("sst2", "conll2003", "custom_csv")


# ------------------------------------------------------------------------------------- run
def _run_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a recipe's whole stage chain (resumable)",
        description="Run a packaged recipe (or a recipe script) with the remaining arguments, e.g. "
                    "`tfcompress run sst2 --smoke`. The recipe's stages (sst2: finetune, distill, prune, trim, "
                    "export, evaluate, release) run in order; a rerun skips finished stages and resumes an "
                    "interrupted one. `tfcompress run sst2 --help` lists the recipe's own flags.")
    parser.add_argument("recipe", help="a packaged recipe (sst2, conll2003, custom_csv) or a path to a recipe script")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER,
                        help="arguments passed to the recipe (see `tfcompress run RECIPE --help`)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    path = Path(args.recipe)
    if path.suffix == ".py" and path.is_file():  # a recipe script of the user's own
        sys.argv = [str(path), *args.recipe_args]
        runpy.run_path(str(path), run_name="__main__")
        return 0
    if args.recipe not in RECIPES:
        print(f"tfcompress run: error: recipe {args.recipe!r} not found: one of {', '.join(RECIPES)} or a path "
              "to a recipe script (.py)", file=sys.stderr)
        return 2
    # deferred: only the recipe that runs is imported (its module builds its DEFAULTS at import)
    recipe = importlib.import_module(f"tfcompress.recipes.{args.recipe}")
    recipe.main(args.recipe_args, prog=f"tfcompress run {args.recipe}")
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
    return RecipeConfig(name="cli", output_dir="runs/tfcompress", stages=["finetune"])


def _stage_parser(subparsers, name: str) -> argparse.ArgumentParser:
    short, description = STAGE_HELP[name]
    parser = subparsers.add_parser(name, help=short, description=description, formatter_class=FORMATTER)
    defaults = _stage_defaults()
    options.add_common_arguments(parser, defaults)
    if name != "finetune":
        options.model_defaults_to_run_folder(parser, defaults)
    options.add_data_file_arguments(parser, defaults, task_choice=True)
    if name in ("finetune",):
        options.add_finetune_arguments(parser, defaults)
    if name == "distill":
        options.add_distill_arguments(parser, defaults)
    if name == "prune":
        options.add_prune_arguments(parser, defaults)
    if name == "trim":
        options.add_trim_arguments(parser, defaults, chain=False)
    if name == "qat":
        options.add_qat_arguments(parser, defaults)
    if name == "export":
        options.add_export_arguments(parser, defaults)
    if name == "evaluate":
        options.add_evaluate_arguments(parser, defaults, release=True)
        parser.add_argument("--release", action="store_true",
                            help="also run the release stage: bundle every artifact that passed the gate into "
                                 "OUTPUT/release/<name>/")
    parser.set_defaults(handler=_stage_command, stage=name, parser=parser)
    return parser


def _stage_command(args) -> int:
    # deferred: only stage commands need the pipeline (every stage, TFMOT, LiteRT)
    from tfcompress.pipeline import runner

    parser = args.parser
    defaults = _stage_defaults()
    stages = [args.stage] + (["release"] if getattr(args, "release", False) else [])
    if args.model is None:
        args.model = runner.latest_model(args.output_dir, args.stage) or defaults.model
    if args.stage == "qat" and not (args.qat_epochs or 0) > 0:
        args.qat_epochs = None  # keep qat_train.epochs from the defaults / --set
    try:
        config = options.config_from_args(args, defaults, stages=stages)
    except ValueError as error:
        parser.error(str(error))
    report = options.run_reporting_user_errors(runner.run, config, args.debug)
    options.print_summary(report, config.output_dir)
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
    bench.add_parser(subparsers)
    _run_parser(subparsers)
    env.add_parser(subparsers)
    launch.add_parser(subparsers)
    return parser


SUBCOMMANDS = ("finetune", "distill", "prune", "trim", "qat", "export", "evaluate", "bench", "run", "env", "launch")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
