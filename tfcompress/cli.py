"""The ``tfcompress`` command line: one parser function per subcommand."""
from __future__ import annotations

import argparse
import json
import os
import platform
import runpy
import sys
from pathlib import Path


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


def _run_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a recipe's stages (resumable)",
        description="Run a recipe script (recipes/NAME.py or a path) with the remaining arguments, e.g. "
                    "`tfcompress run sst2 --smoke`. Finished stages are skipped on a rerun.")
    parser.add_argument("recipe", help="recipe name in recipes/ (sst2, conll2003) or a path to a recipe script")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="arguments passed to the recipe")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    path = Path(args.recipe)
    if not path.exists():
        path = Path(__file__).resolve().parents[1] / "recipes" / f"{args.recipe}.py"
    if not path.exists():
        print(f"error: recipe {args.recipe!r} not found (tried {args.recipe} and {path})", file=sys.stderr)
        return 2
    sys.argv = [str(path), *args.recipe_args]
    runpy.run_path(str(path), run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfcompress", description="Compress Hugging Face TF encoders to TFLite.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _env_parser(subparsers)
    _run_parser(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
