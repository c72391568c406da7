"""Knowledge distillation: a frozen teacher guides a smaller trainable student.

The pieces:

* :class:`DistillConfig` - loss weights, temperature (constant or linearly scheduled), layer map,
  teacher-output caching.
* :class:`Distiller` - a ``keras.Model`` holding the frozen ``teacher`` and the trainable ``student``
  (plus, when widths differ, the learned hidden-state projections). ``call()`` returns the student's
  logits; :meth:`Distiller.loss_fn` is the ``loss_fn`` the :class:`~tfcompress.train.Trainer` calls
  inside its training step, so TensorBoard, checkpoints, resume, pruning and QAT hooks all apply
  unchanged. Only the student and the projections are in ``trainable_variables``: the teacher is set
  ``trainable=False`` and its outputs pass through ``tf.stop_gradient`` (the keras-io issue 257
  distiller trained the teacher; ``test_distiller_updates_student_not_teacher`` guards against it).
* :func:`make_student` - a student from the teacher by keeping a subset of its layers
  (DistilBERT-style initialisation), or a fresh, smaller configuration of the teacher's architecture.
  Any other Hugging Face TF model with the same tokenizer can be passed to ``Distiller`` directly.

Loss, per training step (``T`` = temperature, ``alpha`` = task weight)::

    loss = alpha * CE(labels, student)
         + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + hidden_loss_weight    * mean over mapped layers of MSE(proj(student_hidden), teacher_hidden)
         + attention_loss_weight * mean over mapped layers of KL(teacher_attention || student_attention)

The ``T^2`` factor keeps the soft-target gradients on the same scale as the hard-target ones when ``T``
changes (Hinton et al. 2015). For the token task, the CE and KL terms average over the positions that
carry a label (``labels != -100``) and are not padding; the hidden-state and attention terms average over
every non-padding position (the representations of sub-tokens and ``[CLS]`` are what the student has to
learn to reproduce, as in TinyBERT / TextBrewer), never over padding.

Example::

    from tfcompress import distill, train
    student = distill.make_student(teacher, num_layers=3)          # layers 0, 2, 5 of a 6-layer teacher
    config = distill.DistillConfig(temperature=4.0, alpha=0.5, hidden_loss_weight=1.0)
    distiller = distill.Distiller(teacher, student, config)
    distiller.cache_teacher_outputs(train_data)                    # optional (config.cache_teacher)
    trainer = train.Trainer(distiller, "sequence", train.TrainConfig(epochs=3), "out/distill",
                            hooks=distill.hooks(distiller), loss_fn=distiller.loss_fn)
    trainer.fit(train_data, eval_data)
    models.save_model(distiller.student, tokenizer, "out/student")

Caveats:

* Teacher and student must share the tokenizer (same vocabulary, same positions); :class:`Distiller`
  checks that the vocabulary sizes agree.
* Hugging Face TF models return attention probabilities *after* attention dropout, so with
  ``attention_loss_weight > 0`` a student trained with ``attention_probs_dropout_prob > 0`` is compared
  with dropped-out rows; a warning is logged. Set it to 0 in the student config for attention matching.
* Cached teacher outputs live in non-trainable ``tf.Variable`` objects that are *not* tracked by the
  Distiller (not saved in checkpoints: they are recomputed from the teacher). They are read through
  ``features["example_index"]``; the Trainer must add that key for the training set (see
  :meth:`Distiller.cache_teacher_outputs`). The ragged gather that reads them is not XLA-compilable.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tfcompress import models
from tfcompress._compat import keras, tf
from tfcompress.utils import get_logger

from tfcompress.train import Hook

IGNORE_INDEX = -100  # same value as tfcompress.data.IGNORE_INDEX (labels the losses skip)
EXAMPLE_INDEX_KEY = "example_index"  # feature key carrying each example's row in the training data
TEMPERATURE_SCHEDULES = ("constant", "linear")

logger = get_logger("distill")

__all__ = [
    "DistillConfig", "Distiller", "TemperatureHook", "hooks", "make_student", "uniform_layer_map",
    "uniform_layer_indices", "kd_loss", "logit_losses", "EXAMPLE_INDEX_KEY",
]


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------

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
        augment_copies (int): sequence task: add up to this many augmented copies of each training
            text (:func:`tfcompress.augment.augment_texts`: word masking and n-gram sampling) that the
            student learns from the teacher's soft labels alone (their hard label is ignored). 0 = off.
            Needs ``alpha < 1`` (they carry no hard label).
        augment_mask_prob (float): per-word masking probability of the augmentation.
        augment_ngram_prob (float): probability an augmented text keeps only an n-gram of <= 5 words.
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

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(field, why):
            raise ValueError(f"DistillConfig.{field}={getattr(self, field)!r}: {why}")

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
        for name in ("augment_mask_prob", "augment_ngram_prob"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                bad(name, "must be in [0, 1]")
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
                raise ValueError(f"{where}: expected 'teacher:student' pairs such as '2:1,4:2,6:3', "
                                 f"got item {item!r}")
            pairs.append((int(parts[0]), int(parts[1])))
        value = pairs
    if isinstance(value, dict):
        raise ValueError(f"{where}: give a sequence of (teacher_layer, student_layer) pairs, not a dict "
                         "(a dict cannot map one teacher layer to two student layers or say which "
                         "side is which)")
    try:
        pairs = tuple((int(t), int(s)) for t, s in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected (teacher_layer, student_layer) integer pairs") from None
    if not pairs:
        raise ValueError(f"{where}: is empty; use None for the uniform map")
    for t, s in pairs:
        if t < 0 or s < 0:
            raise ValueError(f"{where}: layer numbers are 1-based block numbers (0 = embeddings), "
                             f"got ({t}, {s})")
    return pairs


def uniform_layer_map(teacher_layers: int, student_layers: int) -> tuple[tuple[int, int], ...]:
    """``(teacher_layer, student_layer)`` pairs, 1-based: student ``j`` <- teacher ``round(j*Lt/Ls)``.

    6 -> 3 gives ((2, 1), (4, 2), (6, 3)); 12 -> 4 gives ((3, 1), (6, 2), (9, 3), (12, 4)); the last
    student layer always meets the last teacher layer. Rounding is half-up.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got teacher={teacher_layers}, "
                         f"student={student_layers}")
    return tuple(((2 * j * teacher_layers + student_layers) // (2 * student_layers), j)
                 for j in range(1, student_layers + 1))


def uniform_layer_indices(num_teacher_layers: int, num_layers: int) -> list[int]:
    """0-based teacher blocks a ``num_layers`` student keeps: evenly spaced, first and last included.

    12 -> 6 gives [0, 2, 4, 7, 9, 11], the blocks DistilBERT was initialised from; 6 -> 3 gives
    [0, 2, 5]; 2 -> 1 gives [0].
    """
    if not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(f"num_layers={num_layers}: must be between 1 and the teacher's "
                         f"{num_teacher_layers} layers")
    if num_layers == 1:
        return [0]
    return [int(round(i * (num_teacher_layers - 1) / (num_layers - 1))) for i in range(num_layers)]


# --------------------------------------------------------------------------------------------------
# loss terms (pure functions on tensors; the reference formula is tested against numpy)
# --------------------------------------------------------------------------------------------------

def _masked_mean(values, mask):
    mask = tf.cast(mask, values.dtype)
    return tf.reduce_sum(values * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def kd_loss(student_logits, teacher_logits, temperature, mask=None):
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over examples / masked positions.

    Args:
        student_logits (tf.Tensor): ``[B, C]`` or ``[B, T, C]``.
        teacher_logits (tf.Tensor): same shape.
        temperature (float | tf.Variable): the softmax temperature.
        mask (tf.Tensor | None): ``[B]`` or ``[B, T]``, 1 where the position counts.
    """
    student_logits = tf.cast(student_logits, tf.float32)
    teacher_logits = tf.cast(teacher_logits, tf.float32)
    temperature = tf.cast(temperature, tf.float32)
    log_p_teacher = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    if mask is None:
        mask = tf.ones_like(kl)
    return temperature * temperature * _masked_mean(kl, mask)


def task_loss(logits, labels, mask):
    """Sparse cross-entropy averaged over the positions where ``mask`` is 1."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    safe_labels = tf.where(tf.cast(mask, tf.bool), labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    return _masked_mean(ce, mask)


def logit_losses(student_logits, teacher_logits, labels, padding_mask, task, alpha, temperature):
    """``alpha * CE + (1 - alpha) * T^2 * KL`` on logits, with its unweighted terms by name.

    Args:
        student_logits (tf.Tensor): ``[B, C]`` (sequence) or ``[B, T, C]`` (token).
        teacher_logits (tf.Tensor | None): same shape; may be None when ``alpha == 1``.
        labels (tf.Tensor): ``[B]`` or ``[B, T]``; ``-100`` = ignored.
        padding_mask (tf.Tensor): ``[B, T]``, 1 on real tokens (used by the token task).
        task (str): ``"sequence"`` or ``"token"``.
        alpha (float): task-loss weight.
        temperature (float | tf.Variable): KL temperature.

    Returns:
        ``(weighted_sum, {"distill/task_loss": CE, "distill/kd_loss": T^2 * KL})``. Token task: both
        average over positions with a label that are not padding; nothing else reaches the loss.
        Sequence task: CE averages over the examples with a label, KL over every example (augmented
        texts carry ``IGNORE_INDEX`` and only the teacher's soft label).
    """
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(tf.not_equal(labels, IGNORE_INDEX), tf.float32)
    kd_mask = None
    if task == "token":
        mask *= tf.cast(padding_mask, tf.float32)
        kd_mask = mask
    terms = {"distill/task_loss": task_loss(student_logits, labels, mask)}
    total = alpha * terms["distill/task_loss"]
    if alpha < 1.0:
        terms["distill/kd_loss"] = kd_loss(student_logits, teacher_logits, temperature, kd_mask)
        total += (1.0 - alpha) * terms["distill/kd_loss"]
    return total, terms


def hidden_mse(student_hidden, teacher_hidden, padding_mask):
    """Mean squared error per element over non-padding positions (``[B, T, H]`` each, mask ``[B, T]``)."""
    diff = tf.cast(student_hidden, tf.float32) - tf.cast(teacher_hidden, tf.float32)
    per_token = tf.reduce_mean(tf.square(diff), axis=-1)
    return _masked_mean(per_token, padding_mask)


def attention_kl(student_attention, teacher_attention, padding_mask, epsilon=1e-9):
    """KL(teacher row || student row) of attention distributions ``[B, heads, T, T]``.

    Averaged over heads and non-padding query rows; padding keys carry ~0 probability in both (the
    models mask them). With different head counts both sides are averaged over heads first.
    """
    student_attention = tf.cast(student_attention, tf.float32)
    teacher_attention = tf.cast(teacher_attention, tf.float32)
    if student_attention.shape[1] != teacher_attention.shape[1]:
        student_attention = tf.reduce_mean(student_attention, axis=1, keepdims=True)
        teacher_attention = tf.reduce_mean(teacher_attention, axis=1, keepdims=True)
    kl = tf.reduce_sum(teacher_attention * (tf.math.log(teacher_attention + epsilon)
                                            - tf.math.log(student_attention + epsilon)), axis=-1)
    heads = tf.shape(kl)[1]
    mask = tf.tile(tf.cast(padding_mask, tf.float32)[:, None, :], [1, heads, 1])
    return _masked_mean(kl, mask)


# --------------------------------------------------------------------------------------------------
# helpers on Hugging Face models
# --------------------------------------------------------------------------------------------------

def _num_layers(model) -> int:
    value = getattr(model.config, "num_hidden_layers", None)
    if value is None:
        raise ValueError(f"{type(model).__name__}: config has no num_hidden_layers / n_layers")
    return int(value)


def _hidden_size(model) -> int:
    return int(model.config.hidden_size)  # DistilBertConfig maps hidden_size -> dim


def _input_names(model) -> list[str]:
    try:
        return list(model.input_signature.keys())
    except Exception:  # pragma: no cover - every HF TF model defines input_signature
        return ["input_ids", "attention_mask", "token_type_ids"]


def _select_inputs(features: dict, names: Sequence[str]) -> dict:
    return {name: features[name] for name in names if name in features}


def _padding_mask(features):
    if "attention_mask" in features:
        return tf.cast(features["attention_mask"], tf.float32)
    return tf.ones_like(tf.cast(features["input_ids"], tf.float32))


def _ensure_built(model):
    if not model.built or not model.variables:
        model(model.dummy_inputs, training=False)


def _param_count(model) -> int:
    return int(sum(int(np.prod(v.shape)) for v in model.weights))


# --------------------------------------------------------------------------------------------------
# the distiller
# --------------------------------------------------------------------------------------------------

class Distiller(keras.Model):
    """A frozen teacher and a trainable student, trained through the Trainer's step via :meth:`loss_fn`.

    Args:
        teacher (transformers.TFPreTrainedModel): fine-tuned teacher (sequence or token classifier).
            Set to ``trainable=False`` here; it always runs with ``training=False`` (no dropout).
        student (transformers.TFPreTrainedModel): the model to train; same tokenizer and labels.
            Pruning / QAT wrappers may be applied to it before or after wrapping.
        config (DistillConfig): loss weights, temperature, layer map, caching.
        task (str | None): ``"sequence"`` or ``"token"``; inferred from the logits rank when None.

    Attributes:
        teacher, student: the two models. ``student`` is what gets saved after training.
        distill_config (DistillConfig): the config given.
        temperature (tf.Variable): current temperature (non-trainable; set by :class:`TemperatureHook`).
        layer_map (tuple[tuple[int, int], ...]): resolved ``(teacher_layer, student_layer)`` pairs.
        hidden_projections (list[keras.layers.Dense | None]): per pair, the learned student->teacher
            width projection (None when the widths agree). Trainable variables of the Distiller,
            not of the student, so they are not saved with the student.
    """

    def __init__(self, teacher, student, config: DistillConfig | None = None, task: str | None = None,
                 name: str = "distiller", **kwargs):
        super().__init__(name=name, **kwargs)
        config = config or DistillConfig()
        if not isinstance(config, DistillConfig):
            raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
        if teacher is student:
            raise ValueError("teacher and student are the same model object; build the student with "
                             "make_student(teacher, ...) (it copies weights) or pass another model")
        if task not in (None, "sequence", "token"):
            raise ValueError(f"task={task!r}: must be 'sequence', 'token' or None (inferred)")
        _ensure_built(teacher)
        _ensure_built(student)
        shared = {id(v) for v in teacher.weights} & {id(v) for v in student.weights}
        if shared:
            raise ValueError(f"teacher and student share {len(shared)} variables; training the student "
                             "would change the teacher. Build the student with make_student().")
        teacher_vocab = getattr(teacher.config, "vocab_size", None)
        student_vocab = getattr(student.config, "vocab_size", None)
        if teacher_vocab != student_vocab:
            raise ValueError(f"teacher vocab_size={teacher_vocab} != student vocab_size={student_vocab}: "
                             "distillation needs both to read the same tokenisation")
        if teacher.config.num_labels != student.config.num_labels:
            raise ValueError(f"teacher has {teacher.config.num_labels} labels, student "
                             f"{student.config.num_labels}; they must predict the same label set")

        self.distill_config = config
        self.task = task
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.teacher_input_names = _input_names(teacher)
        self.student_input_names = _input_names(student)
        self.temperature = tf.Variable(float(config.temperature), trainable=False, dtype=tf.float32,
                                       name="temperature")

        teacher_layers, student_layers = _num_layers(teacher), _num_layers(student)
        if config.layer_map is None:
            layer_map = uniform_layer_map(teacher_layers, student_layers)
        else:
            layer_map = config.layer_map
            for t, s in layer_map:
                if t > teacher_layers or s > student_layers:
                    raise ValueError(f"DistillConfig.layer_map={layer_map!r}: pair ({t}, {s}) is out of "
                                     f"range (teacher has {teacher_layers} layers, student "
                                     f"{student_layers}; 0 = embeddings)")
        self.layer_map = tuple(layer_map)
        # Attention maps exist for blocks only (index 0 = embeddings has none).
        self.attention_pairs = tuple((t, s) for t, s in self.layer_map if t >= 1 and s >= 1)
        if config.needs_attentions and not self.attention_pairs:
            raise ValueError(f"DistillConfig.layer_map={self.layer_map!r}: attention_loss_weight > 0 "
                             "needs at least one pair of blocks (numbers >= 1)")

        teacher_width, student_width = _hidden_size(teacher), _hidden_size(student)
        projections = []
        if config.needs_hidden_states and teacher_width != student_width:
            for t, s in self.layer_map:
                dense = keras.layers.Dense(teacher_width, name=f"hidden_projection_t{t}_s{s}")
                dense.build((None, None, student_width))  # variables exist before the optimizer is built
                projections.append(dense)
        self.hidden_projections = projections  # tracked list: part of trainable_variables

        if config.needs_attentions:
            dropout = getattr(student.config, "attention_probs_dropout_prob",
                              getattr(student.config, "attention_dropout", 0.0))
            if dropout:
                logger.warning("attention_loss_weight > 0 but the student's attention dropout is %s: HF "
                               "models return attention probabilities after dropout, so the attention "
                               "KL sees dropped rows. Set it to 0 in the student config.", dropout)
        self._cache = None  # a plain object, not tracked: cached outputs are not checkpointed

    # -- Keras -------------------------------------------------------------------------------------

    def call(self, inputs, training=False):
        """The student's logits for ``inputs`` (a features dict; extra keys are ignored)."""
        outputs = self.student(_select_inputs(inputs, self.student_input_names), training=training)
        return outputs.logits

    def get_config(self):  # pragma: no cover - save the student with models.save_model instead
        raise NotImplementedError("Distiller is not serialisable as a whole; save distiller.student")

    # -- forward passes ----------------------------------------------------------------------------

    def _teacher_outputs_live(self, features) -> dict:
        config = self.distill_config
        outputs = self.teacher(_select_inputs(features, self.teacher_input_names), training=False,
                               output_hidden_states=config.needs_hidden_states,
                               output_attentions=config.needs_attentions)
        result = {"logits": tf.stop_gradient(tf.cast(outputs.logits, tf.float32))}
        if config.needs_hidden_states:
            result["hidden"] = [tf.stop_gradient(tf.cast(outputs.hidden_states[t], tf.float32))
                                for t, _ in self.layer_map]
        if config.needs_attentions:
            result["attention"] = [tf.stop_gradient(tf.cast(outputs.attentions[t - 1], tf.float32))
                                   for t, _ in self.attention_pairs]
        return result

    def teacher_outputs(self, features) -> dict:
        """Teacher logits (and mapped hidden states / attentions): from the cache when ``features``
        carries ``example_index`` and a cache exists, else from a live forward pass."""
        if self._cache is not None and EXAMPLE_INDEX_KEY in features:
            return self._cache.lookup(features)
        return self._teacher_outputs_live(features)

    def _infer_task(self, logits) -> str:
        if self.task is not None:
            return self.task
        return "token" if logits.shape.rank == 3 else "sequence"

    # -- the Trainer's loss ------------------------------------------------------------------------

    def loss_fn(self, model, features, labels, training):
        """Distillation loss for the Trainer: ``(loss, student_logits, {term name: value})``.

        Args:
            model: the model the Trainer drives (this Distiller; ignored otherwise).
            features (dict[str, tf.Tensor]): ``[B, T]`` int inputs, optionally ``example_index`` ``[B]``.
            labels (tf.Tensor): ``[B]`` (sequence) or ``[B, T]`` with -100 ignored (token).
            training (bool): dropout on for the student; the teacher always runs in inference mode.

        Returns the weighted total, the student's logits, and the unweighted terms
        ``distill/task_loss``, ``distill/kd_loss`` (already times T^2), ``distill/hidden_loss``,
        ``distill/attention_loss`` (the last two only when their weight is > 0).
        """
        del model  # the Distiller is the model; the argument exists for the Trainer's signature
        config = self.distill_config
        student_out = self.student(_select_inputs(features, self.student_input_names), training=training,
                                   output_hidden_states=config.needs_hidden_states,
                                   output_attentions=config.needs_attentions)
        student_logits = tf.cast(student_out.logits, tf.float32)
        task = self._infer_task(student_logits)
        padding = _padding_mask(features)
        needs_teacher = config.alpha < 1.0 or config.needs_hidden_states or config.needs_attentions
        teacher = self.teacher_outputs(features) if needs_teacher else {"logits": None}
        total, terms = logit_losses(student_logits, teacher["logits"], labels, padding, task,
                                    config.alpha, self.temperature)
        if config.needs_hidden_states:
            values = []
            for k, (t, s) in enumerate(self.layer_map):
                hidden = student_out.hidden_states[s]
                if self.hidden_projections:
                    hidden = self.hidden_projections[k](hidden)
                values.append(hidden_mse(hidden, teacher["hidden"][k], padding))
            terms["distill/hidden_loss"] = tf.add_n(values) / len(values)
            total += config.hidden_loss_weight * terms["distill/hidden_loss"]
        if config.needs_attentions:
            values = [attention_kl(student_out.attentions[s - 1], teacher["attention"][k], padding)
                      for k, (t, s) in enumerate(self.attention_pairs)]
            terms["distill/attention_loss"] = tf.add_n(values) / len(values)
            total += config.attention_loss_weight * terms["distill/attention_loss"]
        return total, student_out.logits, terms

    # -- teacher cache -----------------------------------------------------------------------------

    def cache_teacher_outputs(self, data, batch_size: int = 32) -> dict:
        """Run the teacher once over ``data`` (an EncodedData) and keep what the loss needs.

        Afterwards :meth:`loss_fn` reads the teacher's outputs for example ``i`` of ``data`` whenever the
        batch's features carry ``example_index`` (int32 ``[B]``, the rows of ``data`` in the batch);
        batches without it (evaluation) still run the teacher live. The Trainer adds the key for the
        training set when ``model.needs_example_index`` is true. A lookup checks that the cached
        lengths equal the batch's ``attention_mask`` sums, so indices into another dataset fail loudly.

        Returns ``{"examples", "tokens", "megabytes"}``. Raises ValueError when the cache would exceed
        ``config.cache_max_megabytes`` (hidden states and attention maps grow with every token).
        """
        self._cache = None
        self._cache = _TeacherCache.build(self, data, batch_size)
        summary = {"examples": self._cache.num_examples, "tokens": self._cache.num_tokens,
                   "megabytes": round(self._cache.nbytes / 2**20, 2)}
        logger.info("cached teacher outputs: %s", summary)
        return summary

    def clear_teacher_cache(self) -> None:
        self._cache = None

    @property
    def needs_example_index(self) -> bool:
        """True when the Trainer should add ``features["example_index"]`` to training batches."""
        return self._cache is not None

    # -- hooks and reporting -----------------------------------------------------------------------

    def hooks(self) -> list:
        """Hooks the Trainer must run for this Distiller (the temperature schedule)."""
        return [TemperatureHook(self)]

    def describe(self) -> dict:
        """Teacher / student sizes, the layer map and the config, for report.json."""
        return {
            "teacher_layers": _num_layers(self.teacher), "student_layers": _num_layers(self.student),
            "teacher_params": _param_count(self.teacher), "student_params": _param_count(self.student),
            "teacher_hidden_size": _hidden_size(self.teacher),
            "student_hidden_size": _hidden_size(self.student),
            "layer_map": [list(pair) for pair in self.layer_map],
            "hidden_projection": bool(self.hidden_projections),
            "teacher_cached": self._cache is not None,
            "config": dataclasses.asdict(self.distill_config),
        }


class _TeacherCache:
    """Teacher outputs per example, in flat variables indexed by ``example_index``.

    Token-shaped outputs (token logits, hidden states) are stored ragged by example: values
    ``[sum T_i, ...]`` with row splits ``[N + 1]``; a batch gathers its rows and pads to the batch's
    ``T`` (right padding, as ``EncodedData.padded_batch`` does). Attention maps ``[K, heads, T_i, T_i]``
    are stored flat with per-example offsets and rebuilt with ``tf.map_fn``.
    """

    def __init__(self):
        self.variables: dict[str, tf.Variable] = {}
        self.num_examples = 0
        self.num_tokens = 0
        self.nbytes = 0
        self.token_level_logits = False
        self.num_attention_layers = 0
        self.num_heads = 0

    @classmethod
    def build(cls, distiller: Distiller, data, batch_size: int) -> "_TeacherCache":
        config = distiller.distill_config
        lengths = np.asarray(data.lengths(), dtype=np.int64)
        n = len(lengths)
        if n == 0:
            raise ValueError("cannot cache teacher outputs of an empty dataset")
        teacher = distiller.teacher
        num_labels = int(teacher.config.num_labels)
        token_level = data.task == "token"
        width = _hidden_size(teacher)
        heads = int(teacher.config.num_attention_heads)
        total_tokens = int(lengths.sum())
        estimate = 4 * (total_tokens * num_labels if token_level else n * num_labels)
        if config.needs_hidden_states:
            estimate += 4 * total_tokens * len(distiller.layer_map) * width
        if config.needs_attentions:
            estimate += 4 * len(distiller.attention_pairs) * heads * int((lengths ** 2).sum())
        limit = config.cache_max_megabytes * 2**20
        if estimate > limit:
            raise ValueError(
                f"DistillConfig.cache_max_megabytes={config.cache_max_megabytes}: caching the teacher "
                f"outputs of {n} examples ({total_tokens} tokens) needs {estimate / 2**20:.0f} MB "
                "(hidden states / attention maps grow with every token). Raise the limit, turn "
                "cache_teacher off, or cache logits only (hidden_loss_weight = attention_loss_weight = 0).")

        forward = tf.function(distiller._teacher_outputs_live, reduce_retracing=True)
        logits_out = [None] * n
        hidden_out = [None] * n
        attention_out = [None] * n
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
        for start in range(0, n, batch_size):
            indices = order[start:start + batch_size]
            features, _ = data.padded_batch(indices)
            outputs = forward({k: tf.constant(v) for k, v in features.items()})
            logits = outputs["logits"].numpy()
            hidden = [h.numpy() for h in outputs.get("hidden", [])]
            attention = [a.numpy() for a in outputs.get("attention", [])]
            for row, example in enumerate(indices):
                length = int(lengths[example])
                logits_out[example] = logits[row, :length] if token_level else logits[row]
                if hidden:
                    hidden_out[example] = np.stack([h[row, :length] for h in hidden], axis=1)  # [T, K, H]
                if attention:
                    attention_out[example] = np.stack(
                        [a[row, :, :length, :length] for a in attention]).reshape(-1)  # K*heads*T*T

        cache = cls()
        cache.num_examples, cache.num_tokens, cache.nbytes = n, total_tokens, estimate
        cache.token_level_logits = token_level

        def variable(name, value):
            # Created outside any Keras layer and held by this plain object, so not tracked or saved.
            cache.variables[name] = tf.Variable(value, trainable=False, name=f"teacher_cache_{name}")

        variable("lengths", lengths.astype(np.int32))
        splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        variable("token_splits", splits)
        if token_level:
            variable("logits", np.concatenate(logits_out).astype(np.float32))
        else:
            variable("logits", np.stack(logits_out).astype(np.float32))
        if config.needs_hidden_states:
            variable("hidden", np.concatenate(hidden_out).astype(np.float32))
        if config.needs_attentions:
            cache.num_attention_layers = len(distiller.attention_pairs)
            cache.num_heads = heads
            sizes = np.array([a.size for a in attention_out], dtype=np.int64)
            variable("attention_splits", np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            variable("attention", np.concatenate(attention_out).astype(np.float32))
        return cache

    def _gather_tokens(self, name, index, batch_length):
        variables = self.variables
        ragged = tf.RaggedTensor.from_row_splits(variables[name], variables["token_splits"], validate=False)
        rows = tf.gather(ragged, index)
        dense = rows.to_tensor()  # [B, longest in batch, ...]
        pad = batch_length - tf.shape(dense)[1]  # > 0 when the batch was padded to a fixed width
        paddings = [[0, 0], [0, pad]] + [[0, 0]] * (len(variables[name].shape) - 1)
        return tf.pad(dense, paddings)

    def lookup(self, features) -> dict:
        variables = self.variables
        index = tf.cast(features[EXAMPLE_INDEX_KEY], tf.int32)
        batch_length = tf.shape(features["input_ids"])[1]
        lengths = tf.gather(variables["lengths"], index)
        checks = []
        if "attention_mask" in features:
            checks.append(tf.debugging.assert_equal(
                lengths, tf.reduce_sum(tf.cast(features["attention_mask"], tf.int32), axis=1),
                message="cached teacher outputs: example lengths differ from the batch's attention_mask "
                        "(example_index must index the dataset given to cache_teacher_outputs)"))
        with tf.control_dependencies(checks):
            if self.token_level_logits:
                logits = self._gather_tokens("logits", index, batch_length)
            else:
                logits = tf.gather(variables["logits"], index)
        result = {"logits": logits}
        if "hidden" in variables:
            hidden = self._gather_tokens("hidden", index, batch_length)  # [B, T, K, H]
            result["hidden"] = tf.unstack(hidden, num=variables["hidden"].shape[1], axis=2)
        if "attention" in variables:
            layers, heads = self.num_attention_layers, self.num_heads
            splits = variables["attention_splits"]

            def one(example):
                length = variables["lengths"][example]
                start, end = splits[example], splits[example + 1]
                block = tf.reshape(variables["attention"][start:end], [layers, heads, length, length])
                pad = batch_length - length
                return tf.pad(block, [[0, 0], [0, 0], [0, pad], [0, pad]])

            maps = tf.map_fn(one, index, fn_output_signature=tf.TensorSpec(
                [layers, heads, None, None], tf.float32))  # [B, K, heads, T, T]
            result["attention"] = tf.unstack(maps, num=layers, axis=1)
        return result


class TemperatureHook(Hook):
    """Sets ``distiller.temperature`` before every optimizer step from the config's schedule."""

    def __init__(self, distiller: Distiller):
        self.distiller = distiller

    def _update(self, trainer, step):
        total = int(getattr(trainer, "total_steps", 0) or 1)
        self.distiller.temperature.assign(self.distiller.distill_config.temperature_at(step, total))

    def on_train_begin(self, trainer):
        self._update(trainer, int(getattr(trainer, "global_step", 0) or 0))

    def on_step_begin(self, trainer, step):
        self._update(trainer, step)

    def summaries(self, trainer, step):
        return {"distill/temperature": float(self.distiller.temperature.numpy())}


def hooks(distiller: Distiller) -> list:
    """The Trainer hooks a Distiller needs (same verb as the technique modules' ``hooks``)."""
    return distiller.hooks()


# --------------------------------------------------------------------------------------------------
# student construction
# --------------------------------------------------------------------------------------------------

_BLOCK_NAME = re.compile(r"(?<=/)layer_\._(\d+)(?=/)")


def make_student(teacher, num_layers: int | None = None, config_overrides: dict | None = None,
                 layer_indices: Sequence[int] | None = None):
    """Build a student of the teacher's architecture (same class, labels, vocabulary).

    Two ways:

    * **layer subset** (no ``config_overrides``): keep ``layer_indices`` (0-based teacher blocks), or
      ``num_layers`` evenly spaced blocks including the first and last (default: half the layers,
      rounded up: 6 -> blocks [0, 2, 5]; 12 -> [0, 2, 4, 7, 9, 11], DistilBERT's choice), and copy the
      embeddings, those blocks, the pooler and the classifier from the teacher.
    * **fresh config** (``config_overrides`` given, e.g. ``{"hidden_size": 256,
      "intermediate_size": 1024}``): the teacher's config with the overrides (and ``num_layers``),
      randomly initialised. Width changes make the Distiller learn hidden-state projections.

    Any other Hugging Face TF model with the same tokenizer and labels can be given to
    :class:`Distiller` as the student directly.

    Args:
        teacher (transformers.TFPreTrainedModel): BERT-family (``model.<prefix>.encoder.layer``:
            BERT, RoBERTa, ELECTRA, ...) or DistilBERT (``model.distilbert.transformer.layer``).
        num_layers (int | None): number of transformer blocks of the student.
        config_overrides (dict | None): config fields to change for a fresh student.
        layer_indices (Sequence[int] | None): teacher blocks to keep (layer-subset mode only).

    Returns:
        A built ``transformers.TFPreTrainedModel`` of the teacher's class.
    """
    _ensure_built(teacher)
    teacher_layers = _num_layers(teacher)
    config = copy.deepcopy(teacher.config)
    if config_overrides:
        if layer_indices is not None:
            raise ValueError("layer_indices copies teacher blocks; it cannot be combined with "
                             "config_overrides (a fresh, randomly initialised student)")
        for key, value in config_overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"config_overrides[{key!r}]: {type(config).__name__} has no such field")
            setattr(config, key, value)
        if num_layers is not None:
            if num_layers < 1:
                raise ValueError(f"num_layers={num_layers}: must be >= 1")
            config.num_hidden_layers = int(num_layers)
        student = type(teacher).from_config(config)
        _ensure_built(student)
        return student

    if layer_indices is not None:
        indices = [int(i) for i in layer_indices]
        if not indices or any(not 0 <= i < teacher_layers for i in indices) \
                or len(set(indices)) != len(indices) or indices != sorted(indices):
            raise ValueError(f"layer_indices={list(layer_indices)!r}: need distinct, increasing 0-based "
                             f"block numbers below the teacher's {teacher_layers} layers")
        if num_layers is not None and num_layers != len(indices):
            raise ValueError(f"num_layers={num_layers} disagrees with layer_indices={indices!r}")
    else:
        if num_layers is None:
            num_layers = (teacher_layers + 1) // 2
        indices = uniform_layer_indices(teacher_layers, int(num_layers))

    config.num_hidden_layers = len(indices)
    student = type(teacher).from_config(config)
    _ensure_built(student)
    teacher_by_name = {models.relative_weight_name(v): v for v in teacher.weights}
    missing = []
    for variable in student.weights:
        name = models.relative_weight_name(variable)
        teacher_name = _BLOCK_NAME.sub(lambda m: f"layer_._{indices[int(m.group(1))]}", name, count=1)
        source = teacher_by_name.get(teacher_name)
        if source is None or tuple(source.shape) != tuple(variable.shape):
            missing.append(name)
            continue
        variable.assign(source)
    if missing:
        raise ValueError(
            f"make_student: could not match {len(missing)} student weights to the teacher's "
            f"({missing[:3]}...). Layer-subset students need a plain (unwrapped) model whose blocks are "
            "named layer_._N (BERT family, DistilBERT); use config_overrides for a fresh student.")
    logger.info("student with %d of %d teacher layers (blocks %s)", len(indices), teacher_layers, indices)
    return student
