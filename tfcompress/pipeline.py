"""Stage chaining for recipes: load -> finetune -> ... -> evaluate, each stage resumable.

A run folder holds everything needed to reproduce it from itself::

    OUTPUT/config.json            the full RecipeConfig of the last invocation
    OUTPUT/report.json            metrics of every stage and artifact (tfcompress.report)
    OUTPUT/<stage>/manifest.json  written last and atomically: config hash, metrics, seconds
    OUTPUT/<stage>/model/         the stage's model as a normal Hugging Face directory
    OUTPUT/<stage>/checkpoints/   resumable training state while the stage runs
    OUTPUT/tensorboard/<stage>/   TensorBoard event files

A stage whose manifest exists with the same config hash is skipped; a stage interrupted mid-way
resumes from its last checkpoint; a stage whose config changed is recomputed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tfcompress import _compat  # noqa: F401  (Keras choice before TF/transformers)
from tfcompress.report import Report
from tfcompress.train import TrainConfig
from tfcompress.utils import atomic_write_json, get_logger, to_json

log = get_logger("pipeline")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DataConfig:
    """Where a recipe's data is and how to read and cut it.

    Args:
        train_file / eval_file / test_file: paths; ``eval_file`` selects the best checkpoint,
            ``test_file`` gives the reported numbers.
        text_column / label_column: columns for text classification files.
        max_length: tokens per example at training time (longer ones are truncated and counted).
        max_train_samples / max_eval_samples / max_test_samples: keep the first N (0: all).
    """

    train_file: str = ""
    eval_file: str = ""
    test_file: str = ""
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = 128
    max_train_samples: int = 0
    max_eval_samples: int = 0
    max_test_samples: int = 0


@dataclass
class RecipeConfig:
    """Everything a recipe run needs; saved as ``OUTPUT/config.json``.

    Args:
        name: recipe name (``sst2``, ``conll2003``...), recorded in the report.
        task: ``"sequence"`` or ``"token"``.
        output_dir: the run folder.
        model: hub name or local directory of the starting model.
        data: a :class:`DataConfig`.
        train: the fine-tuning :class:`TrainConfig`.
        stages: the stages to run, in order.
    """

    name: str = "custom"
    task: str = "sequence"
    output_dir: str = "runs/custom"
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: list[str] = field(default_factory=lambda: ["finetune"])

    def to_dict(self) -> dict:
        return json.loads(to_json(dataclasses.asdict(self)))


STAGES: dict[str, Callable] = {}


def stage(name: str):
    """Register a stage function ``fn(context) -> record dict``."""

    def register(function):
        STAGES[name] = function
        return function

    return register


def config_hash(*parts) -> str:
    return hashlib.sha256(to_json(list(parts)).encode()).hexdigest()[:16]


class Context:
    """What stages share within one run: the config, the report, lazily loaded data and tokenizer."""

    def __init__(self, config: RecipeConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self._cache: dict = {}

    # data -------------------------------------------------------------------------------
    def tokenizer(self):
        if "tokenizer" not in self._cache:
            from tfcompress import models

            self._cache["tokenizer"] = models.load_tokenizer(self.config.model)
        return self._cache["tokenizer"]

    def examples(self, split: str):
        from tfcompress import data

        key = f"examples/{split}"
        if key not in self._cache:
            cfg = self.config.data
            path = {"train": cfg.train_file, "eval": cfg.eval_file, "test": cfg.test_file}[split]
            if not path:
                raise ValueError(f"data.{split}_file is not set")
            label_names = None if split == "train" else self.examples("train").label_names
            if self.config.task == "sequence":
                examples = data.read_text_classification(path, cfg.text_column, cfg.label_column, label_names)
            else:
                examples = data.read_conll(path, label_names)
            limit = {"train": cfg.max_train_samples, "eval": cfg.max_eval_samples, "test": cfg.max_test_samples}[split]
            if limit:
                examples = examples.head(limit) if hasattr(examples, "head") else _head(examples, limit)
            self._cache[key] = examples
        return self._cache[key]

    def encoded(self, split: str, max_length: int | None = None):
        from tfcompress import data

        max_length = max_length or self.config.data.max_length
        key = f"encoded/{split}/{max_length}"
        if key not in self._cache:
            encoded = data.encode(self.tokenizer(), self.examples(split), max_length=max_length)
            if encoded.num_truncated:
                log.info("%s: %d of %d examples truncated at max_length=%d", split, encoded.num_truncated,
                         len(encoded), max_length)
            self._cache[key] = encoded
        return self._cache[key]

    @property
    def label_names(self) -> list[str]:
        return list(self.examples("train").label_names)

    # report -----------------------------------------------------------------------------
    def report(self) -> Report:
        from tfcompress import metrics

        return Report.load_or_create(self.output_dir, self.config.name, metrics.primary_metric(self.config.task),
                                     self.config.model)


def _head(examples, limit: int):
    values = dataclasses.asdict(examples)
    for key, value in values.items():
        if isinstance(value, list) and len(value) == len(examples) and key != "label_names":
            values[key] = value[:limit]
    return type(examples)(**values)


def manifest_path(output_dir: Path, name: str) -> Path:
    return Path(output_dir) / name / "manifest.json"


def stage_is_done(output_dir: Path, name: str, digest: str) -> bool:
    path = manifest_path(output_dir, name)
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("config_hash") == digest
    except json.JSONDecodeError:
        return False


def run(config: RecipeConfig) -> Report:
    """Run ``config.stages`` in order, skipping finished ones; returns the final report."""
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages={config.stages}: unknown stage(s) {unknown}; known: {list(STAGES)}")
    context = Context(config)
    context.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(context.output_dir / "config.json", config.to_dict())
    digest = None
    for name in config.stages:
        # A stage's hash covers its own config and every earlier stage's hash, so a change upstream
        # recomputes everything downstream.
        digest = config_hash(digest, name, stage_config(config, name))
        if stage_is_done(context.output_dir, name, digest):
            log.info("stage %s: done already (config hash %s), skipped", name, digest)
            continue
        log.info("stage %s: running", name)
        started = time.time()
        record = STAGES[name](context) or {}
        seconds = time.time() - started
        manifest = {"stage": name, "config_hash": digest, "seconds": round(seconds, 1),
                    "metrics": record.get("metrics", {}), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(manifest_path(context.output_dir, name), manifest)
    return context.report()


def stage_config(config: RecipeConfig, name: str) -> dict:
    """The part of the config a stage depends on (what its hash covers)."""
    base = {"model": config.model, "task": config.task, "data": dataclasses.asdict(config.data)}
    if name == "finetune":
        base["train"] = dataclasses.asdict(config.train)
    return base


# ------------------------------------------------------------------------------------ stages
@stage("finetune")
def finetune_stage(context: Context) -> dict:
    """Fine-tune the starting model on the train split, select on eval, score on test."""
    from tfcompress import metrics, models
    from tfcompress.train import Trainer

    config = context.config
    stage_dir = context.output_dir / "finetune"
    model = models.load_model(config.model, task=config.task, labels=context.label_names)
    train, evaluation = context.encoded("train"), context.encoded("eval")
    started = time.time()
    trainer = Trainer(model, config.task, config.train, stage_dir, label_names=context.label_names,
                      stage="finetune")
    result = trainer.fit(train, evaluation)
    models.save_model(model, context.tokenizer(), stage_dir / "model")
    test_metrics = metrics.evaluate(trainer.predict_fn(), context.encoded("test"),
                                    batch_size=config.train.eval_batch_size)
    seconds = time.time() - started
    report = context.report()
    report.data["model"] = {"name": config.model, "params": models.count_params(model)}
    record = report.set_stage(
        "finetune", metrics=_scalars(test_metrics), seconds=seconds, output="finetune/",
        eval_metrics=_scalars(result["metrics"]), best_step=result["best_step"], steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], train_examples=len(train),
        truncated=train.num_truncated, per_class=test_metrics.get("per_class") or test_metrics.get("per_entity"))
    report.save()
    primary = metrics.primary_metric(config.task)
    log.info("finetune: test %s=%.4f (eval %.4f) in %.0f s", primary, test_metrics[primary],
             result["metrics"].get(primary, float("nan")), seconds)
    return record


def _scalars(values: dict) -> dict:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


# ------------------------------------------------------------------------------ recipe CLI
def default_data_dir(task_folder: str) -> Path | None:
    """``../shared/data/<task>`` beside the project (or beside the working directory), if present."""
    for base in (PROJECT_ROOT.parent, Path.cwd().parent, Path.cwd()):
        candidate = base / "shared" / "data" / task_folder
        if candidate.is_dir():
            return candidate
    return None


def add_recipe_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    """The flags every recipe shares."""
    parser.add_argument("--output-dir", default=defaults.output_dir, help="run folder (default: %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the task's files (default: ../shared/data/<task> when it exists)")
    parser.add_argument("--model", default=defaults.model, help="hub name or local HF directory (default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=defaults.train.epochs, help="fine-tuning epochs (default: %(default)s)")
    parser.add_argument("--max-train-samples", type=int, default=defaults.data.max_train_samples,
                        help="use the first N training examples (0: all; default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.train.batch_size, help="default: %(default)s")
    parser.add_argument("--learning-rate", type=float, default=defaults.train.learning_rate, help="default: %(default)s")
    parser.add_argument("--max-length", type=int, default=defaults.data.max_length, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=defaults.train.seed, help="default: %(default)s")
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run of the same recipe: 256 train / 128 eval / 128 test examples, 1 epoch")
    parser.add_argument("--stages", default=",".join(defaults.stages),
                        help="comma-separated stages to run, in order (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override any config field, e.g. --set train.warmup_ratio=0.1 (repeatable)")


def config_from_args(args: argparse.Namespace, defaults: RecipeConfig, files: dict[str, str],
                     task_folder: str) -> RecipeConfig:
    """Apply the shared recipe flags to ``defaults``; ``files`` maps split -> file name in the data dir."""
    config = dataclasses.replace(defaults, data=dataclasses.replace(defaults.data),
                                 train=dataclasses.replace(defaults.train))
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(task_folder)
    if data_dir is None:
        raise SystemExit(
            f"error: no data for {task_folder}: pass --data-dir, or put {', '.join(files.values())} in "
            f"{PROJECT_ROOT.parent / 'shared' / 'data' / task_folder}")
    for split, filename in files.items():
        path = data_dir / filename
        if not path.exists():
            raise SystemExit(f"error: {path} not found (--data-dir {data_dir} must hold {', '.join(files.values())})")
        setattr(config.data, f"{split}_file", str(path))
    config.output_dir = args.output_dir
    config.model = args.model
    config.train.epochs = args.epochs
    config.train.batch_size = args.batch_size
    config.train.learning_rate = args.learning_rate
    config.train.seed = args.seed
    config.data.max_length = args.max_length
    config.data.max_train_samples = args.max_train_samples
    config.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.smoke:
        config.data.max_train_samples = min(config.data.max_train_samples or 256, 256)
        config.data.max_eval_samples = 128
        config.data.max_test_samples = 128
        config.train.epochs = 1
        config.train.log_every = 4
    for assignment in args.set:
        apply_override(config, assignment)
    config.train.validate()
    return config


def apply_override(config, assignment: str) -> None:
    """Set ``section.field=value`` on a nested dataclass, converting ``value`` to the field's type."""
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE, e.g. train.epochs=2")
    dotted, raw = assignment.split("=", 1)
    target = config
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ValueError(f"--set {assignment!r}: no config section {part!r}")
        target = getattr(target, part)
    name = parts[-1]
    fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    if name not in fields:
        raise ValueError(f"--set {assignment!r}: unknown field {dotted!r}; known: {sorted(fields)}")
    current = getattr(target, name)
    try:
        value = _convert(raw, current)
    except ValueError as error:
        raise ValueError(f"--set {assignment!r}: {error}") from None
    setattr(target, name, value)


def _convert(raw: str, current):
    lowered = raw.strip().lower()
    if isinstance(current, bool):
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{raw!r} is not a boolean")
    if lowered in ("none", "null"):
        return None
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, (list, tuple)):
        return type(current)(item.strip() for item in raw.split(",") if item.strip())
    if current is None:
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def recipe_main(defaults: RecipeConfig, files: dict[str, str], task_folder: str, description: str,
                argv=None) -> Report:
    """Parse a recipe's command line, run it, print where the results are."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(parser, defaults)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, defaults, files, task_folder)
    except ValueError as error:
        parser.error(str(error))
    report = run(config)
    print(f"report: {Path(config.output_dir) / 'report.json'}")
    for record in report.data["stages"]:
        print(f"  {record['name']}: " + ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()))
    os.sys.stdout.flush()
    return report
