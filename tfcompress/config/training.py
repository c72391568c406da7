"""Configs of training and of the compression techniques: TrainConfig, PruneConfig, DistillConfig, QATConfig."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfcompress.config.constants import (DERIVED_MASK_UPDATES, PRUNE_DURING, QAT_TARGETS, SCHEDULES, STRUCTURES,
                                         TEMPERATURE_SCHEDULES)
from tfcompress.errors import ConfigError


def _check_layer_patterns(config, bad) -> None:
    """``include`` / ``exclude``: None or a regular expression that compiles (``bad(field, why)`` raises)."""
    for name in ("include", "exclude"):
        pattern = getattr(config, name)
        if pattern is not None:
            if not isinstance(pattern, str) or not pattern:
                bad(name, "must be a non-empty regular expression or None")
            try:
                re.compile(pattern)
            except re.error as error:
                bad(name, f"is not a valid regular expression ({error})")


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    Args:
        epochs: passes over the training data (fractions allowed; ``max_steps`` wins when set).
        batch_size: examples per micro-batch, global across replicas.
        learning_rate: peak learning rate after warm-up.
        weight_decay: AdamW decoupled weight decay (not applied to biases and LayerNorm).
        warmup_ratio: fraction of the optimizer steps spent warming the learning rate up from 0.
        max_grad_norm: clip gradients to this global norm (0 disables clipping).
        grad_accum_steps: micro-batches per optimizer step (effective batch = batch_size x this).
        mixed_precision: None, ``"mixed_float16"`` or ``"mixed_bfloat16"``; the policy must be set
            with :func:`set_mixed_precision` *before* the model is built.
        jit_compile: compile the step with XLA (one compilation per distinct padded length).
        eval_every: evaluate every N optimizer steps (0: at the end of each epoch).
        early_stopping_patience: stop after this many evaluations without improvement (0: never).
        seed: seeds weights' dropout and the data order.
        max_steps: stop after this many optimizer steps (0: derived from ``epochs``).
        log_every: write scalars every N steps.
        checkpoint_every: save a resumable checkpoint every N steps (also at each evaluation).
        keep_checkpoints: how many resumable checkpoints to keep.
        profile_steps: ``(first, last)`` optimizer steps to trace with ``tf.profiler``, or None.
        histograms: write weight histograms at evaluation steps.
        eval_batch_size: batch size for evaluation.
        restore_best: load the best evaluated weights at the end of training.
    """

    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1
    mixed_precision: str | None = None
    jit_compile: bool = False
    eval_every: int = 0
    early_stopping_patience: int = 0
    seed: int = 42
    max_steps: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    profile_steps: tuple[int, int] | None = None
    histograms: bool = True
    eval_batch_size: int = 64
    restore_best: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(field: str, why: str):
            raise ConfigError(f"train.{field}={getattr(self, field)!r}: {why}")

        if not self.epochs > 0 and not self.max_steps > 0:
            bad("epochs", "must be > 0 (or set max_steps)")
        for field in ("batch_size", "grad_accum_steps", "log_every", "checkpoint_every", "keep_checkpoints",
                      "eval_batch_size"):
            if int(getattr(self, field)) < 1:
                bad(field, "must be a positive integer")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.max_grad_norm < 0:
            bad("max_grad_norm", "must be >= 0 (0 disables clipping)")
        if self.mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
            bad("mixed_precision", "must be None, 'mixed_float16' or 'mixed_bfloat16'")
        if self.max_steps < 0 or self.eval_every < 0 or self.early_stopping_patience < 0:
            bad("max_steps", "max_steps, eval_every and early_stopping_patience must be >= 0")
        if self.profile_steps is not None:
            first, last = self.profile_steps
            if not 0 <= first <= last:
                bad("profile_steps", "must be (first, last) with 0 <= first <= last")

@dataclass
class PruneConfig:
    """What to prune and on which schedule.

    Args:
        final_sparsity (float): fraction of zeros in every selected weight at the end, in [0, 1).
            0 wraps nothing away: the masks stay all ones (a no-op run). For ``structure="2:4"`` it
            must be 0.5 (the structure fixes it).
        initial_sparsity (float): sparsity at ``begin_step`` for the polynomial schedule, in
            [0, final_sparsity].
        schedule (str): ``"polynomial"`` (TFMOT ``PolynomialDecay``, cubic ramp from
            ``initial_sparsity`` to ``final_sparsity``) or ``"constant"`` (TFMOT ``ConstantSparsity``:
            ``final_sparsity`` at every mask update from ``begin_step`` on).
        power (int): exponent of the polynomial schedule (TFMOT's default 3).
        begin_step (int): schedule step of the first mask update window (schedule steps are
            1-based optimizer steps, see the module docstring). 0 = from the start.
        end_step (int | None): last schedule step at which masks are updated; after it the masks
            are fixed and training fine-tunes the surviving weights. None derives it from the run
            length: ``end_fraction x total_steps`` (rounded down to a multiple of ``frequency``).
        end_fraction (float): used when ``end_step`` is None; default 0.75 so the last quarter of
            training recovers accuracy under the final mask.
        frequency (int | None): update the masks every ``frequency`` schedule steps. None derives
            ``max(1, (end_step - begin_step) // 20)`` (about 20 updates). For the polynomial schedule
            ``end_step - begin_step`` must be a multiple of it, otherwise TFMOT never applies the
            final sparsity (its last update falls before ``end_step``).
        block_size (tuple[int, int]): TFMOT block sparsity ``(height, width)`` for rank-2 kernels;
            ``(1, 1)`` = element-wise.
        block_pooling_type (str): ``"AVG"`` or ``"MAX"`` pooling of a block's magnitudes.
        structure (str): ``"unstructured"`` or ``"2:4"`` (TFMOT ``sparsity_m_by_n=(2, 4)``: at least 2
            zeros in every 4 consecutive weights along a Dense kernel's input dimension).
        include_classifier (bool): also prune the classifier, pooler and other Dense layers outside
            the transformer blocks.
        prune_embeddings (bool): also prune the word-embedding table (about half of MiniLM-L6's 22.7 M
            parameters) with the same schedule.
        include (str | None): regex (``re.search``) on layer paths such as
            ``"bert/encoder/layer.0/attention/self_attention/query"``; keeps only matching candidates.
        exclude (str | None): regex; drops matching candidates.
        during (str): the stage that trains under the schedule. ``"prune"`` (default): the ``prune``
            stage, on the training labels (optionally self-distilled, ``prune_distill``). ``"distill"``:
            the ``distill`` stage prunes the student while it learns from the teacher, over the augmented
            copies and transfer set too; the chain then has no ``prune`` stage.

    Raises:
        ValueError: naming the field, the value and why, on construction (:meth:`validate`).
    """

    final_sparsity: float = 0.5
    initial_sparsity: float = 0.0
    schedule: str = "polynomial"
    power: int = 3
    begin_step: int = 0
    end_step: int | None = None
    end_fraction: float = 0.75
    frequency: int | None = None
    block_size: tuple[int, int] = (1, 1)
    block_pooling_type: str = "AVG"
    structure: str = "unstructured"
    include_classifier: bool = False
    prune_embeddings: bool = False
    include: str | None = None
    exclude: str | None = None
    during: str = "prune"

    def __post_init__(self):
        if isinstance(self.block_size, list):
            self.block_size = tuple(self.block_size)
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str):
            raise ConfigError(f"prune.{name}={getattr(self, name)!r}: {why}")

        for name in ("final_sparsity", "initial_sparsity", "end_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                bad(name, "must be a number")
        if not 0.0 <= self.final_sparsity < 1.0:
            bad("final_sparsity", "must be in [0, 1): the fraction of weights set to zero (1 would "
                "remove every weight)")
        if not 0.0 <= self.initial_sparsity < 1.0:
            bad("initial_sparsity", "must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {SCHEDULES}")
        if self.schedule == "polynomial" and self.initial_sparsity > self.final_sparsity:
            bad("initial_sparsity", f"must be <= final_sparsity={self.final_sparsity} (the polynomial "
                "schedule ramps sparsity up)")
        if not isinstance(self.power, int) or self.power < 1:
            bad("power", "must be an integer >= 1")
        if not isinstance(self.begin_step, int) or isinstance(self.begin_step, bool) or self.begin_step < 0:
            bad("begin_step", "must be an integer >= 0")
        if self.end_step is not None:
            if not isinstance(self.end_step, int) or isinstance(self.end_step, bool):
                bad("end_step", "must be an integer or None (derived from the training length)")
            if self.schedule == "constant" and self.end_step == -1:
                pass  # TFMOT: constant sparsity with no end (masks keep updating to the last step)
            elif self.schedule == "polynomial" and self.end_step <= self.begin_step:
                bad("end_step", f"must be after begin_step={self.begin_step} (the polynomial schedule "
                    "ramps sparsity between them)")
            elif self.end_step < self.begin_step:
                bad("end_step", f"must not be before begin_step={self.begin_step}")
        if not 0.0 < self.end_fraction <= 1.0:
            bad("end_fraction", "must be in (0, 1]: the fraction of training during which masks update")
        if self.frequency is not None:
            if not isinstance(self.frequency, int) or isinstance(self.frequency, bool) or self.frequency < 1:
                bad("frequency", "must be an integer >= 1 or None (derived)")
            if (self.schedule == "polynomial" and self.end_step is not None
                    and (self.end_step - self.begin_step) % self.frequency):
                bad("frequency", f"end_step - begin_step = {self.end_step - self.begin_step} is not a "
                    "multiple of it, so TFMOT's last mask update would fall before end_step and the "
                    "final sparsity would never be applied")
        if (not isinstance(self.block_size, tuple) or len(self.block_size) != 2
                or not all(isinstance(v, int) and v >= 1 for v in self.block_size)):
            bad("block_size", "must be two positive integers (height, width)")
        if self.block_pooling_type not in ("AVG", "MAX"):
            bad("block_pooling_type", "must be 'AVG' or 'MAX'")
        if self.structure not in STRUCTURES:
            bad("structure", f"must be one of {STRUCTURES}")
        if self.during not in PRUNE_DURING:
            bad("during", f"must be one of {PRUNE_DURING}")
        if self.structure == "2:4":
            if self.final_sparsity != 0.5:
                bad("final_sparsity", "must be 0.5 with structure='2:4' (2 zeros in every 4 weights is "
                    "50 % by construction)")
            if self.block_size != (1, 1):
                bad("block_size", "must be (1, 1) with structure='2:4' (TFMOT cannot combine them)")
            if self.prune_embeddings:
                bad("prune_embeddings", "2:4 sparsity is a matmul-kernel format; the embedding table is "
                    "gathered, not multiplied: prune it unstructured in a separate run or leave it dense "
                    "(--no-prune-embeddings)")
        _check_layer_patterns(self, bad)

    def resolve_steps(self, total_steps: int | None = None) -> tuple[int, int, int]:
        """``(begin_step, end_step, frequency)`` for a run of ``total_steps`` optimizer steps.

        Raises:
            ValueError: ``end_step`` is None and ``total_steps`` unknown; the derived window is empty;
                or ``end_step`` lies after the last step (the final sparsity would never be applied).
        """
        if total_steps is not None and (not isinstance(total_steps, (int, np.integer)) or total_steps < 1):
            raise ConfigError(f"total_steps={total_steps!r}: must be a positive integer (optimizer steps)")
        begin = self.begin_step
        if self.structure == "2:4":
            # TFMOT computes m-by-n masks once, at schedule step 1, whatever the schedule says.
            return 0, -1, 1
        if self.end_step is None:
            if total_steps is None:
                raise ConfigError("prune.end_step=None: derived from the training length, so pass "
                                 "total_steps (optimizer steps of the run) or set end_step")
            target = int(self.end_fraction * total_steps)
            span = target - begin
            if span < 1:
                raise ConfigError(
                    f"prune.begin_step={begin}: no room to prune before end_fraction={self.end_fraction} "
                    f"x total_steps={total_steps} = step {target}; lower begin_step or set end_step")
            frequency = self.frequency or max(1, span // DERIVED_MASK_UPDATES)
            end = begin + (span // frequency) * frequency
            if end <= begin:
                raise ConfigError(f"prune.frequency={frequency}: larger than the pruning window "
                                 f"{begin}..{target}; lower it")
        else:
            end = self.end_step
            if self.frequency is not None:
                frequency = self.frequency
            elif end == -1:
                frequency = 100  # TFMOT's default
            else:
                span = end - begin
                limit = max(1, span // DERIVED_MASK_UPDATES)
                # the largest divisor of the window not above the limit: end_step stays an update step
                frequency = max((d for d in range(1, limit + 1) if span % d == 0), default=1)
        if total_steps is not None and end > total_steps:
            raise ConfigError(
                f"prune.end_step={end}: after the last training step (total_steps={total_steps}), so "
                f"the final sparsity {self.final_sparsity} would never be applied")
        return begin, end, frequency

@dataclass
class DistillConfig:
    """How the teacher guides the student.

    Args:
        temperature (float): softmax temperature of the KL term (the start value when scheduled).
            Higher values expose more of the teacher's "dark knowledge" in small probabilities.
        temperature_schedule (str): ``"constant"`` or ``"linear"`` (from ``temperature`` at step 0 to
            ``final_temperature`` at the last step, driven by :class:`TemperatureHook`).
        final_temperature (float | None): end value for the ``"linear"`` schedule; required then.
        alpha (float): weight of the task cross-entropy in [0, 1]; the KL term gets ``1 - alpha``.
        hidden_loss_weight (float): weight of the hidden-state MSE over the layer map (0 = off).
        attention_loss_weight (float): weight of the attention-distribution KL over the layer map
            (0 = off).
        layer_map (tuple[tuple[int, int], ...] | str | None): ``(teacher_layer, student_layer)`` pairs,
            1-based block numbers with 0 = the embedding output (hidden-state term only). ``None``
            maps uniformly: student layer ``j`` <- teacher layer ``round(j * L_teacher / L_student)``,
            e.g. teacher 6 layers -> student 3: (2, 1), (4, 2), (6, 3). A string ``"2:1,4:2,6:3"``
            is accepted for command lines.
        cache_teacher (bool): compute the teacher outputs once over the training data
            (:meth:`Distiller.cache_teacher_outputs`) instead of running the teacher every step.
        cache_max_megabytes (int): refuse to cache more than this (hidden states and attention maps
            of a large training set do not fit in memory: SST-2, 67k x ~25 tokens x 384 x 3 layers x
            4 bytes = 7.7 GB of hidden states).
        augment_copies (int): add up to this many augmented copies of each training text
            (:func:`tfcompress.augment.augment_texts`: word masking and n-gram sampling; token task:
            of each sentence's words, :func:`tfcompress.augment.augment_sentences`, the teacher's
            per-word logits as targets) that the student learns from the teacher's soft labels alone
            (their hard labels are ignored). 0 = off. Needs ``alpha < 1`` (they carry no hard label).
        augment_mask_prob (float): per-word masking probability of the augmentation.
        augment_ngram_prob (float): probability an augmented text keeps only an n-gram of <= 5 words.
        augment_replace_prob (float): per-word probability an augmented text swaps the word for one of its
            ``augment_neighbours`` nearest whole words in the run's model's input embeddings (TinyBERT-style
            replacement; :func:`tfcompress.data.augment.embedding_neighbours`). 0 = off.
        augment_neighbours (int): neighbours a replaced word is drawn from (uniformly).
        augment_seed (int | None): seed of the augmentation; None = the stage's training seed. Fix it
            to compare student seeds on the same augmented texts (a teacher of another tokenizer then
            computes their logits once: the cache is keyed by the texts).
        transfer_file (str): a UTF-8 text file of unlabelled texts, one per line (token task: sentences,
            words separated by whitespace), that the teacher labels and the student learns from like the
            augmented copies (soft labels only; needs ``alpha < 1``): a transfer set beyond the training
            data. "" = none.
        transfer_max (int): read at most this many lines of ``transfer_file``; 0 = all.
        teacher_cache_dir (str): where a teacher of another tokenizer keeps its per-text logits
            (:mod:`tfcompress.compress.teacher_logits`); "" = ``$TFCOMPRESS_CACHE/teacher-logits``
            (default ``~/.cache/tfcompress/teacher-logits``), shared by every run on the machine.
        teacher_document_context (int): token task, teacher of another tokenizer: words of document
            context the teacher reads around each training and test sentence (the ``data.document_context``
            it was trained with; a teacher fed context it was not trained with loses accuracy). 0: each
            sentence alone. Independent of the student's ``data.document_context``.
    """

    temperature: float = 2.0
    temperature_schedule: str = "constant"
    final_temperature: float | None = None
    alpha: float = 0.5
    hidden_loss_weight: float = 0.0
    attention_loss_weight: float = 0.0
    layer_map: Any = None
    cache_teacher: bool = False
    cache_max_megabytes: int = 2048
    augment_copies: int = 0
    augment_mask_prob: float = 0.1
    augment_ngram_prob: float = 0.25
    augment_replace_prob: float = 0.0
    augment_neighbours: int = 15
    augment_seed: int | None = None
    transfer_file: str = ""
    transfer_max: int = 0
    teacher_cache_dir: str = ""
    teacher_document_context: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(field, why):
            raise ConfigError(f"DistillConfig.{field}={getattr(self, field)!r}: {why}")

        if not _is_number(self.temperature) or not self.temperature > 0:
            bad("temperature", "must be a number > 0")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            bad("temperature_schedule", f"must be one of {TEMPERATURE_SCHEDULES}")
        if self.temperature_schedule == "linear":
            if self.final_temperature is None:
                bad("final_temperature", "is required when temperature_schedule='linear' "
                                         "(the temperature at the last step)")
        if self.final_temperature is not None and (
                not _is_number(self.final_temperature) or not self.final_temperature > 0):
            bad("final_temperature", "must be a number > 0 (or None for a constant temperature)")
        if not _is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            bad("alpha", "must be in [0, 1] (weight of the task loss; the KL term gets 1 - alpha)")
        for name in ("hidden_loss_weight", "attention_loss_weight"):
            value = getattr(self, name)
            if not _is_number(value) or not value >= 0:
                bad(name, "must be a number >= 0 (0 turns the term off)")
        if not isinstance(self.cache_teacher, bool):
            bad("cache_teacher", "must be True or False")
        if not isinstance(self.cache_max_megabytes, int) or self.cache_max_megabytes <= 0:
            bad("cache_max_megabytes", "must be a positive integer")
        if isinstance(self.augment_copies, bool) or not isinstance(self.augment_copies, int) or self.augment_copies < 0:
            bad("augment_copies", "must be an integer >= 0 (0 turns augmentation off)")
        if self.augment_copies and self.alpha >= 1.0:
            bad("augment_copies", "needs alpha < 1: augmented texts have no hard label, only the teacher's "
                "(for a labels-only student set augment_copies to 0: --augment-copies 0)")
        if not isinstance(self.transfer_file, str):
            bad("transfer_file", "must be a path string (\"\" = no transfer set)")
        if isinstance(self.transfer_max, bool) or not isinstance(self.transfer_max, int) or self.transfer_max < 0:
            bad("transfer_max", "must be an integer >= 0 (0 = every line)")
        if self.transfer_file and self.alpha >= 1.0:
            bad("transfer_file", "needs alpha < 1: its texts have no hard label, only the teacher's")
        if self.augment_seed is not None and (isinstance(self.augment_seed, bool) or not isinstance(self.augment_seed, int)):
            bad("augment_seed", "must be an integer or None (None: the training seed)")
        for name in ("augment_mask_prob", "augment_ngram_prob", "augment_replace_prob"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                bad(name, "must be in [0, 1]")
        if isinstance(self.augment_neighbours, bool) or not isinstance(self.augment_neighbours, int) \
                or self.augment_neighbours < 1:
            bad("augment_neighbours", "must be an integer >= 1")
        if self.augment_replace_prob and not self.augment_copies:
            bad("augment_replace_prob", "replaces words in augmented copies: set augment_copies (--augment-copies)")
        context = self.teacher_document_context
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            bad("teacher_document_context", "must be an integer >= 0 (0: the teacher reads each sentence alone)")
        self.layer_map = _parse_layer_map(self.layer_map)

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_loss_weight > 0

    @property
    def needs_attentions(self) -> bool:
        return self.attention_loss_weight > 0

    def temperature_at(self, step: int, total_steps: int) -> float:
        """The scheduled temperature before optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.temperature_schedule == "constant" or self.final_temperature is None:
            return float(self.temperature)
        progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
        return float(self.temperature + (self.final_temperature - self.temperature) * progress)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _parse_layer_map(value):
    if value is None:
        return None
    where = f"DistillConfig.layer_map={value!r}"
    if isinstance(value, str):
        pairs = []
        for item in value.replace(" ", "").split(","):
            if not item:
                continue
            parts = item.split(":")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ConfigError(f"{where}: expected 'teacher:student' pairs such as '2:1,4:2,6:3', "
                                 f"got item {item!r}")
            pairs.append((int(parts[0]), int(parts[1])))
        value = pairs
    if isinstance(value, dict):
        raise ConfigError(f"{where}: give a sequence of (teacher_layer, student_layer) pairs, not a dict "
                         "(a dict cannot map one teacher layer to two student layers or say which "
                         "side is which)")
    try:
        pairs = tuple((int(t), int(s)) for t, s in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected (teacher_layer, student_layer) integer pairs") from None
    if not pairs:
        raise ConfigError(f"{where}: is empty; use None for the uniform map")
    for t, s in pairs:
        if t < 0 or s < 0:
            raise ConfigError(f"{where}: layer numbers are 1-based block numbers (0 = embeddings), "
                             f"got ({t}, {s})")
    return pairs


@dataclass
class QATConfig:
    """What quantization-aware training wraps, and how.

    Args:
        preserve_sparsity (bool | None): use TFMOT's prune-preserving 8-bit scheme (PQAT:
            ``Default8bitPrunePreserveQuantizeRegistry``) so pruned zeros stay zero. ``None``
            (default) decides per layer: kernels with at least 1 % exact zeros (a ``prune.strip``-ed
            model) get it, dense kernels get the plain ``Default8BitQuantizeRegistry`` config.
            ``True`` forces it on every wrapped layer, ``False`` off (the zeros then fill in).
        include_classifier (bool): also wrap the Dense layers outside the transformer blocks
            (classifier, pooler). Off by default: the classifier is tiny and its logits output is
            what the user reads.
        include (str | None): regex (``re.search``) on layer paths; keeps only matching candidates.
        exclude (str | None): regex; drops matching candidates.
        calibration_examples (int): examples :func:`apply` runs through :func:`calibrate_ranges`
            when it is given calibration data.
        target (str): the artifact QAT trains for. ``"int8"`` (default): fake quant on the Dense kernels
            and outputs only. ``"integer"``: also TFMOT fake quant on the activations the ``integer``
            export quantizes (LayerNorm inputs/outputs and softmax inputs int16, attention probabilities
            int8, :mod:`tfcompress.compress.qat_integer`), trained on that export's graph; the learned
            ranges are saved beside the model (``integer_ranges.json``) and replace calibration in the
            ``integer`` artifact. BERT, MiniLM, RoBERTa and ELECTRA.

    Raises:
        ValueError: naming the field and the bad value (on construction, :meth:`validate`).
    """

    preserve_sparsity: bool | None = None
    include_classifier: bool = False
    include: str | None = None
    exclude: str | None = None
    calibration_examples: int = 64
    target: str = "int8"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str):
            raise ConfigError(f"qat.{name}={getattr(self, name)!r}: {why}")

        if self.preserve_sparsity is not None and not isinstance(self.preserve_sparsity, bool):
            bad("preserve_sparsity", "must be True, False or None (decide per layer from its zeros)")
        if not isinstance(self.include_classifier, bool):
            bad("include_classifier", "must be True or False")
        if (isinstance(self.calibration_examples, bool) or not isinstance(self.calibration_examples, int)
                or self.calibration_examples < 1):
            bad("calibration_examples", "must be an integer >= 1")
        if self.target not in QAT_TARGETS:
            bad("target", f"must be one of {list(QAT_TARGETS)}")
        _check_layer_patterns(self, bad)


