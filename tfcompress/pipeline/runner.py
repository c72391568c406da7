"""Stage chaining for recipes: finetune -> (distill) -> prune -> (trim) -> (qat) -> export -> evaluate -> release.

Each stage reads the *current model* (the model directory the previous model-producing stage saved,
or ``RecipeConfig.model`` for the first stage), does one job and records it in ``report.json``.

A run folder holds everything needed to reproduce it from itself::

    OUTPUT/config.json            the full RecipeConfig of the last invocation
    OUTPUT/report.json            metrics of every stage and artifact (tfcompress.report)
    OUTPUT/report.md              the same as a table; OUTPUT/tradeoff.png: metric vs size / latency
    OUTPUT/<stage>/manifest.json  written last and atomically: config hash, metrics, seconds, model dir
    OUTPUT/<stage>/model/         the stage's model as a normal Hugging Face directory
    OUTPUT/<stage>/checkpoints/   resumable training state while the stage runs
    OUTPUT/export/<mode>.tflite   one artifact per export mode
    OUTPUT/release/<mode>/        mobile bundles of the artifacts that passed the parity gate
    OUTPUT/tensorboard/<stage>/   TensorBoard event files (``summary/``: the report table and metrics)

Resume rules. A stage's config hash covers its own config section, the model/data/task, and the hash
of every earlier stage in the chain. A stage whose manifest holds the same hash is skipped. A stage
without a manifest but with a ``.config_hash`` marker equal to its hash was interrupted: it runs
again and its Trainer resumes from the last checkpoint (export reuses finished artifacts, evaluate
reuses finished artifact records). A stage whose hash changed starts from an empty folder, and so
does every stage after it. Every file is written atomically, so a run killed at any point (SIGKILL
included) leaves either the old or the new version of each file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from tfcompress.config.constants import MODEL_STAGES, STAGE_ORDER
from tfcompress.config.recipe import RecipeConfig
from tfcompress.config.training import TrainConfig
from tfcompress.train import distribute
from tfcompress.train.trainer import set_mixed_precision
from tfcompress.data import encoding, readers
from tfcompress.evaluate import metrics
from tfcompress.export import metadata as tflite_metadata
from tfcompress.models import loading
from tfcompress.report import Report, write_outputs
from tfcompress.utils import atomic_write_json, atomic_write_text, get_logger, set_seed, to_json
from tfcompress.errors import ConfigError
from tfcompress.errors import InputError
from tfcompress.models.facts import max_tokens, model_input_names, reads_case

log = get_logger("pipeline")
# ------------------------------------------------------------------------------------ registry
STAGES: dict[str, Callable] = {}


def stage(name: str):
    """Register a stage function ``fn(context) -> record dict`` (the record it put in report.json;
    ``record["model_dir"]``, relative to the run folder, names the model it saved, if any)."""
    def register(function):
        STAGES[name] = function
        return function

    return register


def _canonical(value):
    """Integral floats as ints (``--epochs 2`` parses to 2.0, a recipe default may say 2: same config)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def config_hash(*parts) -> str:
    """16 hex digits of the parts' JSON, integral floats folded to ints."""
    return hashlib.sha256(to_json(_canonical(list(parts))).encode()).hexdigest()[:16]


def stage_config(config: RecipeConfig, name: str) -> dict:
    """The part of the config a stage depends on (what its hash covers, with the upstream hashes)."""
    base = {"model": config.model, "task": config.task, "data": dataclasses.asdict(config.data)}
    if not config.data.case_segments:  # off: the hashes of run folders made before the field existed
        del base["data"]["case_segments"]
    if name == "teacher":
        del base["model"]  # the teacher's checkpoint is teacher.model; the student's is not its input
    sections = {
        "teacher": ("teacher", "teacher_train"),
        "finetune": ("train",),
        "distill": ("student", "distill", "distill_train"),
        "prune": ("prune", "prune_train", "prune_distill"),
        "trim": ("trim",),
        "qat": ("qat", "qat_train"),
        "export": ("export",),
        "evaluate": ("evaluate",),
        "release": ("release",),
    }.get(name, ())
    if name == "distill" and config.prune.during == "distill":
        sections += ("prune",)
    for section in sections:
        base[section] = dataclasses.asdict(getattr(config, section))
    if base.get("prune", {}).get("during") == "prune":  # the default: older run folders keep their hashes
        del base["prune"]["during"]
    if "export" in base and "int4" not in config.export.modes:  # only the int4 artifact depends on it
        del base["export"]["int4_block_size"]
    if name in ("finetune", "distill"):  # distill: a student from --model gets a new head too
        base["pooling"] = loading.resolve_pooling(config.pooling, config.model, config.task)  # the head actually built
    return base


class Context:
    """What stages share within one run: the config, the current model, lazily loaded data."""
    def __init__(self, config: RecipeConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.current_model: str = config.model
        self.stage_models: dict[str, str] = {}
        self.digest: str | None = None
        self._cache: dict = {}

    # data -------------------------------------------------------------------------------
    def tokenizer(self):
        """The current model's tokenizer (saved beside it by every stage; a ``trim`` stage changes it),
        else the starting model's. Encoded data is cached per vocabulary."""
        current = Path(self.current_model)
        source = str(current) if any((current / name).is_file() for name in ("vocab.txt", "tokenizer.json")) \
            else self.config.model
        if self._cache.get("tokenizer_source") != source:
            tokenizer, previous = loading.load_tokenizer(source), self._cache.get("tokenizer")
            if previous is None or previous.get_vocab() != tokenizer.get_vocab():
                for key in [k for k in self._cache if k.startswith("encoded/")]:
                    del self._cache[key]
                self._cache["tokenizer"] = tokenizer
            self._cache["tokenizer_source"] = source
        return self._cache["tokenizer"]

    def examples(self, split: str):

        key = f"examples/{split}"
        if key not in self._cache:
            cfg = self.config.data
            path = {"train": cfg.train_file, "eval": cfg.eval_file, "test": cfg.test_file}[split]
            if not path:
                raise ConfigError(f"data.{split}_file is not set")
            label_names = None if split == "train" else self.examples("train").label_names
            if self.config.task == "sequence":
                examples = readers.read_text_classification(path, cfg.text_column, cfg.label_column, label_names)
            else:
                examples = readers.read_conll(path, label_names)
                if cfg.document_context:
                    examples = readers.with_document_context(examples, cfg.document_context)
            limit = {"train": cfg.max_train_samples, "eval": cfg.max_eval_samples, "test": cfg.max_test_samples}[split]
            if limit:
                examples = examples.head(limit) if hasattr(examples, "head") else _head(examples, limit)
            self._cache[key] = examples
        return self._cache[key]

    def encoded(self, split: str, max_length: int | None = None):

        max_length = max_length or self.config.data.max_length
        key = f"encoded/{split}/{max_length}"
        tokenizer = self.tokenizer()  # first: a new vocabulary (trim stage) drops the cached encodings
        if key not in self._cache:
            encoded = encoding.encode(tokenizer, self.examples(split), max_length=max_length,
                                      case_segments=self.config.data.case_segments)
            if encoded.num_truncated:
                log.info("%s: %d of %d examples truncated at max_length=%d", split, encoded.num_truncated,
                         len(encoded), max_length)
            self._cache[key] = encoded
        return self._cache[key]

    @property
    def label_names(self) -> list[str]:
        return list(self.examples("train").label_names)

    # models -----------------------------------------------------------------------------
    def load_model(self, path: str | None = None, pooling: str | None = None, teacher: bool = False):
        """Load ``path`` (default: the current model) for this task with the training file's labels
        (``pooling``: see :func:`tfcompress.models.load_model`; None keeps the saved head's).

        ``data.case_segments`` (not for a ``teacher``, which reads what it was trained with): a model
        trained with case segment ids (``config.json``: ``case_segments``) is refused without them;
        with them, the model must read segment ids, and its config is marked so that the models saved
        from it record them."""
        path = str(path or self.current_model)
        model = loading.load_model(path, task=self.config.task, labels=self.label_names, pooling=pooling)
        if teacher:
            return model
        if reads_case(model) and not self.config.data.case_segments:
            raise ConfigError(f"data.case_segments=false, but {path} was trained with case segment ids (config.json: "
                              "case_segments): it reads capitalisation in token_type_ids; set data.case_segments=true")
        if self.config.data.case_segments:
            if "token_type_ids" not in model_input_names(model):
                raise ConfigError(f"data.case_segments=true: {path} ({model.config.model_type}) reads no segment ids "
                                  "(token_type_ids, type_vocab_size > 1), which carry the capitalisation; use a BERT, "
                                  "MiniLM or ELECTRA model or unset data.case_segments")
            if not reads_case(model):  # a pretrained checkpoint (fine); a model fine-tuned without them (not)
                log.warning("data.case_segments=true: %s has no case_segments record; the training stages teach it the "
                            "case ids, a model fine-tuned without them reads ids it never saw", path)
            model.config.case_segments = True
        return model

    def stage_dir(self, name: str) -> Path:
        return self.output_dir / name

    # report -----------------------------------------------------------------------------
    def report(self) -> Report:

        return Report.load_or_create(self.output_dir, self.config.name, metrics.primary_metric(self.config.task),
                                     self.config.model)


def _head(examples, limit: int):
    values = dataclasses.asdict(examples)
    for key, value in values.items():
        if isinstance(value, list) and len(value) == len(examples) and key != "label_names":
            values[key] = value[:limit]
    return type(examples)(**values)


# ---------------------------------------------------------------------------------- running
def manifest_path(output_dir: Path, name: str) -> Path:
    return Path(output_dir) / name / "manifest.json"


def read_manifest(output_dir: Path, name: str) -> dict | None:
    path = manifest_path(output_dir, name)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


MARKER = ".config_hash"
LOCK_NAME = ".lock"


def _prepare_stage_dir(stage_dir: Path, digest: str) -> None:
    """Keep an interrupted stage's files (same hash: resume); empty the folder when the hash changed."""
    marker = stage_dir / MARKER
    previous = marker.read_text().strip() if marker.exists() else None
    if stage_dir.exists() and previous != digest and any(stage_dir.iterdir()):
        log.info("stage %s: config changed (%s -> %s), starting it afresh", stage_dir.name, previous, digest)
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, digest + "\n")


def latest_model(output_dir, before: str) -> str | None:
    """The model directory saved by the latest model-producing stage before ``before`` in ``output_dir``
    (so ``--stages export,evaluate`` on a finished run exports its fine-tuned/pruned model)."""
    earlier = STAGE_ORDER[: STAGE_ORDER.index(before)] if before in STAGE_ORDER else STAGE_ORDER
    for name in reversed(earlier):
        if name not in MODEL_STAGES:
            continue
        manifest = read_manifest(Path(output_dir), name)
        if manifest and manifest.get("model_dir"):
            return str(Path(output_dir) / manifest["model_dir"])
    return None


def _advance(context: Context, name: str, manifest: dict) -> None:
    model_dir = manifest.get("model_dir")
    if model_dir and name == "teacher":  # the teacher teaches; the run's model stays the student's
        context.stage_models[name] = str(context.output_dir / model_dir)
    elif model_dir:
        context.current_model = str(context.output_dir / model_dir)
        context.stage_models[name] = context.current_model


def stage_hashes(config: RecipeConfig) -> dict[str, str]:
    """``{stage: config hash}`` in chain order. A stage's hash covers its own config section and the
    previous stage's hash, so a change upstream recomputes everything downstream and nothing above.
    """
    hashes, digest = {}, None
    for name in config.stages:
        if name == "teacher":  # a side branch: only the distill stage learns from it
            hashes[name] = config_hash(None, name, stage_config(config, name))
            continue
        parts = [digest, name, stage_config(config, name)]
        if name == "distill" and "teacher" in hashes:
            parts.append(hashes["teacher"])
        digest = config_hash(*parts)
        hashes[name] = digest
    return hashes


TRAINING_SECTIONS = {"teacher": "teacher_train", "finetune": "train", "distill": "distill_train", "prune": "prune_train", "qat": "qat_train"}


def stage_training(config: RecipeConfig, name: str):
    """The stage's TrainConfig (``train`` for the stages that do not train: their seed and dtype)."""
    return getattr(config, TRAINING_SECTIONS.get(name, "train"))


def stage_seed(config: RecipeConfig, name: str) -> int:
    """The seed a stage starts from: its training section's ``seed`` (``train.seed`` for the others)."""
    return stage_training(config, name).seed


@contextlib.contextmanager
def _dtype_policy(train: TrainConfig):
    """Keras' global dtype policy for a training stage (``mixed_precision``), float32 again after:
    the policy must be set before the stage builds its model, and must not leak into the next stage."""
    if not train.mixed_precision:
        yield
        return
    set_mixed_precision(train.mixed_precision)
    try:
        yield
    finally:
        set_mixed_precision(None)


def check_inputs(context: "Context") -> None:
    """Fail before the first training step, not after it: read every data file (labels checked
    against the training file's), refuse single-class training data, and check the model's config
    and that ``data.max_length`` fits its position table.

    Raises:
        DataError / InputError / ConfigError / ModelLoadError: naming the file, line or field.
    """
    config = context.config
    train = context.examples("train")
    for split in ("eval", "test"):
        context.examples(split)
    if config.task == "sequence":
        classes = sorted({train.label_names[label] for label in train.labels})
    else:
        classes = sorted({tag for tags in train.tags for tag in tags} - {"O"})
    if len(classes) < (2 if config.task == "sequence" else 1):
        what = f"the single class {classes[0]!r}" if classes else "no entity tag"
        raise InputError(f"{train.source}: the training data has {what}; a classifier needs at least two "
                         "classes (token tasks: at least one entity type besides O)")
    _check_release_inputs(config, train)
    _, model_config = loading.read_model_config(context.current_model)
    limit = max_tokens(model_config)
    if limit is not None and config.data.max_length > limit:
        raise ConfigError(f"data.max_length={config.data.max_length} (--max-length): {context.current_model} "
                          f"holds at most {limit} tokens (its position table); use --max-length {limit} or less")


def _check_release_inputs(config: RecipeConfig, train) -> None:
    """``release.label_names`` renames the training file's integer class labels one for one; with
    ``release.tflite_metadata="required"`` mediapipe must import and the task must be sequence."""
    names, current = config.release.label_names, list(train.label_names)
    if names and (config.task != "sequence" or len(names) != len(current)
                  or not all(name.lstrip("-").isdigit() for name in current)):
        raise ConfigError(f"release.label_names={names!r} (--label-names): one readable name per integer class "
                          f"label of a sequence task, in label-id order; {train.source} has labels {current} "
                          "(--label-names '' keeps them)")
    if "release" in config.stages and config.release.tflite_metadata == "required":
        if config.task != "sequence":
            raise ConfigError("release.tflite_metadata='required': MediaPipe Tasks has no token-classification task")
        reason = tflite_metadata.mediapipe_missing_reason()
        if reason:
            raise ConfigError(f"release.tflite_metadata='required': {reason}")


@contextlib.contextmanager
def run_lock(output_dir: Path):
    """One run at a time per run folder: an exclusive ``flock`` on ``OUTPUT/.lock``. The operating system
    drops the lock when its process ends, however it ends, so a killed run never leaves it stuck.

    Raises:
        InputError: another live run holds the folder (its pid is named).
    """
    handle = open(Path(output_dir) / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InputError(f"output_dir={str(output_dir)!r} (--output-dir) is in use by another tfcompress run "
                         f"({holder}); wait for it to end or choose another --output-dir") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run(config: RecipeConfig) -> Report:
    """Run ``config.stages`` in order, skipping finished ones; returns the final report.

    After each stage ``report.md`` and ``tradeoff.png`` are rewritten beside ``report.json``; at the
    end TensorBoard (``OUTPUT/tensorboard/summary``) gets the table and the metrics.

    When ``TF_CONFIG`` names a cluster, the training stages run under ``MultiWorkerMirroredStrategy``
    on every worker (:mod:`tfcompress.train.distribute`). The chief writes the run folder and runs the
    stages after the last training stage alone; another worker runs the chain up to that stage in a
    local folder of its own, deletes it and returns its report.
    """
    config.validate()
    strategy = distribute.strategy_from_environment()  # first: before any TensorFlow op of the process
    chief = distribute.is_chief(strategy)
    if not chief:
        config = dataclasses.replace(config, output_dir=str(distribute.worker_dir(config.output_dir, strategy)))
    context = Context(config)
    check_inputs(context)
    with contextlib.ExitStack() as held:
        try:
            context.output_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(run_lock(context.output_dir))  # before config.json: a second run must not touch it
            atomic_write_json(context.output_dir / "config.json", config.to_dict())
        except OSError as error:
            raise InputError(f"output_dir={str(context.output_dir)!r} (--output-dir): cannot write there "
                             f"({error.strerror or error})") from None
        hashes = stage_hashes(config)
        if not chief:  # another worker's part of the chain ends with its last training stage
            names = list(hashes)
            trained = [index for index, name in enumerate(names) if name in TRAINING_SECTIONS]
            hashes = {name: hashes[name] for name in names[: trained[-1] + 1]} if trained else {}
        for name, digest in hashes.items():
            manifest = read_manifest(context.output_dir, name)
            if manifest and manifest.get("config_hash") == digest:
                log.info("stage %s: done already (config hash %s), skipped", name, manifest["config_hash"])
                _advance(context, name, manifest)
                continue
            _prepare_stage_dir(context.stage_dir(name), digest)
            log.info("stage %s: running (input model %s)", name, context.current_model)
            context.digest = digest
            # Seed right before the stage draws anything (new heads, the student, augmentation, data
            # order), from the stage's own seed: a resumed or partial run seeds each stage as a full one.
            set_seed(stage_seed(config, name))
            started = time.time()
            scope = strategy.scope() if name in TRAINING_SECTIONS else contextlib.nullcontext()
            with _dtype_policy(stage_training(config, name)), scope:
                record = STAGES[name](context) or {}
            seconds = time.time() - started
            manifest = {"stage": name, "config_hash": digest, "seconds": round(seconds, 1),
                        "metrics": record.get("metrics", {}), "model_dir": record.get("model_dir"),
                        "input_model": record.get("input_model"), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_json(manifest_path(context.output_dir, name), manifest)
            _advance(context, name, manifest)
            write_outputs(context.report().data, context.output_dir, tensorboard=False)
        report = context.report()
        if not chief:
            distribute.remove_worker_dir(context.output_dir)
            return report
        write_outputs(report.data, context.output_dir, tensorboard=True)
    return report
