"""Recipe command lines: argument groups per stage, ``--set`` overrides, config from arguments."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from tfcompress.config.constants import EXPORT_MODES, REMOVED_FIELDS, STAGE_ORDER
from tfcompress.config.recipe import RecipeConfig
from tfcompress.report import Report
from tfcompress.utils import get_logger
from tfcompress.errors import ConfigError, TfcompressError

log = get_logger("pipeline")
# ------------------------------------------------------------------------------ command line
def default_data_dir(task_folder: str) -> Path | None:
    """``shared/data/<task>`` beside the working directory or inside it (the layout of a checkout next to
    its shared data), if present; otherwise the recipe needs ``--data-dir``."""
    for base in (Path.cwd().parent, Path.cwd()):
        candidate = base / "shared" / "data" / task_folder
        if candidate.is_dir():
            return candidate
    return None


def _csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _export_modes(value: str) -> list[str]:
    modes = _csv_list(value)
    unknown = [mode for mode in modes if mode not in EXPORT_MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown export mode(s) {unknown or [value]}: use {','.join(EXPORT_MODES)}")
    return modes


def add_common_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    """Run folder, model, sequence length, seed, smoke mode and ``--set``."""
    group = parser.add_argument_group("run")
    group.add_argument("--output-dir", default=defaults.output_dir,
                       help="run folder; rerunning with the same folder skips finished stages (default: %(default)s)")
    group.add_argument("--model", default=defaults.model,
                       help="hub name or local Hugging Face directory of the starting model (default: %(default)s)")
    group.add_argument("--max-length", type=int, default=defaults.data.max_length,
                       help="tokens per example for training; longer ones are truncated (default: %(default)s)")
    group.add_argument("--max-train-samples", type=int, default=defaults.data.max_train_samples,
                       help="use the first N training examples (0: all; default: %(default)s)")
    group.add_argument("--seed", type=int, default=defaults.train.seed,
                       help="seed of weights' initialisation and data order, every stage (default: %(default)s)")
    group.add_argument("--debug", action="store_true", default=debug_from_environment(),
                       help="show the traceback of a user error too (also: TFCOMPRESS_DEBUG=1)")
    group.add_argument("--smoke", action="store_true",
                       help="seconds-long run of the same code path: 256 train / 128 eval / 128 test examples, "
                            "1 epoch per training stage, 32 calibration examples, 20 latency runs")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override any config field with a typed value, e.g. --set prune.final_sparsity=0.8, "
                            "--set prune_train.epochs=2, --set export.seq_length=64 (repeatable; sections: "
                            "data, train, teacher, teacher_train, student, distill, distill_train, prune, prune_train, qat_train, export, "
                            "evaluate, release)")


def add_data_file_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig, task_choice: bool) -> None:
    """Explicit data files (the CLI stage commands and the custom_csv recipe)."""
    group = parser.add_argument_group("data")
    if task_choice:
        group.add_argument("--task", choices=("sequence", "token"), default=defaults.task,
                           help="sequence = text classification (TSV/CSV/JSONL files), token = token "
                                "classification (CoNLL files) (default: %(default)s)")
    group.add_argument("--train-file", required=True,
                       help="training file; its labels (sorted, or numeric order for integer labels) define the classes")
    group.add_argument("--eval-file", default=None,
                       help="validation file for checkpoint selection (default: the training file)")
    group.add_argument("--test-file", default=None,
                       help="file for the reported numbers and artifact evaluation (default: the eval file)")
    group.add_argument("--text-column", default=defaults.data.text_column,
                       help="text column (CSV/TSV header or JSONL key) (default: %(default)s)")
    group.add_argument("--label-column", default=defaults.data.label_column,
                       help="label column; labels may be any strings or integers (default: %(default)s)")


def add_finetune_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    group = parser.add_argument_group("fine-tuning (more: --set train.FIELD=VALUE)")
    group.add_argument("--epochs", type=float, default=defaults.train.epochs,
                       help="fine-tuning epochs (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=defaults.train.batch_size,
                       help="examples per step, every training stage (default: %(default)s)")
    group.add_argument("--learning-rate", type=float, default=defaults.train.learning_rate,
                       help="peak fine-tuning learning rate (default: %(default)s)")
    group.add_argument("--pooling", choices=("auto", "cls", "mean"), default=defaults.pooling,
                       help="sequence head of the fine-tuned model: the [CLS] pooler, the masked mean of the last "
                            "hidden states (BERT architecture), or auto = what the checkpoint was trained with "
                            "(a sentence-transformers Pooling config, e.g. mean for the packaged MiniLM; else "
                            "cls) (default: %(default)s)")


def add_distill_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    d = defaults.distill
    group = parser.add_argument_group("distillation (stage 'distill'; more: --set distill.FIELD / distill_train.FIELD)")
    group.add_argument("--teacher", default=None, metavar="CHECKPOINT",
                       help="fine-tune this checkpoint as the teacher (stage 'teacher', resumable; e.g. "
                            "sentence-transformers/all-mpnet-base-v2) and distil --model's student from it; "
                            "adds the teacher and distill stages")
    group.add_argument("--teacher-epochs", type=float, default=None,
                       help=f"epochs of the teacher stage (default: {defaults.teacher_train.epochs:g})")
    group.add_argument("--distill-from", default=None, metavar="TEACHER_DIR",
                       help="an already fine-tuned teacher directory (e.g. OUTPUT/teacher/model of an earlier "
                            "run); adds the distill stage and skips fine-tuning (default: the teacher stage's "
                            "model, else the finetune stage's)")
    group.add_argument("--student-layers", type=int, default=None,
                       help=f"transformer blocks of the student, copied from evenly spaced blocks of the teacher "
                            f"(same architecture and vocabulary) or else of --model (student.init); "
                            f"adds the distill stage, 0 drops it (default: {defaults.student.num_layers}, "
                            f"{'on' if 'distill' in defaults.stages else 'off'})")
    group.add_argument("--temperature", type=float, default=d.temperature,
                       help="softmax temperature of the KL term (default: %(default)s)")
    group.add_argument("--alpha", type=float, default=d.alpha,
                       help="weight of the task cross-entropy; the KL term gets 1 - alpha (default: %(default)s)")
    group.add_argument("--hidden-loss-weight", type=float, default=d.hidden_loss_weight,
                       help="weight of the hidden-state MSE over the layer map, 0 = off (default: %(default)s)")
    group.add_argument("--attention-loss-weight", type=float, default=d.attention_loss_weight,
                       help="weight of the attention-distribution KL over the layer map, 0 = off (default: %(default)s)")
    group.add_argument("--distill-epochs", type=float, default=defaults.distill_train.epochs,
                       help="epochs of the distill stage (default: %(default)s)")
    group.add_argument("--transfer-file", default=d.transfer_file, metavar="TEXT_FILE", help="unlabelled texts, one "
                       "per line (token task: words split by spaces), labelled by the teacher; needs --alpha < 1")
    group.add_argument("--augment-copies", type=int, default=d.augment_copies,
                       help="augmented copies of each training text or sentence (masked, n-gram, neighbour words), "
                            "labelled by the teacher, 0 = off; needs --alpha < 1 (default: %(default)s)")


def add_prune_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    p = defaults.prune
    group = parser.add_argument_group("pruning (stage 'prune'; more: --set prune.FIELD / prune_train.FIELD)")
    group.add_argument("--prune-sparsity", type=float, default=p.final_sparsity,
                       help="final fraction of zeros in each pruned weight, in [0, 1) (default: %(default)s)")
    group.add_argument("--prune-schedule", choices=("polynomial", "constant"), default=p.schedule,
                       help="TFMOT PolynomialDecay (cubic ramp) or ConstantSparsity (default: %(default)s)")
    group.add_argument("--prune-structure", choices=("unstructured", "2:4"), default=p.structure,
                       help="unstructured, or 2:4 (two zeros in every four weights; implies 0.5) "
                            "(default: %(default)s)")
    group.add_argument("--prune-embeddings", action=argparse.BooleanOptionalAction, default=p.prune_embeddings,
                       help="also prune the word-embedding table (half of MiniLM's parameters); "
                            "--no-prune-embeddings leaves it dense (default: %(default)s)")
    group.add_argument("--prune-epochs", type=float, default=defaults.prune_train.epochs,
                       help="epochs of pruning while fine-tuning (default: %(default)s)")
    group.add_argument("--prune-distill-alpha", type=float, default=defaults.prune_distill.alpha,
                       help="task-loss weight while pruning; below 1 the dense input model is a frozen teacher "
                            "and the rest is T^2-scaled KL on its logits (temperature: --set "
                            "prune_distill.temperature=T) (default: %(default)s; 1 = no teacher)")


def add_trim_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig, chain: bool = True) -> None:
    """``chain``: also the ``--trim-vocab`` flag that adds the stage to a recipe's chain."""
    group = parser.add_argument_group("vocabulary trimming (stage 'trim'; more: --set trim.FIELD)")
    if chain:
        default = "on" if "trim" in defaults.stages else "off"
        group.add_argument("--trim-vocab", action=argparse.BooleanOptionalAction, default=None,
                           help="add (--no-trim-vocab: drop) the trim stage before QAT/export: keep only the "
                                "word-embedding rows of the tokens the training split uses (plus specials and "
                                "single characters); the release bundle's vocab.txt shrinks with it "
                                f"(default: {default})")
    group.add_argument("--trim-keep-first", type=int, default=defaults.trim.keep_first,
                       help="also keep the first N ids of the original vocabulary (roughly the most frequent "
                            "words in BERT vocabularies) (default: %(default)s)")


def add_qat_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    group = parser.add_argument_group("quantization-aware training (stage 'qat'; more: --set qat_train.FIELD)")
    group.add_argument("--qat-epochs", type=float, default=None,
                       help="epochs of QAT; > 0 adds the qat stage after pruning (default: no QAT stage)")


def add_export_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    group = parser.add_argument_group("export (stage 'export'; more: --set export.FIELD)")
    group.add_argument("--export", type=_export_modes, default=list(defaults.export.modes), metavar="MODES",
                       help=f"comma-separated TFLite modes among {','.join(EXPORT_MODES)} "
                            f"(default: {','.join(defaults.export.modes)})")
    group.add_argument("--seq-length", type=int, default=defaults.export.seq_length,
                       help="fixed sequence length of the artifacts; 0 = the 99th percentile of the training "
                            "lengths (default: %(default)s)")


def add_evaluate_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig, release: bool = True) -> None:
    group = parser.add_argument_group("evaluation and release (stages 'evaluate', 'release')")
    group.add_argument("--accuracy-budget", type=float, default=defaults.evaluate.accuracy_budget,
                       help="parity gate: an artifact more than this many points of the metric below the Keras "
                            "model it came from fails and is not released (default: %(default)s)")
    if release:
        group.add_argument("--allow-regression", action="store_true", default=defaults.release.allow_regression,
                           help="release artifacts that failed the parity gate too")
        group.add_argument("--label-names", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                           metavar="NAMES", help="readable names of integer class labels, comma-separated in label-id "
                           f"order, for the release ('' keeps them) (default: {','.join(defaults.release.label_names) or 'the labels'})")


def model_defaults_to_run_folder(parser: argparse.ArgumentParser, defaults: RecipeConfig) -> None:
    """``--model`` defaults to None: the caller then takes :func:`latest_model` of ``--output-dir``
    (the model the latest earlier stage saved there), else ``defaults.model``; the help says so."""
    parser.set_defaults(model=None)
    for action in parser._actions:  # noqa: SLF001 - reword one help string
        if action.dest == "model":
            action.help = ("starting model: a hub name or local Hugging Face directory (default: the model the "
                           f"latest earlier stage saved in --output-dir, else {defaults.model})")


def add_recipe_arguments(parser: argparse.ArgumentParser, defaults: RecipeConfig, data_dir: bool = True) -> None:
    """The flags every recipe shares (``data_dir=False`` for recipes that take explicit files)."""
    add_common_arguments(parser, defaults)
    model_defaults_to_run_folder(parser, defaults)
    if data_dir:
        parser.add_argument("--data-dir", default=None,
                            help="folder with the task's files (default: ../shared/data/<task> when it exists)")
    parser.add_argument("--stages", type=_csv_list, default=None,
                        help="comma-separated stages to run, in order, from "
                             f"{','.join(STAGE_ORDER)} (default: {','.join(defaults.stages)}, plus distill "
                             "with --distill-from/--student-layers and qat with --qat-epochs)")
    add_finetune_arguments(parser, defaults)
    add_distill_arguments(parser, defaults)
    add_prune_arguments(parser, defaults)
    add_trim_arguments(parser, defaults)
    add_qat_arguments(parser, defaults)
    add_export_arguments(parser, defaults)
    add_evaluate_arguments(parser, defaults)


def chain_stages(args: argparse.Namespace, defaults: RecipeConfig) -> list[str]:
    """The stage chain: ``--stages`` if given, else the recipe's default plus what flags ask for."""
    if getattr(args, "stages", None):
        return list(args.stages)
    stages = list(defaults.stages)
    if getattr(args, "student_layers", None) == 0:  # no student: the fine-tuned model goes on
        stages = [s for s in stages if s != "distill"]
    elif getattr(args, "distill_from", None) or getattr(args, "teacher", None) \
            or getattr(args, "student_layers", None) is not None:
        if "distill" not in stages:
            stages.insert(stages.index("finetune") + 1 if "finetune" in stages else 0, "distill")
        if getattr(args, "distill_from", None) and "finetune" in stages:
            stages.remove("finetune")  # the teacher is fine-tuned already
        if getattr(args, "teacher", None) and "teacher" not in stages:
            stages.insert(0, "teacher")
    if getattr(args, "trim_vocab", None) is False:
        stages = [s for s in stages if s != "trim"]
    elif getattr(args, "trim_vocab", None) and "trim" not in stages:
        before = [i for i, s in enumerate(stages) if s in ("qat", "export", "evaluate", "release")]
        stages.insert(before[0] if before else len(stages), "trim")
    if (getattr(args, "qat_epochs", None) or 0) > 0 and "qat" not in stages:
        before = [i for i, s in enumerate(stages) if s in ("export", "evaluate", "release")]
        stages.insert(before[0] if before else len(stages), "qat")
    return stages


def config_from_args(args: argparse.Namespace, defaults: RecipeConfig, files: dict[str, str] | None = None,
                     task_folder: str | None = None, stages: list[str] | None = None) -> RecipeConfig:
    """Apply the flags present in ``args`` to a copy of ``defaults``, then ``--set`` overrides.

    Data comes from ``--data-dir`` + ``files`` (split -> file name) for recipes, else from
    ``--train-file/--eval-file/--test-file``. Raises ``ValueError`` naming the field for bad values.
    """
    config = defaults.copy()
    has = lambda name: getattr(args, name, None) is not None  # noqa: E731
    config.output_dir = args.output_dir
    config.model = args.model if args.model is not None else defaults.model
    config.data.max_length = args.max_length
    config.data.max_train_samples = args.max_train_samples
    for section in ("train", "teacher_train", "distill_train", "prune_train", "qat_train"):
        getattr(config, section).seed = args.seed
    if has("task"):
        config.task = args.task
    if has("epochs"):
        config.train.epochs = args.epochs
    if has("batch_size"):
        for section in ("train", "teacher_train", "distill_train", "prune_train", "qat_train"):
            getattr(config, section).batch_size = args.batch_size
    if has("learning_rate"):
        config.train.learning_rate = args.learning_rate
    if has("pooling"):
        config.pooling = args.pooling
    if has("distill_from") and has("teacher"):
        raise ConfigError(f"--teacher {args.teacher} and --distill-from {args.distill_from}: give one teacher "
                          "(--teacher fine-tunes a checkpoint, --distill-from uses a fine-tuned one)")
    if has("teacher"):
        if getattr(args, "student_layers", None) == 0:
            raise ConfigError(f"--teacher {args.teacher} with --student-layers 0: no student would learn from it")
        config.teacher.model = args.teacher
    if has("teacher_epochs"):
        config.teacher_train.epochs = args.teacher_epochs
    if has("distill_from"):
        config.student.teacher = args.distill_from
    if has("student_layers"):
        if args.student_layers < 0:
            raise ConfigError(f"--student-layers {args.student_layers}: must be >= 1, or 0 for no student")
        config.student.num_layers = args.student_layers or config.student.num_layers
    for flag, name in (("temperature", "temperature"), ("alpha", "alpha"),
                       ("hidden_loss_weight", "hidden_loss_weight"), ("attention_loss_weight", "attention_loss_weight"),
                       ("augment_copies", "augment_copies"), ("transfer_file", "transfer_file")):
        if has(flag):
            setattr(config.distill, name, getattr(args, flag))
    if has("distill_epochs"):
        config.distill_train.epochs = args.distill_epochs
    if has("prune_sparsity"):
        config.prune.final_sparsity = args.prune_sparsity
    if has("prune_schedule"):
        config.prune.schedule = args.prune_schedule
    if has("prune_structure"):
        config.prune.structure = args.prune_structure
    if has("prune_embeddings"):
        config.prune.prune_embeddings = args.prune_embeddings
    if has("prune_epochs"):
        config.prune_train.epochs = args.prune_epochs
    if has("prune_distill_alpha"):
        config.prune_distill.alpha = args.prune_distill_alpha
    if has("trim_keep_first"):
        config.trim.keep_first = args.trim_keep_first
    if has("qat_epochs") and args.qat_epochs > 0:
        config.qat_train.epochs = args.qat_epochs
    if has("export"):
        config.export.modes = list(args.export)
    if has("seq_length"):
        config.export.seq_length = args.seq_length
    if has("accuracy_budget"):
        config.evaluate.accuracy_budget = args.accuracy_budget
    if has("allow_regression"):
        config.release.allow_regression = args.allow_regression
    if has("label_names"):
        config.release.label_names = args.label_names
    config.stages = list(stages) if stages is not None else chain_stages(args, defaults)
    if args.smoke:
        config.data.max_train_samples = min(config.data.max_train_samples or 256, 256)
        config.data.max_eval_samples = 128
        config.data.max_test_samples = 128
        for section in ("train", "teacher_train", "distill_train", "prune_train", "qat_train"):
            train = getattr(config, section)
            train.epochs, train.max_steps, train.eval_every, train.log_every = 1, 0, 0, 4
        config.export.num_calibration = min(config.export.num_calibration, 32)
        config.evaluate.latency_runs, config.evaluate.latency_warmup = 20, 3
    for assignment in args.set:
        apply_override(config, assignment)
    if config.prune.during == "distill" and stages is None and not getattr(args, "stages", None):
        config.stages = [s for s in config.stages if s != "prune"]  # default chain: the distill stage prunes

    # data files last: a bad override is reported before a missing file
    if files is not None:
        data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir(task_folder)
        if data_dir is None:
            raise ConfigError(f"no data for {task_folder}: pass --data-dir, or put {', '.join(files.values())} "
                             f"in {Path.cwd().parent / 'shared' / 'data' / task_folder}")
        for split, filename in files.items():
            path = data_dir / filename
            if not path.exists():
                raise ConfigError(f"{path} not found (--data-dir {data_dir} must hold {', '.join(files.values())})")
            setattr(config.data, f"{split}_file", str(path))
    elif has("train_file"):
        config.data.train_file = args.train_file
        config.data.eval_file = args.eval_file or args.train_file
        config.data.test_file = args.test_file or config.data.eval_file
        config.data.text_column = args.text_column
        config.data.label_column = args.label_column
        for split in ("train", "eval", "test"):
            path = getattr(config.data, f"{split}_file")
            if not Path(path).is_file():
                raise ConfigError(f"--{split}-file {path}: no such file")
    config.validate()
    return config


def apply_override(config, assignment: str) -> None:
    """Set ``section.field=value`` on a nested dataclass, converting ``value`` to the field's type.

    Raises:
        ValueError: no ``=``, an unknown section or field (the known ones are listed), or a value
            that does not convert (``--set 'train.epochs=two': 'two' is not a number``).
    """
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected FIELD=VALUE, e.g. train.epochs=2")
    dotted, raw = assignment.split("=", 1)
    target = config
    parts = dotted.strip().split(".")
    for index, part in enumerate(parts[:-1]):
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)} \
                or not dataclasses.is_dataclass(getattr(target, part)):
            known = sorted(f.name for f in dataclasses.fields(target) if dataclasses.is_dataclass(getattr(target, f.name))) \
                if dataclasses.is_dataclass(target) else []
            raise ConfigError(f"--set {assignment!r}: no config section {'.'.join(parts[:index + 1])!r}; "
                             f"known sections: {known}")
        target = getattr(target, part)
    name = parts[-1]
    fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    if name not in fields:
        hint = f" ({REMOVED_FIELDS[dotted.strip()]})" if dotted.strip() in REMOVED_FIELDS else ""
        raise ConfigError(f"--set {assignment!r}: unknown field {dotted!r}{hint}; known: {sorted(fields)}")
    if dataclasses.is_dataclass(getattr(target, name)):
        raise ConfigError(f"--set {assignment!r}: {dotted!r} is a section; set one of its fields, e.g. "
                         f"{dotted}.{dataclasses.fields(getattr(target, name))[0].name}=...")
    current = getattr(target, name)
    try:
        value = _convert(raw, current, fields[name])
    except ValueError as error:
        raise ConfigError(f"--set {assignment!r}: field {dotted!r}: {error}") from None
    setattr(target, name, value)


def _convert(raw: str, current, spec: dataclasses.Field | None = None):
    """``raw`` as the type of the field (its annotation, or the type of its current value)."""
    text = raw.strip()
    lowered = text.lower()
    annotation = str(spec.type) if spec is not None else type(current).__name__
    optional = current is None or "None" in annotation or annotation in ("Any", "typing.Any")
    if lowered in ("none", "null") and optional:
        return None
    if isinstance(current, bool) or annotation == "bool":
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{raw!r} is not a boolean (true/false)")
    sequence = isinstance(current, (list, tuple)) or annotation.startswith(("list", "tuple"))
    if sequence:
        items = [item.strip() for item in text.split(",") if item.strip()]
        element = annotation.split("[", 1)[1] if "[" in annotation else ""
        if element.startswith(("int", "float")):
            convert = int if element.startswith("int") else float
            try:
                items = [convert(item) for item in items]
            except ValueError:
                raise ConfigError(f"{raw!r} is not a comma-separated list of {convert.__name__}s") from None
        return tuple(items) if isinstance(current, tuple) or annotation.startswith("tuple") else items
    base = annotation.split("|")[0].strip() if spec is not None else annotation
    if base in ("int", "float") or (isinstance(current, (int, float)) and base not in ("str", "Any")):
        if base == "int" or (base not in ("float",) and isinstance(current, int)):
            try:
                return int(text)
            except ValueError:
                raise ConfigError(f"{raw!r} is not an integer") from None
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{raw!r} is not a number") from None
    if base == "str":
        return raw
    try:  # untyped (Any) fields: JSON when it parses (numbers, lists), else the text
        return json.loads(text)
    except json.JSONDecodeError:
        return raw


def print_summary(report: Report, output_dir) -> None:
    """Where the results are, one line per stage, and the release."""
    output_dir = Path(output_dir)
    print(f"report: {output_dir / 'report.json'} (table: {output_dir / 'report.md'}, "
          f"plot: {output_dir / 'tradeoff.png'})")
    for record in report.data["stages"]:
        numbers = ", ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items()
                            if isinstance(v, (int, float)) and not k.startswith("num_"))
        print(f"  {record['name']}: {numbers or record.get('skipped') or 'done'}")
    release = report.stage("release")
    if release:
        print(f"  released: {', '.join(release['released']) or 'nothing'} in {output_dir / 'release'}")
    sys.stdout.flush()


def debug_from_environment() -> bool:
    return os.environ.get("TFCOMPRESS_DEBUG", "") not in ("", "0")


def run_reporting_user_errors(run, config: RecipeConfig, debug: bool):
    """``run(config)``; a :class:`TfcompressError` (bad data, model folder, artifact...) is printed as one
    line and exits with code 2, with its traceback only under ``--debug``. Other exceptions are bugs
    and propagate with their traceback."""
    try:
        return run(config)
    except TfcompressError as error:
        if debug:
            raise
        print(f"tfcompress: error: {error}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_code", 2)) from None


def expand_presets(argv: list[str], presets: dict[str, list[str]]) -> list[str]:
    """``argv`` with each preset flag (``--quick``) replaced by its flags, placed first so that flags the
    user also gives override the preset's."""
    chosen = [flag for flag in presets if flag in argv]
    rest = [arg for arg in argv if arg not in presets]
    return [arg for flag in chosen for arg in presets[flag]] + rest


def recipe_main(defaults: RecipeConfig, files: dict[str, str] | None, task_folder: str | None, description: str,
                argv=None, data_dir: bool = True, prog: str | None = None,
                presets: dict[str, list[str]] | None = None) -> Report:
    """Parse a recipe's command line, run it, print where the results are.

    Bad flags and bad ``--set`` overrides exit with code 2 and a message naming the field.
    """
    # deferred: parsing and --help need no pipeline (every stage, TFMOT, LiteRT)
    from tfcompress.pipeline.runner import latest_model, run

    summary = description.strip().split("\n\n")[0]  # --help lists the flags; the docstring has the rest
    parser = argparse.ArgumentParser(prog=prog, description=summary)
    add_recipe_arguments(parser, defaults, data_dir=data_dir and files is not None)
    if files is None:
        add_data_file_arguments(parser, defaults, task_choice=False)
    presets = presets or {}
    for flag, expansion in presets.items():
        parser.add_argument(flag, action="store_true", help="the same as: " + " ".join(expansion))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(expand_presets(argv, presets))
    if args.model is None:
        args.model = latest_model(args.output_dir, chain_stages(args, defaults)[0]) or defaults.model
        log.info("starting model: %s", args.model)
    try:
        config = config_from_args(args, defaults, files, task_folder)
    except ValueError as error:
        parser.error(str(error))
    report = run_reporting_user_errors(run, config, args.debug)
    print_summary(report, config.output_dir)
    return report
