"""RecipeConfig: one section per stage, validated together, saved as ``OUTPUT/config.json``."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field

from tfcompress.config.constants import (DEFAULT_INT4_BLOCK_SIZE, DEFAULT_INT8_FLOAT_OPS, DEFAULT_INTEGER_INT8_OPS,
                                        DEFAULT_OUTLIER_PERCENTILE, EXPORT_MODES, INT4_BLOCK_SIZES,
                                        LITERT_QUANTIZER_MODES, STAGE_ORDER, TFLITE_METADATA_MODES)
from tfcompress.config.training import DistillConfig, PruneConfig, QATConfig, TrainConfig
from tfcompress.utils import to_json
from tfcompress.errors import ConfigError

STUDENT_INITS = ("auto", "teacher", "model")


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
        document_context: token task: words of the sentences around each sentence that the model also
            reads (up to N before and N after, from its ``-DOCSTART-`` document; a file without those lines
            counts as one document in file order), not tagged or scored. The released model expects the
            same context in its input (``manifest.json``: ``document_context``). 0: each sentence alone.
        case_segments: the segment ids (``token_type_ids``) carry capitalisation: 1 on every sub-token of a
            word that starts with an upper-case letter, 0 elsewhere, so an uncased model (all-MiniLM-L6-v2)
            sees the case its tokenizer lower-cases away. For models with segment ids (BERT, MiniLM,
            ELECTRA); models trained with it record it (``config.json``: ``case_segments``) and refuse to
            run without it; released models expect the same ids (``manifest.json``: ``case_segments``).
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
    document_context: int = 0
    case_segments: bool = False

    def validate(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"data.max_length={self.max_length!r}: must be >= 2 ([CLS] and [SEP])")
        if self.document_context < 0:
            raise ConfigError(f"data.document_context={self.document_context!r}: must be >= 0 (0: no context)")
        if not isinstance(self.case_segments, bool):
            raise ConfigError(f"data.case_segments={self.case_segments!r}: must be true or false")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}={getattr(self, name)!r}: must be >= 0 (0: all)")


@dataclass
class StudentConfig:
    """The distillation student and its teacher.

    Args:
        teacher: directory of the fine-tuned teacher; "" = the ``teacher`` stage's model when that
            stage ran, else the current model (the ``finetune`` stage's).
        num_layers: transformer blocks of the student, copied from evenly spaced blocks of the model
            it starts from (``models.make_student``).
        init: what the student's blocks are copied from. ``"teacher"``: the teacher's (DistilBERT-style;
            needs the teacher's tokenizer to be the run's). ``"model"``: the current model (``--model``,
            or the ``finetune`` stage's output when it ran: a fine-tuned "teacher assistant"), taught
            through the teacher's per-text logits when the two tokenize differently. ``"auto"``:
            ``"teacher"`` when teacher and current model share architecture and vocabulary, else
            ``"model"``; the report records the choice.
    """

    teacher: str = ""
    num_layers: int = 3
    init: str = "auto"

    def validate(self) -> None:
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ConfigError(f"student.num_layers={self.num_layers!r}: must be an integer >= 1")
        if self.init not in STUDENT_INITS:
            raise ConfigError(f"student.init={self.init!r}: must be one of {STUDENT_INITS}")


@dataclass
class TeacherStageConfig:
    """The ``teacher`` stage: fine-tune a (larger) checkpoint as the distillation teacher.

    The stage trains ``model`` on the task with ``teacher_train`` and its own tokenizer, saves it as
    ``OUTPUT/teacher/model`` and leaves the run's model alone: the ``distill`` stage then teaches the
    student (built from ``--model``) with it. Interrupted, it resumes from its last checkpoint.

    Args:
        model: hub name or directory of the teacher checkpoint (``sentence-transformers/all-mpnet-base-v2``
            resolves to the packaged copy when ``requirements-teacher.txt`` is installed).
        pooling: the teacher's sequence head, as ``RecipeConfig.pooling``. ``"auto"`` refuses a
            checkpoint trained with a pooling tfcompress cannot build for its architecture (MPNet
            with mean pooling) rather than switching heads silently.
    """

    model: str = ""
    pooling: str = "auto"

    def validate(self) -> None:
        if self.pooling not in ("auto", "cls", "mean"):
            raise ConfigError(f"teacher.pooling={self.pooling!r}: must be 'auto', 'cls' or 'mean'")


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
            raise ConfigError(f"trim.keep_first={self.keep_first!r}: must be an integer >= 0")


def check_int4_block_size(block_size) -> None:
    """``export.int4_block_size`` must be one of :data:`INT4_BLOCK_SIZES` (0: one scale per output channel)."""
    if block_size not in INT4_BLOCK_SIZES:
        raise ConfigError(f"export.int4_block_size={block_size!r}: must be one of {list(INT4_BLOCK_SIZES)} "
                          "(0: one scale per output channel)")


@dataclass
class ExportStageConfig:
    """Which TFLite artifacts to write.

    Args:
        modes: any of ``fp32``, ``fp16``, ``dynamic``, ``int8`` (float islands by default), ``int16x8``,
            ``integer`` (mixed int8/int16, integer-only, by the LiteRT quantizer: ``pip install
            -r requirements-integer.txt``; docs/integer.md), ``int4`` (int4 weights in the matmuls and
            the word embeddings, float activations, by the same quantizer; ``tfcompress.export.int4``).
        seq_length: fixed sequence length of every artifact; 0 = the ``seq_percentile`` of the
            training lengths (capped at ``data.max_length``), stated in the export record.
        seq_percentile: percentile used when ``seq_length`` is 0.
        num_calibration: representative training examples for int8/int16x8 calibration.
        io_type: ``float`` or ``int8`` logits for the ``int8`` artifact.
        int8_float_ops: TFLite op types the ``int8`` artifact keeps in float (default
            ``DEFAULT_INT8_FLOAT_OPS``): the LayerNorm/residual ops, whose per-tensor int8 scale cannot
            hold MiniLM's outlier channels (all-int8: 0.661 SST-2 accuracy against Keras 0.8945), and
            BATCH_MATMUL, SOFTMAX and GELU, for which XNNPACK has no int8 kernel (in int8 they split the
            CPU graph into 14 XNNPACK pieces instead of 2; benchmarks/RESULTS.md, 2026-11-25).
            ``[]`` gives a full-integer artifact (for NPUs), at an accuracy cost.
        int8_outlier_percentile: the ``int8`` artifact scales each feed-forward output's outlier
            channels down to this percentile of its channel maxima, and back up in float after the
            residual add (``export.rewrites.scale_outlier_channels``: the same float function; needs MUL
            and ADD in ``int8_float_ops``). 0 = off. 50 %-pruned SST-2 MiniLM at seq 44: int8 0.8727 ->
            0.8956 (Keras 0.8956); CoNLL-2003 entity F1 0.8446 -> 0.8627 (benchmarks/RESULTS.md, 2026-11-25).
        integer_int8_ops: op types the ``integer`` artifact runs int8 activations x int8 weights (the
            rest: int16 activations x int8 weights); ``export.litert_quantizer.IntegerRecipe``.
        integer_outlier_percentile: the ``integer`` artifact scales the feed-forward outputs' outlier
            channels as ``int8_outlier_percentile`` does, the scale and unscale MULs running on its int16
            residual path. 0 = off. SST-2 3-layer student, test.tsv: agreement with Keras 0.9644 -> 0.9782.
        integer_smooth_alpha: the ``integer`` artifact migrates per-channel scale out of the LayerNorm
            outputs that feed its int8 Q/K/V and intermediate Dense inputs into those kernels, with this
            SmoothQuant strength in (0, 1] (``export.smoothing.migrate_activation_scales``: the same float
            function, one int16 MUL on each residual read). None = off, the default: on three SST-2
            students (alpha 0.75) validation agreement +2 to +11 of 6,735 sentences, test accuracy
            -0.19 to +0.11 pt (benchmarks/RESULTS.md, 2026-11-30 19:12-19:47).
        int4_block_size: the ``int4`` artifact's weights per scale along each kernel's input (32, 64, 128,
            256; must divide the hidden and intermediate widths), or 0 for one scale per output channel.
    """

    # int16x8, integer and int4 are opt-in (--export ...,int16x8): LiteRT has no fast CPU int16 path (6-layer
    # SST-2 model at seq 44: 180 ms per sentence against 3.6 ms for dynamic-range; RESULTS.md,
    # 2026-11-25), and integer and int4 need the optional LiteRT quantizer.
    modes: list[str] = field(default_factory=lambda: [
        m for m in EXPORT_MODES if m not in ("int16x8",) + LITERT_QUANTIZER_MODES])
    seq_length: int = 0
    seq_percentile: float = 99.0
    num_calibration: int = 200
    io_type: str = "float"
    int8_float_ops: list[str] = field(default_factory=lambda: list(DEFAULT_INT8_FLOAT_OPS))
    int8_outlier_percentile: float = DEFAULT_OUTLIER_PERCENTILE
    integer_int8_ops: list[str] = field(default_factory=lambda: list(DEFAULT_INTEGER_INT8_OPS))
    integer_outlier_percentile: float = DEFAULT_OUTLIER_PERCENTILE
    integer_smooth_alpha: float | None = None
    int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE

    def validate(self) -> None:
        unknown = [mode for mode in self.modes if mode not in EXPORT_MODES]
        if not self.modes or unknown or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"export.modes={self.modes!r}: must be distinct modes from {list(EXPORT_MODES)}"
                             + (f"; unknown: {unknown}" if unknown else ""))
        if self.seq_length < 0 or self.seq_length == 1:
            raise ConfigError(f"export.seq_length={self.seq_length!r}: must be 0 (from the data) or >= 2")
        if not 0 < self.seq_percentile <= 100:
            raise ConfigError(f"export.seq_percentile={self.seq_percentile!r}: must be in (0, 100]")
        if self.num_calibration < 1:
            raise ConfigError(f"export.num_calibration={self.num_calibration!r}: must be >= 1")
        if self.io_type not in ("float", "int8"):
            raise ConfigError(f"export.io_type={self.io_type!r}: must be 'float' or 'int8'")
        for name in ("int8_outlier_percentile", "integer_outlier_percentile"):
            if not 0 <= getattr(self, name) <= 100:
                raise ConfigError(f"export.{name}={getattr(self, name)!r}: must be in (0, 100], or 0 for off")
        alpha = self.integer_smooth_alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1):
            raise ConfigError(f"export.integer_smooth_alpha={alpha!r}: must be in (0, 1] (SmoothQuant strength), "
                              "or None for off")
        if not all(isinstance(op, str) and op.isupper() for op in self.integer_int8_ops):
            raise ConfigError(f"export.integer_int8_ops={self.integer_int8_ops!r}: must be TFLite op type names "
                              "such as FULLY_CONNECTED")
        check_int4_block_size(self.int4_block_size)
        needs = [mode for mode in self.modes if mode in LITERT_QUANTIZER_MODES]
        if needs and importlib.util.find_spec("ai_edge_quantizer") is None:
            raise ConfigError(f"export.modes has {needs}, made by the LiteRT quantizer, which is not installed: "
                              "pip install -r requirements-integer.txt")


@dataclass
class EvaluateStageConfig:
    """How artifacts are scored and gated.

    Args:
        accuracy_budget: parity gate, in points of the primary metric: an artifact more than this
            below its reference fails (``passed: false``) and is not released.
        reference: ``"source"`` = the Keras model the artifact was exported from (conversion
            parity); ``"finetune"`` = the fine-tuned fp32 model (total budget of the compression).
        min_agreement: the gate's second condition: the share of predictions equal to the Keras
            model's (per example; per scored token for token tasks) must reach this. None: 0.98 for
            sequence tasks, 0.99 for token tasks. A metric can hold while predictions churn; the
            agreement cannot.
        agreement_split: where agreement and logit error are measured: ``"larger"`` (default) = the
            eval split when it has more examples than the test split (agreement needs no labels: SST-2's
            validation file, 6,735 sentences against 872), else the test split; ``"test"`` or ``"eval"``.
        latency_runs / latency_warmup: timed and untimed batch-1 invocations per thread count.
        batch_size: evaluation batch size.
    """

    accuracy_budget: float = 1.0
    min_agreement: float | None = None
    agreement_split: str = "larger"
    reference: str = "source"
    latency_runs: int = 100
    latency_warmup: int = 10
    batch_size: int = 32

    def agreement_floor(self, task: str) -> float:
        """``min_agreement``, or the task's default: 0.98 per sentence, 0.99 per token."""
        if self.min_agreement is not None:
            return float(self.min_agreement)
        return 0.99 if task == "token" else 0.98

    def validate(self) -> None:
        if not self.accuracy_budget >= 0:
            raise ConfigError(f"evaluate.accuracy_budget={self.accuracy_budget!r}: must be >= 0 points")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"evaluate.min_agreement={self.min_agreement!r}: must be in [0, 1] (None: by task)")
        if self.agreement_split not in ("larger", "test", "eval"):
            raise ConfigError(f"evaluate.agreement_split={self.agreement_split!r}: must be 'larger', 'test' or 'eval'")
        if self.reference not in ("source", "finetune"):
            raise ConfigError(f"evaluate.reference={self.reference!r}: must be 'source' or 'finetune'")
        for name in ("latency_runs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluate.{name}={getattr(self, name)!r}: must be >= 1")
        if self.latency_warmup < 0:
            raise ConfigError(f"evaluate.latency_warmup={self.latency_warmup!r}: must be >= 0")


@dataclass
class ReleaseStageConfig:
    """Which artifacts go into ``OUTPUT/release/<name>/``.

    Args:
        allow_regression: also release artifacts that failed the parity gate.
        artifacts: names to release (empty: every artifact that passed).
        label_names: readable names for integer class labels, in label-id order (SST-2: negative,
            positive), for labels.txt, the TFLite metadata and the manifest; empty: the training file's.
        tflite_metadata: TFLite metadata for MediaPipe Tasks' TextClassifier in each sequence
            classifier's model.tflite: ``auto`` (where the artifact fits and mediapipe is installed; the
            manifest says why not otherwise), ``required`` (an error instead) or ``off``.
    """

    allow_regression: bool = False
    artifacts: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    tflite_metadata: str = "auto"

    def validate(self) -> None:
        unknown = [name for name in self.artifacts if name not in EXPORT_MODES and name != "qat-int8"]
        if unknown:
            raise ConfigError(f"release.artifacts={self.artifacts!r}: unknown artifact names {unknown}")
        if self.tflite_metadata not in TFLITE_METADATA_MODES:
            raise ConfigError(f"release.tflite_metadata={self.tflite_metadata!r}: must be one of "
                              f"{list(TFLITE_METADATA_MODES)}")
        names = [str(name) for name in self.label_names]
        if any(not name.strip() or "\n" in name for name in names) or len(set(names)) != len(names):
            raise ConfigError(f"release.label_names={self.label_names!r} (--label-names): names must be "
                              "distinct, non-empty and one line each")


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
        teacher: the checkpoint the ``teacher`` stage fine-tunes (:class:`TeacherStageConfig`).
        teacher_train: training of the ``teacher`` stage.
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
        qat: what quantization-aware training wraps (:class:`QATConfig`).
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
    teacher: TeacherStageConfig = field(default_factory=TeacherStageConfig)
    teacher_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, learning_rate=2e-5))
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    distill_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, learning_rate=1e-4))
    prune: PruneConfig = field(default_factory=PruneConfig)
    prune_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1, restore_best=False))
    prune_distill: DistillConfig = field(default_factory=lambda: DistillConfig(alpha=1.0, cache_teacher=True))
    trim: TrimStageConfig = field(default_factory=TrimStageConfig)
    qat: QATConfig = field(default_factory=QATConfig)
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
            raise ConfigError(f"task={self.task!r}: must be 'sequence' or 'token'")
        if self.pooling not in ("auto", "cls", "mean") or (self.task == "token" and self.pooling == "mean"):
            raise ConfigError(f"pooling={self.pooling!r}: 'auto', 'cls' or 'mean' for sequence tasks, 'auto' or "
                             "'cls' for token tasks")
        if self.task == "sequence" and self.data.document_context:
            raise ConfigError(f"data.document_context={self.data.document_context}: document context is for token "
                              "tasks (a text classification example is its own text)")
        if self.task == "sequence" and self.distill.teacher_document_context:
            raise ConfigError(f"distill.teacher_document_context={self.distill.teacher_document_context}: document "
                              "context is for token tasks (a text classification example is its own text)")
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if not self.stages or unknown:
            raise ConfigError(f"stages={self.stages!r}: unknown stage(s) {unknown}; known: {list(STAGE_ORDER)}")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError(f"stages={self.stages!r}: a stage appears twice")
        if self.stages != sorted(self.stages, key=STAGE_ORDER.index):
            raise ConfigError(f"stages={self.stages!r} (--stages): out of order; the chain runs "
                              f"{' -> '.join(s for s in STAGE_ORDER if s in self.stages)}")
        if self.prune_distill.transfer_file:
            raise ConfigError(f"prune_distill.transfer_file={self.prune_distill.transfer_file!r}: the prune stage "
                              "does not read a transfer set; set distill.transfer_file")
        if self.prune_distill.augment_copies:
            raise ConfigError(f"prune_distill.augment_copies={self.prune_distill.augment_copies}: the prune "
                             "stage does not augment; set distill.augment_copies")
        if self.prune.during == "distill" and ("prune" in self.stages or "distill" not in self.stages):
            why = ("the distill stage prunes; drop 'prune' from stages" if "prune" in self.stages
                   else "the distill stage prunes, and this chain has none")
            raise ConfigError(f"prune.during='distill': {why} (stages={self.stages!r})")
        if self.prune.during == "distill" and self.distill_train.early_stopping_patience:
            patience = self.distill_train.early_stopping_patience
            raise ConfigError(f"distill_train.early_stopping_patience={patience} with prune.during='distill': stopping "
                              "early could end training before the pruning schedule reaches its final sparsity; set it "
                              "to 0")
        if "teacher" in self.stages and not self.teacher.model:
            raise ConfigError("teacher.model is empty (--teacher): the teacher stage needs a checkpoint to fine-tune")
        if "teacher" in self.stages and "distill" in self.stages and self.student.teacher:
            raise ConfigError(f"student.teacher={self.student.teacher!r} (--distill-from) and a teacher stage "
                              f"(teacher.model={self.teacher.model!r}): give one teacher")
        for section in ("data", "teacher", "student", "distill", "prune", "prune_distill", "trim", "qat", "export", "evaluate",
                        "release"):
            getattr(self, section).validate()
        for section in ("train", "teacher_train", "distill_train", "prune_train", "qat_train"):
            try:
                getattr(self, section).validate()
            except ValueError as error:
                message = str(error)
                raise ConfigError(f"{section}.{message[len('train.'):]}" if message.startswith("train.")
                                 else f"{section}: {message}") from None

