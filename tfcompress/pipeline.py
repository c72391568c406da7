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

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tfcompress import _compat  # noqa: F401  (Keras choice before TF/transformers)
from tfcompress.distill import DistillConfig
from tfcompress.prune import PruneConfig
from tfcompress.report import Report, write_outputs
from tfcompress.train import IGNORE_INDEX, TrainConfig
from tfcompress.utils import atomic_dir, atomic_write_json, atomic_write_text, get_logger, set_seed, to_json

log = get_logger("pipeline")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPORT_MODES = ("fp32", "fp16", "dynamic", "int8", "int16x8")
MODEL_STAGES = ("finetune", "distill", "prune", "trim", "qat")  # stages that save a model for the next one
STAGE_ORDER = ("finetune", "distill", "prune", "trim", "qat", "export", "evaluate", "release")


# ------------------------------------------------------------------------------------ configs
@dataclass
class DataConfig:
    """Where a recipe's data is and how to read and cut it.

    Args:
        train_file / eval_file / test_file: paths; ``eval_file`` selects the best checkpoint,
            ``test_file`` gives the reported numbers. Label names (and their order) come from the
            training file.
        text_column / label_column: columns for text classification files (TSV, CSV, JSONL).
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

    def validate(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"data.max_length={self.max_length!r}: must be >= 2 ([CLS] and [SEP])")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.{name}={getattr(self, name)!r}: must be >= 0 (0: all)")


@dataclass
class StudentConfig:
    """The distillation student and its teacher.

    Args:
        teacher: directory of the fine-tuned teacher; "" = the current model (the ``finetune`` stage's).
        num_layers: transformer blocks of the student, copied from evenly spaced teacher blocks
            (``distill.make_student``).
    """

    teacher: str = ""
    num_layers: int = 3

    def validate(self) -> None:
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"student.num_layers={self.num_layers!r}: must be an integer >= 1")


@dataclass
class TrimStageConfig:
    """Vocabulary trimming (stage ``trim``, :mod:`tfcompress.vocab`): keep the word-embedding rows of
    the tokens the training split uses, the special tokens and every single character.

    Args:
        keep_first: also keep the first N ids of the original vocabulary (BERT's vocab.txt lists whole
            words roughly by frequency; [unusedN] placeholders are never kept). 0 = training tokens only.
    """

    keep_first: int = 0

    def validate(self) -> None:
        if not isinstance(self.keep_first, int) or self.keep_first < 0:
            raise ValueError(f"trim.keep_first={self.keep_first!r}: must be an integer >= 0")


@dataclass
class ExportStageConfig:
    """Which TFLite artifacts to write.

    Args:
        modes: any of ``fp32``, ``fp16``, ``dynamic``, ``int8`` (full integer), ``int16x8``.
        seq_length: fixed sequence length of every artifact; 0 = the ``seq_percentile`` of the
            training lengths (capped at ``data.max_length``), stated in the export record.
        seq_percentile: percentile used when ``seq_length`` is 0.
        num_calibration: representative training examples for int8/int16x8 calibration.
        io_type: ``float`` or ``int8`` logits for the ``int8`` artifact.
        int8_float_ops: TFLite op types the ``int8`` artifact keeps in float. Default: the
            LayerNorm/residual ops (``export.LAYER_NORM_OPS``) and the attention matmuls
            (``BATCH_MATMUL``). Measured on the fine-tuned SST-2 MiniLM at seq 64
            (benchmarks/export_variants.py, RESULTS.md): all-int8 fell to 0.661 accuracy; LayerNorm ops
            in float kept 0.8956 (Keras 0.8945) at 3.5x the stock dynamic-range latency; also keeping
            BATCH_MATMUL float gave 0.8968 at 2.4x (LiteRT's CPU int8 BATCH_MATMUL is slow next to
            XNNPACK's float one). SOFTMAX and GELU in float too (session 10): XNNPACK has no int8
            kernel for either, so in int8 they split the CPU graph into 14 pieces run alternately by
            XNNPACK and the builtin kernels; in float it is 2 (``runtime.xnnpack_partitions``). Measured
            at seq 44 (RESULTS.md, 2026-11-25 "Session 10"): dense teacher p50 2.62 -> 2.07 ms at 2
            threads (stock dynamic-range 2.03 ms), agreement with Keras 0.9805 -> 0.9817 on the
            teacher, 0.9817 -> 0.9851 on the 50 %-pruned model, 0.9862 -> 0.9874 on the 3-layer
            student, 0.9958 -> 0.9961 / 0.9959 -> 0.9963 on the pruned / fine-tuned CoNLL models
            (accuracy -0.81 / -0.57 / +0.34 pt, F1 +0.02 / -0.24: a few sentences either way).
            ``[]`` gives a full-integer artifact (for NPUs), at an accuracy cost.
        int8_select_budget: selective quantization of the ``int8`` artifact, in points of the primary
            metric (0 = off). When > 0, TFLite's QuantizationDebugger ranks every tensor by its int8
            error and the worst ones are kept in float (beyond ``int8_float_ops``), fewest first,
            until the artifact is within this many points of the Keras model on the first
            ``int8_select_examples`` examples of the eval split (the test split stays for the gate).
            The export record lists the float tensors, the trials and why.
        int8_select_examples: eval examples scored per selection trial.
        int8_outlier_percentile: the ``int8`` artifact scales each feed-forward output's outlier
            channels down to this percentile of its channel maxima, and back up in float after the
            residual add (``quantize.scale_outlier_channels``: same float function; needs MUL and ADD
            in ``int8_float_ops``). 0 = off. Measured (RESULTS.md, session 9): 50 %-pruned SST-2
            MiniLM at seq 44, int8 0.8727 -> 0.8956 (Keras 0.8956), agreement with Keras 0.950 ->
            0.982; CoNLL-2003 pruned model, entity F1 0.8446 -> 0.8627 (Keras 0.8647).
    """

    # int16x8 is opt-in (--export ...,int16x8): LiteRT has no fast CPU int16 path (6-layer SST-2 model
    # at seq 44: 180 ms per sentence against 3.6 ms for dynamic-range; RESULTS.md, 2026-11-25).
    modes: list[str] = field(default_factory=lambda: [m for m in EXPORT_MODES if m != "int16x8"])
    seq_length: int = 0
    seq_percentile: float = 99.0
    num_calibration: int = 200
    io_type: str = "float"
    int8_float_ops: list[str] = field(default_factory=lambda: ["MEAN", "RSQRT", "ABS", "SQUARED_DIFFERENCE",
                                                               "SUB", "MUL", "ADD", "BATCH_MATMUL", "SOFTMAX",
                                                               "GELU"])
    int8_select_budget: float = 0.0
    int8_select_examples: int = 1000
    int8_outlier_percentile: float = 90.0

    def validate(self) -> None:
        unknown = [mode for mode in self.modes if mode not in EXPORT_MODES]
        if not self.modes or unknown or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"export.modes={self.modes!r}: must be distinct modes from {list(EXPORT_MODES)}"
                             + (f"; unknown: {unknown}" if unknown else ""))
        if self.seq_length < 0 or self.seq_length == 1:
            raise ValueError(f"export.seq_length={self.seq_length!r}: must be 0 (from the data) or >= 2")
        if not 0 < self.seq_percentile <= 100:
            raise ValueError(f"export.seq_percentile={self.seq_percentile!r}: must be in (0, 100]")
        if self.num_calibration < 1:
            raise ValueError(f"export.num_calibration={self.num_calibration!r}: must be >= 1")
        if self.io_type not in ("float", "int8"):
            raise ValueError(f"export.io_type={self.io_type!r}: must be 'float' or 'int8'")
        if not self.int8_select_budget >= 0:
            raise ValueError(f"export.int8_select_budget={self.int8_select_budget!r}: must be >= 0 points (0 = off)")
        if not 0 <= self.int8_outlier_percentile <= 100:
            raise ValueError(f"export.int8_outlier_percentile={self.int8_outlier_percentile!r}: must be in "
                             "(0, 100], or 0 for off")
        if self.int8_select_examples < 1:
            raise ValueError(f"export.int8_select_examples={self.int8_select_examples!r}: must be >= 1")


@dataclass
class EvaluateStageConfig:
    """How artifacts are scored and gated.

    Args:
        accuracy_budget: parity gate, in points of the primary metric: an artifact more than this
            below its reference fails (``passed: false``) and is not released.
        reference: ``"source"`` = the Keras model the artifact was exported from (conversion
            parity); ``"finetune"`` = the fine-tuned fp32 model (total budget of the compression).
        latency_runs / latency_warmup: timed and untimed batch-1 invocations per thread count.
        batch_size: evaluation batch size.
    """

    accuracy_budget: float = 1.0
    reference: str = "source"
    latency_runs: int = 100
    latency_warmup: int = 10
    batch_size: int = 32

    def validate(self) -> None:
        if not self.accuracy_budget >= 0:
            raise ValueError(f"evaluate.accuracy_budget={self.accuracy_budget!r}: must be >= 0 points")
        if self.reference not in ("source", "finetune"):
            raise ValueError(f"evaluate.reference={self.reference!r}: must be 'source' or 'finetune'")
        for name in ("latency_runs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"evaluate.{name}={getattr(self, name)!r}: must be >= 1")
        if self.latency_warmup < 0:
            raise ValueError(f"evaluate.latency_warmup={self.latency_warmup!r}: must be >= 0")


@dataclass
class ReleaseStageConfig:
    """Which artifacts go into ``OUTPUT/release/<name>/``.

    Args:
        allow_regression: also release artifacts that failed the parity gate.
        artifacts: names to release (empty: every artifact that passed).
    """

    allow_regression: bool = False
    artifacts: list[str] = field(default_factory=list)

    def validate(self) -> None:
        unknown = [name for name in self.artifacts if name not in EXPORT_MODES and name != "qat-int8"]
        if unknown:
            raise ValueError(f"release.artifacts={self.artifacts!r}: unknown artifact names {unknown}")


@dataclass
class RecipeConfig:
    """Everything a recipe run needs; saved as ``OUTPUT/config.json``.

    Every field can be overridden from the command line with ``--set section.field=value``.

    Args:
        name: recipe name (``sst2``, ``conll2003``...), recorded in the report.
        task: ``"sequence"`` or ``"token"``.
        output_dir: the run folder.
        model: hub name or local directory of the starting model.
        pooling: the sequence head the ``finetune`` stage gives the starting model: ``"auto"`` (the
            pooling the checkpoint was trained with: mean for sentence-transformers checkpoints such as
            the packaged MiniLM, else cls), ``"cls"`` (the architecture's [CLS] pooler) or ``"mean"``
            (masked mean of the last hidden states; BERT architecture; see :mod:`tfcompress.heads`).
            Later stages keep the head they are given.
        data: a :class:`DataConfig`.
        train: the fine-tuning :class:`TrainConfig`.
        student: teacher and student size for the ``distill`` stage.
        distill: loss weights and temperature (:class:`tfcompress.distill.DistillConfig`).
        distill_train: training length etc. of the ``distill`` stage.
        prune: what and how to prune (:class:`tfcompress.prune.PruneConfig`).
        prune_train: training of the ``prune`` stage (``restore_best`` off: an evaluation before
            the schedule ends would pick a less sparse model).
        prune_distill: knowledge distillation while pruning. With ``alpha < 1`` the prune stage's
            input model (the dense fine-tuned one) is loaded a second time as a frozen teacher and
            the pruned model learns ``alpha * CE + (1 - alpha) * T^2 * KL`` through the Distiller
            (teacher outputs cached once with ``cache_teacher``). ``alpha = 1`` (default): plain CE.
        trim: vocabulary trimming of the ``trim`` stage (:class:`TrimStageConfig`).
        qat_train: training of the ``qat`` stage.
        export / evaluate / release: see their classes.
        stages: the stages to run, in order.
    """

    name: str = "custom"
    task: str = "sequence"
    output_dir: str = "runs/custom"
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    pooling: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    distill_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, learning_rate=1e-4))
    prune: PruneConfig = field(default_factory=PruneConfig)
    prune_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, restore_best=False))
    prune_distill: DistillConfig = field(default_factory=lambda: DistillConfig(alpha=1.0, cache_teacher=True))
    trim: TrimStageConfig = field(default_factory=TrimStageConfig)
    qat_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, learning_rate=2e-5,
                                                                       restore_best=False))
    export: ExportStageConfig = field(default_factory=ExportStageConfig)
    evaluate: EvaluateStageConfig = field(default_factory=EvaluateStageConfig)
    release: ReleaseStageConfig = field(default_factory=ReleaseStageConfig)
    stages: list[str] = field(default_factory=lambda: ["finetune"])

    def to_dict(self) -> dict:
        return json.loads(to_json(dataclasses.asdict(self)))

    def copy(self) -> "RecipeConfig":
        """A deep copy (recipes keep their DEFAULTS untouched)."""
        import copy

        return copy.deepcopy(self)

    def validate(self) -> None:
        """Check every section; ``ValueError`` names the field (``prune_train.epochs=0: ...``)."""
        if self.task not in ("sequence", "token"):
            raise ValueError(f"task={self.task!r}: must be 'sequence' or 'token'")
        if self.pooling not in ("auto", "cls", "mean") or (self.task == "token" and self.pooling == "mean"):
            raise ValueError(f"pooling={self.pooling!r}: 'auto', 'cls' or 'mean' for sequence tasks, 'auto' or "
                             "'cls' for token tasks")
        unknown = [s for s in self.stages if s not in STAGES]
        if not self.stages or unknown:
            raise ValueError(f"stages={self.stages!r}: unknown stage(s) {unknown}; known: {list(STAGES)}")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages={self.stages!r}: a stage appears twice")
        if self.distill.augment_copies and self.task != "sequence":
            raise ValueError(f"distill.augment_copies={self.distill.augment_copies}: augmentation is for "
                             f"sequence tasks (word masking, n-gram sampling); task is {self.task!r}")
        if self.prune_distill.augment_copies:
            raise ValueError(f"prune_distill.augment_copies={self.prune_distill.augment_copies}: the prune "
                             "stage does not augment; set distill.augment_copies")
        for section in ("data", "student", "distill", "prune", "prune_distill", "trim", "export", "evaluate",
                        "release"):
            getattr(self, section).validate()
        for section in ("train", "distill_train", "prune_train", "qat_train"):
            try:
                getattr(self, section).validate()
            except ValueError as error:
                message = str(error)
                raise ValueError(f"{section}.{message[len('train.'):]}" if message.startswith("train.")
                                 else f"{section}: {message}") from None


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


def config_hash(*parts, canonical: bool = True) -> str:
    """16 hex digits of the parts' JSON; ``canonical=False``: the hash before integral floats were
    folded to ints (folders written by tfcompress before that change)."""
    parts = _canonical(list(parts)) if canonical else list(parts)
    return hashlib.sha256(to_json(parts).encode()).hexdigest()[:16]


def stage_config(config: RecipeConfig, name: str) -> dict:
    """The part of the config a stage depends on (what its hash covers, with the upstream hashes)."""
    base = {"model": config.model, "task": config.task, "data": dataclasses.asdict(config.data)}
    sections = {
        "finetune": ("train",),
        "distill": ("student", "distill", "distill_train"),
        "prune": ("prune", "prune_train", "prune_distill"),
        "trim": ("trim",),
        "qat": ("qat_train",),
        "export": ("export",),
        "evaluate": ("evaluate",),
        "release": ("release",),
    }.get(name, ())
    for section in sections:
        base[section] = dataclasses.asdict(getattr(config, section))
        if isinstance(getattr(config, section), DistillConfig) and not base[section]["augment_copies"]:
            # added later: hashed only when augmentation is on, so older run folders keep their hash
            for key in ("augment_copies", "augment_mask_prob", "augment_ngram_prob"):
                del base[section][key]
    if name == "finetune":
        from tfcompress.models import resolve_pooling

        pooling = resolve_pooling(config.pooling, config.model, config.task)  # the head actually built
        if pooling != "cls":  # absent for cls: run folders from before pooling existed keep their hash
            base["pooling"] = pooling
    return base


class Context:
    """What stages share within one run: the config, the current model, lazily loaded data."""

    def __init__(self, config: RecipeConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.current_model: str = config.model
        self.stage_models: dict[str, str] = {}
        self.digest: str | None = None
        self.accepted_digests: set[str] = set()  # digest plus its legacy form (see stage_hashes)
        self._cache: dict = {}

    # data -------------------------------------------------------------------------------
    def tokenizer(self):
        """The current model's tokenizer (saved beside it by every stage; a ``trim`` stage changes it),
        else the starting model's. Encoded data is cached per vocabulary."""
        from tfcompress import models

        current = Path(self.current_model)
        source = str(current) if any((current / name).is_file() for name in ("vocab.txt", "tokenizer.json")) \
            else self.config.model
        if self._cache.get("tokenizer_source") != source:
            tokenizer, previous = models.load_tokenizer(source), self._cache.get("tokenizer")
            if previous is None or previous.get_vocab() != tokenizer.get_vocab():
                for key in [k for k in self._cache if k.startswith("encoded/")]:
                    del self._cache[key]
                self._cache["tokenizer"] = tokenizer
            self._cache["tokenizer_source"] = source
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
        tokenizer = self.tokenizer()  # first: a new vocabulary (trim stage) drops the cached encodings
        if key not in self._cache:
            encoded = data.encode(tokenizer, self.examples(split), max_length=max_length)
            if encoded.num_truncated:
                log.info("%s: %d of %d examples truncated at max_length=%d", split, encoded.num_truncated,
                         len(encoded), max_length)
            self._cache[key] = encoded
        return self._cache[key]

    @property
    def label_names(self) -> list[str]:
        return list(self.examples("train").label_names)

    # models -----------------------------------------------------------------------------
    def load_model(self, path: str | None = None, pooling: str | None = None):
        """Load ``path`` (default: the current model) for this task with the training file's labels
        (``pooling``: see :func:`tfcompress.models.load_model`; None keeps the saved head's)."""
        from tfcompress import models

        return models.load_model(str(path or self.current_model), task=self.config.task, labels=self.label_names,
                                 pooling=pooling)

    def stage_dir(self, name: str) -> Path:
        return self.output_dir / name

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


def _prepare_stage_dir(stage_dir: Path, digest: str, accepted: set[str] | None = None) -> None:
    """Keep an interrupted stage's files (same hash, or one in ``accepted``: resume); empty the folder
    when the hash changed."""
    marker = stage_dir / MARKER
    previous = marker.read_text().strip() if marker.exists() else None
    if stage_dir.exists() and previous not in (accepted or {digest}) and any(stage_dir.iterdir()):
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
    if model_dir:
        context.current_model = str(context.output_dir / model_dir)
        context.stage_models[name] = context.current_model


def stage_hashes(config: RecipeConfig, canonical: bool = True) -> dict[str, str]:
    """``{stage: config hash}`` in chain order. A stage's hash covers its own config section and the
    previous stage's hash, so a change upstream recomputes everything downstream and nothing above.
    ``canonical=False``: the legacy hashes (see :func:`config_hash`), still accepted by :func:`run`."""
    hashes, digest = {}, None
    for name in config.stages:
        digest = config_hash(digest, name, stage_config(config, name), canonical=canonical)
        hashes[name] = digest
    return hashes


TRAINING_SECTIONS = {"finetune": "train", "distill": "distill_train", "prune": "prune_train", "qat": "qat_train"}


def stage_seed(config: RecipeConfig, name: str) -> int:
    """The seed a stage starts from: its training section's ``seed`` (``train.seed`` for the others)."""
    return getattr(config, TRAINING_SECTIONS.get(name, "train")).seed


def run(config: RecipeConfig) -> Report:
    """Run ``config.stages`` in order, skipping finished ones; returns the final report.

    After each stage ``report.md`` and ``tradeoff.png`` are rewritten beside ``report.json``; at the
    end TensorBoard (``OUTPUT/tensorboard/summary``) gets the table and the metrics.
    """
    config.validate()
    context = Context(config)
    context.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(context.output_dir / "config.json", config.to_dict())
    legacy = stage_hashes(config, canonical=False)  # folders written before integral floats were folded
    for name, digest in stage_hashes(config).items():
        accepted = {digest, legacy[name]}
        manifest = read_manifest(context.output_dir, name)
        if manifest and manifest.get("config_hash") in accepted:
            log.info("stage %s: done already (config hash %s), skipped", name, manifest["config_hash"])
            _advance(context, name, manifest)
            continue
        _prepare_stage_dir(context.stage_dir(name), digest, accepted)
        log.info("stage %s: running (input model %s)", name, context.current_model)
        context.digest, context.accepted_digests = digest, accepted
        # Seed right before the stage draws anything (new heads, the student, augmentation, data
        # order), from the stage's own seed: a resumed or partial run seeds each stage as a full one.
        set_seed(stage_seed(config, name))
        started = time.time()
        record = STAGES[name](context) or {}
        seconds = time.time() - started
        manifest = {"stage": name, "config_hash": digest, "seconds": round(seconds, 1),
                    "metrics": record.get("metrics", {}), "model_dir": record.get("model_dir"),
                    "input_model": record.get("input_model"), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(manifest_path(context.output_dir, name), manifest)
        _advance(context, name, manifest)
        write_outputs(context.report().data, context.output_dir, tensorboard=False)
    report = context.report()
    write_outputs(report.data, context.output_dir, tensorboard=True)
    return report


# ------------------------------------------------------------------------------------ helpers
def keras_predict_fn(model) -> Callable:
    """``features dict of np arrays -> np logits`` through one traced, shape-agnostic function."""
    from tfcompress._compat import tf

    @tf.function(reduce_retracing=True)
    def predict(features):
        outputs = model(features, training=False)
        return tf.cast(getattr(outputs, "logits", outputs), tf.float32)

    return lambda features: predict({k: tf.constant(v) for k, v in features.items()}).numpy()


def _test_logits_and_metrics(context: Context, model, max_length: int | None = None):
    from tfcompress import metrics

    data = context.encoded("test", max_length)
    batch_size = context.config.evaluate.batch_size
    logits = metrics.predict_logits(keras_predict_fn(model), data, batch_size=batch_size, progress=False)
    return logits, metrics.compute_metrics(context.config.task, logits, data.labels, data.label_names)


def _input_metrics(context: Context, model) -> dict:
    """Test metrics of a stage's input model, before the stage changes it: the reference its own
    Δ is measured against (and the report's, when the run has no finetune stage). Taken from the
    earlier stage of this run that saved the model (its test metrics, same test set), else measured."""
    for name, path in context.stage_models.items():
        record = context.report().stage(name) if path == context.current_model else None
        if record and record.get("metrics"):
            return dict(record["metrics"])
    _, values = _test_logits_and_metrics(context, model)
    return _scalars(values)


def _delta_text(context: Context, after: dict, before: dict) -> str:
    primary = _primary(context)
    if primary not in after or primary not in before:
        return ""
    return f" ({(after[primary] - before[primary]) * 100:+.2f} pt vs its input model's {before[primary]:.4f})"


def _scalars(values: dict) -> dict:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _per_class(values: dict):
    return values.get("per_class") or values.get("per_entity")


def _model_facts(model, model_dir: Path) -> dict:
    """Saved size (raw, gzip), global weight sparsity and parameter count of a stage's model."""
    from tfcompress import models, prune

    sizes = prune.saved_size(model_dir)
    sparsity = prune.sparsity_report(model)
    return {"size_bytes": sizes["raw"], "gzip_bytes": sizes["gzip"],
            "sparsity": round(sparsity["global"]["sparsity"], 6), "params": models.count_params(model),
            "nonzero_params": sparsity["model"]["nonzero"]}


def total_steps(train, config: TrainConfig) -> int:
    """Optimizer steps the Trainer will run on ``train`` (same arithmetic as ``Trainer._build``)."""
    batches = len(train.batches(config.batch_size, shuffle=False))
    steps_per_epoch = max(1, math.ceil(batches / config.grad_accum_steps))
    return config.max_steps or math.ceil(config.epochs * steps_per_epoch)


def _primary(context: Context) -> str:
    from tfcompress import metrics

    return metrics.primary_metric(context.config.task)


# ------------------------------------------------------------------------------------- stages
@stage("finetune")
def finetune_stage(context: Context) -> dict:
    """Fine-tune the starting model on the train split, select on eval, score on test."""
    from tfcompress import models
    from tfcompress.train import Trainer

    config = context.config
    stage_dir = context.stage_dir("finetune")
    input_model = context.current_model
    model = context.load_model(pooling=config.pooling if config.task == "sequence" else None)
    train, evaluation = context.encoded("train"), context.encoded("eval")
    started = time.time()
    trainer = Trainer(model, config.task, config.train, stage_dir, label_names=context.label_names,
                      stage="finetune")
    result = trainer.fit(train, evaluation)
    models.save_model(model, context.tokenizer(), stage_dir / "model")
    _, test_metrics = _test_logits_and_metrics(context, model)
    facts = _model_facts(model, stage_dir / "model")
    seconds = time.time() - started
    report = context.report()
    report.data["model"] = {"name": config.model, "params": models.count_params(model)}
    record = report.set_stage(
        "finetune", metrics=_scalars(test_metrics), seconds=seconds, output="finetune/",
        model_dir="finetune/model", input_model=input_model,
        eval_metrics=_scalars(result["metrics"]), best_step=result["best_step"], steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], train_examples=len(train),
        truncated=train.num_truncated, per_class=_per_class(test_metrics), **facts)
    report.save()
    primary = _primary(context)
    log.info("finetune: test %s=%.4f (eval %.4f) in %.0f s", primary, test_metrics[primary],
             result["metrics"].get(primary, float("nan")), seconds)
    return record


def _augmented_train(context: "Context", train):
    """The training set plus ``distill.augment_copies`` augmented copies of its texts (hard label
    ``IGNORE_INDEX``), or None when augmentation is off. Sequence task only."""
    from tfcompress import augment, data

    config = context.config.distill
    if not config.augment_copies:
        return None
    tokenizer = context.tokenizer()
    if tokenizer.mask_token is None:
        raise ValueError(f"DistillConfig.augment_copies={config.augment_copies}: the tokenizer has no mask token")
    examples = context.examples("train")
    texts = augment.augment_texts(examples.texts, config.augment_copies, tokenizer.mask_token,
                                  mask_prob=config.augment_mask_prob, ngram_prob=config.augment_ngram_prob,
                                  seed=context.config.distill_train.seed)
    extra = data.TextClassificationExamples(texts=texts, labels=[IGNORE_INDEX] * len(texts),
                                            label_names=list(examples.label_names),
                                            source=f"{examples.source} (augmented)")
    encoded = data.encode(tokenizer, extra, max_length=context.config.data.max_length, input_names=train.input_names)
    log.info("distill: %d augmented texts (%d copies asked per %d training texts), soft labels only",
             len(texts), config.augment_copies, len(examples))
    return data.concatenate([train, encoded])


@stage("distill")
def distill_stage(context: Context) -> dict:
    """Distil the teacher (``student.teacher`` or the current model) into a ``student.num_layers`` student.

    The student starts from evenly spaced teacher blocks (``distill.make_student``) and trains through
    the Trainer with the Distiller's loss and hooks; teacher outputs are cached first when
    ``distill.cache_teacher`` is set. Records teacher and student test metrics, parameter counts and
    the layer map.
    """
    from tfcompress import distill, models
    from tfcompress.train import Trainer

    config = context.config
    stage_dir = context.stage_dir("distill")
    teacher_path = config.student.teacher or context.current_model
    started = time.time()
    teacher = context.load_model(teacher_path)
    student = distill.make_student(teacher, num_layers=config.student.num_layers)
    distiller = distill.Distiller(teacher, student, config.distill, task=config.task)
    train, evaluation = context.encoded("train"), context.encoded("eval")
    augmented = _augmented_train(context, train)
    if augmented is not None:
        train = augmented
    cache = None
    if config.distill.cache_teacher:
        cache = distiller.cache_teacher_outputs(train, batch_size=config.distill_train.eval_batch_size)
    trainer = Trainer(distiller, config.task, config.distill_train, stage_dir, hooks=distill.hooks(distiller),
                      loss_fn=distiller.loss_fn, label_names=context.label_names, stage="distill")
    result = trainer.fit(train, evaluation)
    models.save_model(distiller.student, context.tokenizer(), stage_dir / "model")
    _, student_metrics = _test_logits_and_metrics(context, distiller.student)
    _, teacher_metrics = _test_logits_and_metrics(context, teacher)
    facts = _model_facts(distiller.student, stage_dir / "model")
    description = distiller.describe()
    report = context.report()
    record = report.set_stage(
        "distill", metrics=_scalars(student_metrics), seconds=time.time() - started, output="distill/",
        model_dir="distill/model", input_model=str(teacher_path), teacher=str(teacher_path),
        teacher_metrics=_scalars(teacher_metrics), eval_metrics=_scalars(result["metrics"]),
        teacher_params=description["teacher_params"], student_params=description["student_params"],
        layer_map=description["layer_map"], distillation=description, teacher_cache=cache,
        augmented_examples=len(train) - len(context.encoded("train")),
        best_step=result["best_step"], steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], per_class=_per_class(student_metrics), **facts)
    report.save()
    primary = _primary(context)
    log.info("distill: student (%d layers) %s=%.4f, teacher (%d layers) %.4f", description["student_layers"],
             primary, student_metrics[primary], description["teacher_layers"], teacher_metrics[primary])
    return record


@stage("prune")
def prune_stage(context: Context) -> dict:
    """Magnitude-prune the current model with TFMOT wrappers while training, strip, save, measure."""
    from tfcompress import models, prune
    from tfcompress.train import Trainer

    config = context.config
    stage_dir = context.stage_dir("prune")
    input_model = context.current_model
    started = time.time()
    model = context.load_model()
    input_metrics = _input_metrics(context, model)
    train, evaluation = context.encoded("train"), context.encoded("eval")
    steps = total_steps(train, config.prune_train)
    prune.apply(model, config.prune, total_steps=steps)
    trained, hooks, loss_fn, distillation = model, prune.hooks(config.prune), None, None
    if config.prune_distill.alpha < 1.0:
        from tfcompress import distill

        teacher = context.load_model(input_model)  # a second, frozen copy of the dense input model
        trained = distill.Distiller(teacher, model, config.prune_distill, task=config.task, name="prune_distiller")
        if config.prune_distill.cache_teacher:
            trained.cache_teacher_outputs(train, batch_size=config.prune_train.eval_batch_size)
        hooks, loss_fn = distill.hooks(trained) + hooks, trained.loss_fn
        distillation = {"teacher": str(input_model), **dataclasses.asdict(config.prune_distill)}
    trainer = Trainer(trained, config.task, config.prune_train, stage_dir, hooks=hooks, loss_fn=loss_fn,
                      label_names=context.label_names, stage="prune")
    result = trainer.fit(train, evaluation)
    pruned_paths = prune.pruned_layers(model)
    prune.strip(model)
    models.save_model(model, context.tokenizer(), stage_dir / "model")
    sparsity = prune.sparsity_report(model)
    _, test_metrics = _test_logits_and_metrics(context, model)
    facts = _model_facts(model, stage_dir / "model")
    input_size = {}
    if Path(input_model).is_dir():
        try:
            sizes = prune.saved_size(input_model)
            input_size = {"input_size_bytes": sizes["raw"], "input_gzip_bytes": sizes["gzip"]}
        except FileNotFoundError:
            pass
    begin, end, frequency = config.prune.resolve_steps(steps)
    report = context.report()
    record = report.set_stage(
        "prune", metrics=_scalars(test_metrics), seconds=time.time() - started, output="prune/",
        model_dir="prune/model", input_model=input_model, input_metrics=input_metrics,
        eval_metrics=_scalars(result["metrics"]), pruned_sparsity=round(sparsity["pruned"]["sparsity"], 6),
        pruned_params=sparsity["pruned"]["params"],
        layer_sparsity={name: round(entry["sparsity"], 4) for name, entry in sparsity["layers"].items()},
        pruned_layers=pruned_paths, schedule={"begin_step": begin, "end_step": end, "frequency": frequency,
                                              "total_steps": steps},
        prune_config=dataclasses.asdict(config.prune), distillation=distillation, steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], per_class=_per_class(test_metrics),
        **facts, **input_size)
    report.save()
    log.info("prune: %s=%.4f%s, sparsity %.3f of the pruned layers (%.3f of all weight matrices), gzip %.2f MB",
             _primary(context), test_metrics[_primary(context)],
             _delta_text(context, record["metrics"], input_metrics), sparsity["pruned"]["sparsity"],
             sparsity["global"]["sparsity"], facts["gzip_bytes"] / 1e6)
    return record


@stage("trim")
def trim_stage(context: Context) -> dict:
    """Trim the vocabulary to the tokens the training split uses (:mod:`tfcompress.vocab`); the saved
    model directory holds the trimmed tokenizer, which every later stage (and the release) uses."""
    from tfcompress import models, vocab

    config = context.config
    stage_dir = context.stage_dir("trim")
    input_model = context.current_model
    started = time.time()
    model, tokenizer = context.load_model(), context.tokenizer()
    input_params = models.count_params(model)
    input_metrics = _input_metrics(context, model)
    examples = context.examples("train")
    texts = examples.texts if config.task == "sequence" else examples.words
    keep = vocab.keep_ids(tokenizer, texts, keep_first=config.trim.keep_first)
    small, small_tokenizer = vocab.trim(model, tokenizer, keep)
    models.save_model(small, small_tokenizer, stage_dir / "model")
    test = context.examples("test")
    respelled = vocab.respelled(tokenizer, small_tokenizer, test.texts if config.task == "sequence" else test.words)
    context.current_model = str(stage_dir / "model")  # the test split is encoded with the trimmed tokenizer
    _, test_metrics = _test_logits_and_metrics(context, small)
    facts = _model_facts(small, stage_dir / "model")
    report = context.report()
    record = report.set_stage(
        "trim", metrics=_scalars(test_metrics), seconds=time.time() - started, output="trim/",
        model_dir="trim/model", input_model=input_model, input_metrics=input_metrics,
        vocab_size={"before": len(tokenizer), "after": len(small_tokenizer)},
        input_params=input_params, test_respelled=respelled,
        trim_config=dataclasses.asdict(config.trim), per_class=_per_class(test_metrics), **facts)
    report.save()
    log.info("trim: vocabulary %d -> %d tokens, %s -> %s parameters, %s=%.4f%s; %d of %d test texts respelled",
             len(tokenizer), len(small_tokenizer), f"{input_params:,}", f"{facts['params']:,}",
             _primary(context), test_metrics[_primary(context)], _delta_text(context, record["metrics"], input_metrics),
             respelled["changed_texts"], respelled["texts"])
    return record


def _apply_qat(model, calibration=None):
    """Wrap the encoder Dense layers with TFMOT QAT wrappers; ``calibration`` (train data) sets the
    starting activation ranges (TFMOT's default -6/+6 would take thousands of steps to reach MiniLM's
    FFN outliers of ~200)."""
    from tfcompress import quantize

    qconfig = quantize.QATConfig()
    return quantize.apply(model, qconfig, calibration=calibration), qconfig


@stage("qat")
def qat_stage(context: Context) -> dict:
    """Quantization-aware training with TFMOT wrappers through the Trainer.

    Saves the wrapped model's weights (``qat/qat_weights``, for the ``qat-int8`` export) and the
    stripped float model (``qat/model``, the current model for the next stages).
    """
    from tfcompress import models, quantize
    from tfcompress._compat import tf
    from tfcompress.train import Trainer

    config = context.config
    report = context.report()
    stage_dir = context.stage_dir("qat")
    input_model = context.current_model
    started = time.time()
    model = context.load_model()
    input_metrics = _input_metrics(context, model)
    model, qconfig = _apply_qat(model, calibration=context.encoded("train"))
    train, evaluation = context.encoded("train"), context.encoded("eval")
    hooks = quantize.hooks(qconfig) if qconfig is not None else quantize.hooks()
    trainer = Trainer(model, config.task, config.qat_train, stage_dir, hooks=hooks,
                      label_names=context.label_names, stage="qat")
    result = trainer.fit(train, evaluation)
    _, qat_metrics = _test_logits_and_metrics(context, model)
    with atomic_dir(stage_dir / "qat_weights") as tmp:
        tf.train.Checkpoint(model=model).write(str(Path(tmp) / "weights"))
    model = quantize.strip(model)
    models.save_model(model, context.tokenizer(), stage_dir / "model")
    _, test_metrics = _test_logits_and_metrics(context, model)
    facts = _model_facts(model, stage_dir / "model")
    record = report.set_stage(
        "qat", metrics=_scalars(test_metrics), seconds=time.time() - started, output="qat/",
        model_dir="qat/model", input_model=input_model, input_metrics=input_metrics,
        qat_metrics=_scalars(qat_metrics), eval_metrics=_scalars(result["metrics"]), steps=result["steps"], **facts)
    report.save()
    log.info("qat: %s=%.4f%s", _primary(context), test_metrics[_primary(context)],
             _delta_text(context, record["metrics"], input_metrics))
    return record


def _qat_model(context: Context):
    """Rebuild the wrapped QAT model: its input model, ``quantize.apply``, the saved QAT weights."""
    from tfcompress._compat import tf

    manifest = read_manifest(context.output_dir, "qat") or {}
    model = context.load_model(manifest.get("input_model"))
    model, _ = _apply_qat(model)
    tf.train.Checkpoint(model=model).read(str(context.stage_dir("qat") / "qat_weights" / "weights")).expect_partial()
    return model


def _export_seq_length(context: Context, train) -> tuple[int, str]:
    cfg = context.config.export
    if cfg.seq_length:
        return cfg.seq_length, "export.seq_length"
    length = min(train.percentile_length(cfg.seq_percentile), context.config.data.max_length)
    return max(int(length), 2), (f"{cfg.seq_percentile:g}th percentile of the training lengths "
                                 f"(capped at data.max_length={context.config.data.max_length})")


def _selective_int8(context: Context, model, seq_length: int, train, path: Path) -> dict:
    """``export.selective_int8`` scored on the first ``int8_select_examples`` eval examples."""
    from tfcompress import export, metrics, runtime

    cfg, primary = context.config.export, _primary(context)
    # Encoded at the artifact's length, as the evaluate stage encodes the test split: for token tasks
    # the labels of the words cut off go with them (truncating only the inputs left them unscorable).
    evaluation = context.encoded("eval", seq_length)
    held_out = evaluation.select(list(range(min(cfg.int8_select_examples, len(evaluation)))))
    batch_size = context.config.evaluate.batch_size

    def metric_of(predict) -> float:  # both models see the artifact's fixed length
        logits = metrics.predict_logits(predict, held_out, batch_size=batch_size, progress=False, pad_to=seq_length)
        return float(metrics.compute_metrics(context.config.task, logits, held_out.labels, held_out.label_names)[primary])

    reference = metric_of(keras_predict_fn(model))
    _, record = export.selective_int8(
        model, seq_length, train, score=lambda content: metric_of(runtime.TFLiteModel(content, num_threads=2).predict),
        reference=reference, budget=cfg.int8_select_budget / 100.0, denylisted_ops=cfg.int8_float_ops,
        num_calibration=cfg.num_calibration, io_type=cfg.io_type, output_path=path,
        outlier_percentile=cfg.int8_outlier_percentile or None)
    record["examples"] = len(held_out)
    atomic_write_json(path.with_suffix(".selection.json"), record)
    return record


@stage("export")
def export_stage(context: Context) -> dict:
    """One TFLite artifact per ``export.modes`` from the current model; calibration from the train split.

    Finished artifacts of an interrupted run are reused (``<mode>.tflite`` plus its ``.done.json``,
    both written atomically). With a finished ``qat`` stage, the wrapped QAT model is converted too
    (``qat-int8``, its learned ranges kept).
    """
    from tfcompress import export, prune, quantize, runtime

    config = context.config
    cfg = config.export
    stage_dir = context.stage_dir("export")
    input_model = context.current_model
    started = time.time()
    model = context.load_model()
    train = context.encoded("train")
    seq_length, rule = _export_seq_length(context, train)
    sparsity = round(prune.sparsity_report(model)["global"]["sparsity"], 6)
    artifacts = []
    outlier_percentile = cfg.int8_outlier_percentile or None
    outliers_scaled = export.outlier_scaling_applies(export.ExportConfig(
        mode="int8", denylisted_ops=tuple(cfg.int8_float_ops), outlier_percentile=outlier_percentile))

    def finish(name, quantization, path, convert):
        marker = stage_dir / f"{name}.done.json"
        if path.exists() and marker.exists():
            log.info("export %s: done already (%s)", name, path)
            seconds = json.loads(marker.read_text()).get("seconds")
        else:
            begun = time.time()
            convert()
            seconds = round(time.time() - begun, 1)
            atomic_write_json(marker, {"seconds": seconds})
        artifacts.append({"name": name, "path": str(path.relative_to(context.output_dir)), "format": "tflite",
                          "quantization": quantization, "seq_length": seq_length, "sparsity": sparsity,
                          "convert_seconds": seconds, **runtime.sizes(path)})
        if name == "int8" and outliers_scaled:
            artifacts[-1]["outlier_percentile"] = outlier_percentile  # quantize.scale_outlier_channels

    selection = {}
    for mode in cfg.modes:
        path = stage_dir / f"{mode}.tflite"
        calibrated = mode in ("int8", "int16x8")
        if mode == "int8" and cfg.int8_select_budget > 0:
            finish(mode, mode, path, lambda path=path: selection.update(
                _selective_int8(context, model, seq_length, train, path)))
            if not selection and (stage_dir / "int8.selection.json").exists():  # finished before an interruption
                selection.update(json.loads((stage_dir / "int8.selection.json").read_text()))
            artifacts[-1]["selection"] = selection
            continue
        finish(mode, mode, path, lambda mode=mode, path=path, calibrated=calibrated: export.to_tflite(
            model, mode, seq_length=seq_length, representative=train if calibrated else None,
            num_calibration=cfg.num_calibration, io_type=cfg.io_type if mode == "int8" else "float",
            denylisted_ops=cfg.int8_float_ops if mode == "int8" else (), output_path=path,
            outlier_percentile=outlier_percentile))
    qat_manifest = read_manifest(context.output_dir, "qat")
    if "qat" in config.stages and qat_manifest and qat_manifest.get("model_dir"):
        path = stage_dir / "qat-int8.tflite"
        finish("qat-int8", "qat-int8", path, lambda: quantize.to_tflite_from_qat(
            _qat_model(context), seq_length=seq_length, representative=train, output_path=path))
    report = context.report()
    record = report.set_stage(
        "export", metrics={}, seconds=time.time() - started, output="export/", input_model=input_model,
        source_model=input_model, seq_length=seq_length, seq_length_rule=rule, artifacts=artifacts,
        sparsity=sparsity)
    report.save()
    log.info("export: %d artifacts at seq_length %d (%s)", len(artifacts), seq_length, rule)
    return record


@stage("evaluate")
def evaluate_stage(context: Context) -> dict:
    """Run every exported artifact with ai_edge_litert on the test split and gate it.

    Per artifact: the metric, agreement with the Keras model it came from, size raw and gzip, latency
    p50/p90 at 1 and 2 threads, ops left in float, the parity gate (``evaluate.accuracy_budget``
    points against ``evaluate.reference``) and the delta against the fine-tuned fp32 model. The test
    split is encoded at the artifact's sequence length (longer examples truncated, as an app would),
    and the Keras reference is scored on exactly that data. Records replace report.json
    ``artifacts`` (stock-path records, ``"stock": true``, are kept); each is saved as soon as it is
    done, so a killed evaluation resumes with the next artifact.
    """
    from tfcompress import runtime

    config = context.config
    cfg = config.evaluate
    report = context.report()
    export_record = report.stage("export")
    if not export_record or not export_record.get("artifacts"):
        raise ValueError("evaluate: report.json has no exported artifacts; run the export stage first "
                         f"(same --output-dir {context.output_dir})")
    primary = report.metric
    started = time.time()
    source = export_record.get("source_model") or context.current_model
    finetune = report.stage("finetune")
    finetune_metric = (finetune or {}).get("metrics", {}).get(primary)
    if cfg.reference == "finetune" and finetune_metric is None:
        raise ValueError("evaluate.reference='finetune' needs a finetune stage in this run folder")
    keras_model = None
    by_length: dict[int, tuple] = {}
    previous = {a["name"]: a for a in report.data["artifacts"]}
    records = []
    for artifact in export_record["artifacts"]:
        old = previous.get(artifact["name"])
        if old and old.get("evaluation_hash") in context.accepted_digests:
            log.info("evaluate %s: done already", artifact["name"])
            records.append(old)
            continue
        seq_length = int(artifact["seq_length"])
        data = context.encoded("test", seq_length)
        if seq_length not in by_length:
            keras_model = keras_model or context.load_model(source)
            by_length[seq_length] = _test_logits_and_metrics(context, keras_model, seq_length)
        keras_logits, keras_metrics = by_length[seq_length]
        reference = dict(keras_metrics)
        if cfg.reference == "finetune":
            reference[primary] = finetune_metric
        record = runtime.artifact_record(
            artifact["name"], context.output_dir / artifact["path"], data, keras_logits, reference,
            quantization=artifact["quantization"], seq_length=seq_length, task=config.task,
            sparsity=artifact.get("sparsity", 0.0), accuracy_budget=cfg.accuracy_budget,
            latency_runs=cfg.latency_runs, latency_warmup=cfg.latency_warmup, output_dir=context.output_dir,
            batch_size=cfg.batch_size)
        value = record["metrics"].get(primary)
        record.update({
            "keras_metric": float(keras_metrics[primary]), "reference": cfg.reference,
            "source_model": source, "stock": False, "evaluation_hash": context.digest,
            "delta_vs_finetuned": None if finetune_metric is None or value is None
            else round((value - finetune_metric) * 100.0, 3)})
        report.add_artifact(record)
        report.save()
        records.append(record)
        log.info("evaluate %s: %s=%.4f (Keras %.4f, agreement %.4f), %.2f MB, p50 %.2f ms (2 threads), %s",
                 record["name"], primary, value, keras_metrics[primary], record["agreement"],
                 record["size_bytes"] / 1e6, record["latency_ms"]["threads2"]["p50"],
                 "passed" if record["passed"] else "FAILED the parity gate")
    stock = [a for a in report.data["artifacts"] if a.get("stock")]
    report.data["artifacts"] = records + stock
    record = report.set_stage(
        "evaluate", metrics={r["name"]: r["metrics"].get(primary) for r in records},
        seconds=time.time() - started, output="export/", accuracy_budget=cfg.accuracy_budget,
        reference=cfg.reference, passed=[r["name"] for r in records if r["passed"]],
        failed=[r["name"] for r in records if not r["passed"]])
    report.save()
    return record


@stage("release")
def release_stage(context: Context) -> dict:
    """Bundle every artifact that passed the parity gate (all with ``release.allow_regression``)."""
    from tfcompress import export

    config = context.config
    cfg = config.release
    stage_dir = context.stage_dir("release")
    report = context.report()
    primary = report.metric
    started = time.time()
    candidates = [a for a in report.data["artifacts"] if not a.get("stock")]
    if not candidates:
        raise ValueError("release: report.json has no evaluated artifacts; run export and evaluate first")
    released, blocked = [], {}
    for record in candidates:
        name = record["name"]
        if cfg.artifacts and name not in cfg.artifacts:
            continue
        if not record.get("passed") and not cfg.allow_regression:
            blocked[name] = (f"failed the parity gate: {primary} {record['metrics'].get(primary, float('nan')):.4f} "
                             f"vs reference {record.get('reference_metric', float('nan')):.4f}, budget "
                             f"{record.get('accuracy_budget')} pt (--allow-regression releases it anyway)")
            log.warning("release %s: not released, %s", name, blocked[name])
            continue
        export.release_bundle(context.output_dir / record["path"], stage_dir / name, context.tokenizer(),
                              context.label_names, record=record, allow_regression=cfg.allow_regression)
        released.append(name)
    for child in stage_dir.iterdir():  # bundles of an earlier run that are not released now
        if child.is_dir() and child.name not in released:
            shutil.rmtree(child)
    if not released:
        log.warning("release: nothing released (no artifact passed the parity gate)")
    record = report.set_stage("release", metrics={}, seconds=time.time() - started, output="release/",
                              released=released, blocked=blocked, allow_regression=cfg.allow_regression)
    report.save()
    return record


# ------------------------------------------------------------------------------ command line
def default_data_dir(task_folder: str) -> Path | None:
    """``../shared/data/<task>`` beside the project (or beside the working directory), if present."""
    for base in (PROJECT_ROOT.parent, Path.cwd().parent, Path.cwd()):
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
        raise argparse.ArgumentTypeError(f"unknown export mode(s) {unknown or [value]}; choose from "
                                         f"{','.join(EXPORT_MODES)}")
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
    group.add_argument("--smoke", action="store_true",
                       help="seconds-long run of the same code path: 256 train / 128 eval / 128 test examples, "
                            "1 epoch per training stage, 32 calibration examples, 20 latency runs")
    group.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override any config field with a typed value, e.g. --set prune.final_sparsity=0.8, "
                            "--set prune_train.epochs=2, --set export.seq_length=64 (repeatable; sections: "
                            "data, train, student, distill, distill_train, prune, prune_train, qat_train, export, "
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
    group.add_argument("--distill-from", default=None, metavar="TEACHER_DIR",
                       help="fine-tuned teacher directory; adds the distill stage and skips fine-tuning "
                            "(default: the finetune stage's model when distillation is on)")
    group.add_argument("--student-layers", type=int, default=None,
                       help=f"transformer blocks of the student, copied from evenly spaced teacher blocks; "
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
    if defaults.task == "sequence":
        group.add_argument("--augment-copies", type=int, default=d.augment_copies,
                           help="augmented copies of each training text (word masking, n-gram sampling) the "
                                "student learns from the teacher's soft labels, 0 = off; needs --alpha < 1 "
                                "(default: %(default)s)")


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
                       help="comma-separated TFLite modes among fp32,fp16,dynamic,int8,int16x8 "
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
    elif getattr(args, "distill_from", None) or getattr(args, "student_layers", None) is not None:
        if "distill" not in stages:
            stages.insert(stages.index("finetune") + 1 if "finetune" in stages else 0, "distill")
        if getattr(args, "distill_from", None) and "finetune" in stages:
            stages.remove("finetune")  # the teacher is fine-tuned already
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
    for section in ("train", "distill_train", "prune_train", "qat_train"):
        getattr(config, section).seed = args.seed
    if has("task"):
        config.task = args.task
    if has("epochs"):
        config.train.epochs = args.epochs
    if has("batch_size"):
        for section in ("train", "distill_train", "prune_train", "qat_train"):
            getattr(config, section).batch_size = args.batch_size
    if has("learning_rate"):
        config.train.learning_rate = args.learning_rate
    if has("pooling"):
        config.pooling = args.pooling
    if has("distill_from"):
        config.student.teacher = args.distill_from
    if has("student_layers"):
        if args.student_layers < 0:
            raise ValueError(f"--student-layers {args.student_layers}: must be >= 1, or 0 for no student")
        config.student.num_layers = args.student_layers or config.student.num_layers
    for flag, name in (("temperature", "temperature"), ("alpha", "alpha"),
                       ("hidden_loss_weight", "hidden_loss_weight"), ("attention_loss_weight", "attention_loss_weight"),
                       ("augment_copies", "augment_copies")):
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
    config.stages = list(stages) if stages is not None else chain_stages(args, defaults)
    if args.smoke:
        config.data.max_train_samples = min(config.data.max_train_samples or 256, 256)
        config.data.max_eval_samples = 128
        config.data.max_test_samples = 128
        for section in ("train", "distill_train", "prune_train", "qat_train"):
            train = getattr(config, section)
            train.epochs, train.max_steps, train.eval_every, train.log_every = 1, 0, 0, 4
        config.export.num_calibration = min(config.export.num_calibration, 32)
        config.evaluate.latency_runs, config.evaluate.latency_warmup = 20, 3
    for assignment in args.set:
        apply_override(config, assignment)

    # data files last: a bad override is reported before a missing file
    if files is not None:
        data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir(task_folder)
        if data_dir is None:
            raise ValueError(f"no data for {task_folder}: pass --data-dir, or put {', '.join(files.values())} "
                             f"in {PROJECT_ROOT.parent / 'shared' / 'data' / task_folder}")
        for split, filename in files.items():
            path = data_dir / filename
            if not path.exists():
                raise ValueError(f"{path} not found (--data-dir {data_dir} must hold {', '.join(files.values())})")
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
                raise ValueError(f"--{split}-file {path}: no such file")
    config.validate()
    return config


def apply_override(config, assignment: str) -> None:
    """Set ``section.field=value`` on a nested dataclass, converting ``value`` to the field's type.

    Raises:
        ValueError: no ``=``, an unknown section or field (the known ones are listed), or a value
            that does not convert (``--set 'train.epochs=two': 'two' is not a number``).
    """
    if "=" not in assignment:
        raise ValueError(f"--set {assignment!r}: expected FIELD=VALUE, e.g. train.epochs=2")
    dotted, raw = assignment.split("=", 1)
    target = config
    parts = dotted.strip().split(".")
    for index, part in enumerate(parts[:-1]):
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)} \
                or not dataclasses.is_dataclass(getattr(target, part)):
            known = sorted(f.name for f in dataclasses.fields(target) if dataclasses.is_dataclass(getattr(target, f.name))) \
                if dataclasses.is_dataclass(target) else []
            raise ValueError(f"--set {assignment!r}: no config section {'.'.join(parts[:index + 1])!r}; "
                             f"known sections: {known}")
        target = getattr(target, part)
    name = parts[-1]
    fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    if name not in fields:
        raise ValueError(f"--set {assignment!r}: unknown field {dotted!r}; known: {sorted(fields)}")
    if dataclasses.is_dataclass(getattr(target, name)):
        raise ValueError(f"--set {assignment!r}: {dotted!r} is a section; set one of its fields, e.g. "
                         f"{dotted}.{dataclasses.fields(getattr(target, name))[0].name}=...")
    current = getattr(target, name)
    try:
        value = _convert(raw, current, fields[name])
    except ValueError as error:
        raise ValueError(f"--set {assignment!r}: field {dotted!r}: {error}") from None
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
        raise ValueError(f"{raw!r} is not a boolean (true/false)")
    sequence = isinstance(current, (list, tuple)) or annotation.startswith(("list", "tuple"))
    if sequence:
        items = [item.strip() for item in text.split(",") if item.strip()]
        element = annotation.split("[", 1)[1] if "[" in annotation else ""
        if element.startswith(("int", "float")):
            convert = int if element.startswith("int") else float
            try:
                items = [convert(item) for item in items]
            except ValueError:
                raise ValueError(f"{raw!r} is not a comma-separated list of {convert.__name__}s") from None
        return tuple(items) if isinstance(current, tuple) or annotation.startswith("tuple") else items
    base = annotation.split("|")[0].strip() if spec is not None else annotation
    if base in ("int", "float") or (isinstance(current, (int, float)) and base not in ("str", "Any")):
        if base == "int" or (base not in ("float",) and isinstance(current, int)):
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{raw!r} is not an integer") from None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
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


def recipe_main(defaults: RecipeConfig, files: dict[str, str] | None, task_folder: str | None, description: str,
                argv=None, data_dir: bool = True) -> Report:
    """Parse a recipe's command line, run it, print where the results are.

    Bad flags and bad ``--set`` overrides exit with code 2 and a message naming the field.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recipe_arguments(parser, defaults, data_dir=data_dir and files is not None)
    if files is None:
        add_data_file_arguments(parser, defaults, task_choice=False)
    args = parser.parse_args(argv)
    if args.model is None:
        args.model = latest_model(args.output_dir, chain_stages(args, defaults)[0]) or defaults.model
        log.info("starting model: %s", args.model)
    try:
        config = config_from_args(args, defaults, files, task_folder)
    except ValueError as error:
        parser.error(str(error))
    report = run(config)
    print_summary(report, config.output_dir)
    return report
