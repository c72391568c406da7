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

    from tfcompress.compress import distill
    from tfcompress.config import training
    from tfcompress.models import student
    from tfcompress.train import trainer
    student = student.make_student(teacher, num_layers=3)          # layers 0, 2, 5 of a 6-layer teacher
    config = training.DistillConfig(temperature=4.0, alpha=0.5, hidden_loss_weight=1.0)
    distiller = distill.Distiller(teacher, student, config)
    distiller.cache_teacher_outputs(train_data)                    # optional (config.cache_teacher)
    trainer = trainer.Trainer(distiller, "sequence", training.TrainConfig(epochs=3), "out/distill",
                            hooks=distill.hooks(distiller), loss_fn=distiller.loss_fn)
    trainer.fit(train_data, eval_data)
    loading.save_model(distiller.student, tokenizer, "out/student")

Caveats:

* Token-level terms need teacher and student to share the tokenizer (same vocabulary, same
  positions); :class:`Distiller` checks that the vocabulary sizes agree. A teacher of another
  architecture or tokenizer (``same_tokenizer=False``) teaches through its per-text logits
  (:meth:`Distiller.use_teacher_logits`, computed by :mod:`tfcompress.compress.teacher_logits`); in a
  token task, per word (:meth:`Distiller.use_teacher_token_logits`): logits and, with
  ``hidden_loss_weight > 0``, the mapped layers' hidden states at each word's first sub-token on both
  sides (words line up where tokens do not). Attention maps need the same tokenizer.
* Hugging Face TF models return attention probabilities *after* attention dropout, so with
  ``attention_loss_weight > 0`` a student trained with ``attention_probs_dropout_prob > 0`` is compared
  with dropped-out rows; a warning is logged. Set it to 0 in the student config for attention matching.
* Cached teacher outputs live in non-trainable ``tf.Variable`` objects that are *not* tracked by the
  Distiller (not saved in checkpoints: they are recomputed from the teacher). They are read through
  ``features["example_index"]``; the Trainer must add that key for the training set (see
  :meth:`Distiller.cache_teacher_outputs`). The ragged gather that reads them is not XLA-compilable.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tfcompress._compat import keras, tf
# the loss terms, re-exported: distill.kd_loss etc. stay where users found them
from tfcompress.compress.distill_losses import attention_kl, hidden_mse, kd_loss, logit_losses, task_loss  # noqa: F401
from tfcompress.compress.teacher_cache import TeacherCache
from tfcompress.config.constants import EXAMPLE_INDEX_KEY, IGNORE_INDEX
from tfcompress.config.training import DistillConfig
from tfcompress.errors import ConfigError
from tfcompress.models import facts
from tfcompress.train import distribute
from tfcompress.train.trainer import Hook
from tfcompress.utils import get_logger

logger = get_logger("distill")

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


# --------------------------------------------------------------------------------------------------
# helpers on Hugging Face models
# --------------------------------------------------------------------------------------------------

def _select_inputs(features: dict, names: Sequence[str]) -> dict:
    return {name: features[name] for name in names if name in features}


def _padding_mask(features):
    if "attention_mask" in features:
        return tf.cast(features["attention_mask"], tf.float32)
    return tf.ones_like(tf.cast(features["input_ids"], tf.float32))


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
        same_tokenizer (bool): True (default) when both read the same token ids (checked through the
            vocabulary size). False for another architecture or tokenizer: the teacher never sees the
            student's batches; its per-text logits come from :meth:`use_teacher_logits` (logit terms
            only), a token task's per-word logits and hidden states from :meth:`use_teacher_token_logits`;
            attention weights must be 0.

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
                 name: str = "distiller", same_tokenizer: bool = True, **kwargs):
        super().__init__(name=name, **kwargs)
        config = config or DistillConfig()
        if not isinstance(config, DistillConfig):
            raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
        if teacher is student:
            raise ValueError("teacher and student are the same model object; build the student with "
                             "make_student(teacher, ...) (it copies weights) or pass another model")
        if task not in (None, "sequence", "token"):
            raise ValueError(f"task={task!r}: must be 'sequence', 'token' or None (inferred)")
        facts.ensure_built(teacher)
        facts.ensure_built(student)
        shared = {id(v) for v in teacher.weights} & {id(v) for v in student.weights}
        if shared:
            raise ValueError(f"teacher and student share {len(shared)} variables; training the student "
                             "would change the teacher. Build the student with make_student().")
        teacher_vocab = getattr(teacher.config, "vocab_size", None)
        student_vocab = getattr(student.config, "vocab_size", None)
        if same_tokenizer and teacher_vocab != student_vocab:
            raise ValueError(f"teacher vocab_size={teacher_vocab} != student vocab_size={student_vocab}: "
                             "token-level distillation needs both to read the same tokenisation; for "
                             "another tokenizer pass same_tokenizer=False and use_teacher_logits()")
        # Across tokenizers token positions cannot be mapped; words can (token task: the hidden states at
        # each word's first sub-token, from use_teacher_token_logits). Attention maps stay unmappable.
        if not same_tokenizer and (config.needs_attentions or (config.needs_hidden_states and task != "token")):
            field = "attention_loss_weight" if config.needs_attentions else "hidden_loss_weight"
            raise ConfigError(
                f"DistillConfig.{field}={getattr(config, field)!r}: the teacher ({type(teacher).__name__}, "
                f"vocab {teacher_vocab}) and the student ({type(student).__name__}, vocab {student_vocab}) "
                "tokenize differently, so their token positions cannot be mapped (hidden states can, per word, "
                "in a token task: task='token'); set it to 0 and distil the logits")
        if teacher.config.num_labels != student.config.num_labels:
            raise ValueError(f"teacher has {teacher.config.num_labels} labels, student "
                             f"{student.config.num_labels}; they must predict the same label set")

        self.distill_config = config
        self.task = task
        self.same_tokenizer = bool(same_tokenizer)
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.teacher_input_names = facts.model_input_names(teacher)
        self.student_input_names = facts.model_input_names(student)
        self.temperature = tf.Variable(float(config.temperature), trainable=False, dtype=tf.float32,
                                       name="temperature")

        teacher_layers, student_layers = facts.num_layers(teacher), facts.num_layers(student)
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

        teacher_width, student_width = facts.hidden_size(teacher), facts.hidden_size(student)
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

    def get_config(self):  # pragma: no cover - save the student with loading.save_model instead
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
        if not self.same_tokenizer:
            raise ValueError("the teacher reads another tokenizer: it cannot run on the student's batch; "
                             "call use_teacher_logits() and train on the data those logits were made for")
        return self._teacher_outputs_live(features)

    def _infer_task(self, logits) -> str:
        if self.task is not None:
            return self.task
        return "token" if logits.shape.rank == 3 else "sequence"

    # -- the Trainer's loss ------------------------------------------------------------------------

    def loss_count(self, labels):
        """The Trainer's replica weight for :meth:`loss_fn`: the labelled examples (token task: positions),
        plus, when the teacher's term is on, one for each example without a hard label (an augmented or
        transfer example learns from the teacher alone; weighted by labels, a batch of them would teach
        nothing). A fully labelled batch counts as before, so replicas still average exactly there."""
        count = distribute.labelled_count(labels)
        if self.distill_config.alpha >= 1.0:
            return count
        unlabelled = tf.equal(tf.cast(labels, tf.int32), IGNORE_INDEX)
        if labels.shape.rank == 2:
            unlabelled = tf.reduce_all(unlabelled, axis=1)
        return count + tf.reduce_sum(tf.cast(unlabelled, tf.float32))

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
                                    config.alpha, self.temperature, teacher.get("target_mask"))
        if config.needs_hidden_states:
            values = []
            words = teacher.get("word_positions")  # per-word targets (another tokenizer): [B, W], -1 = none
            for k, (t, s) in enumerate(self.layer_map):
                hidden = student_out.hidden_states[s]
                if words is not None:  # the student's hidden state at its first sub-token of each word
                    hidden = tf.gather(hidden, tf.maximum(words, 0), batch_dims=1)
                if self.hidden_projections:
                    hidden = self.hidden_projections[k](hidden)
                if words is None:
                    values.append(hidden_mse(hidden, teacher["hidden"][k], padding))
                else:
                    values.append(hidden_mse(hidden, teacher["word_hidden"][k], tf.cast(words >= 0, tf.float32)))
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
        self._cache = TeacherCache.build(self, data, batch_size)
        summary = {"examples": self._cache.num_examples, "tokens": self._cache.num_tokens,
                   "megabytes": round(self._cache.nbytes / 2**20, 2)}
        logger.info("cached teacher outputs: %s", summary)
        return summary

    def use_teacher_logits(self, logits) -> dict:
        """Train on precomputed teacher logits ``[N, C]``, row ``i`` for example ``i`` of the training
        data (the cross-tokenizer path: :mod:`tfcompress.compress.teacher_logits` computes them with the
        teacher's own tokenizer). Sequence task only."""
        if self.task == "token":
            raise ValueError("per-text teacher logits are for sequence tasks; a token task uses "
                             "use_teacher_token_logits (per-word targets)")
        if self.distill_config.needs_hidden_states or self.distill_config.needs_attentions:
            raise ConfigError("precomputed teacher logits carry no hidden states or attention maps: set "
                              "DistillConfig.hidden_loss_weight and attention_loss_weight to 0")
        if logits.shape[-1] != self.student.config.num_labels:
            raise ValueError(f"teacher logits have {logits.shape[-1]} classes, the student "
                             f"{self.student.config.num_labels}")
        self._cache = None
        self._cache = TeacherCache.from_logits(logits)
        return {"examples": self._cache.num_examples, "tokens": 0,
                "megabytes": round(self._cache.nbytes / 2**20, 2)}

    def use_teacher_token_logits(self, values, mask, lengths, word_hidden=None, word_positions=None,
                                 words_per_example=None) -> dict:
        """Train a token task on precomputed per-word teacher targets aligned to the student's tokens
        (:func:`tfcompress.compress.teacher_logits.align_to_student`): the KL term applies where
        ``mask`` is 1 (each word's first sub-token that the teacher saw).

        With ``hidden_loss_weight > 0``: ``word_hidden`` ``[words, K, H]``, the teacher's hidden states of
        the layer map's teacher layers at each word's first sub-token, in order
        (:func:`tfcompress.compress.teacher_logits.compute_word_outputs`), ``word_positions`` ``[words]``
        the student's first sub-token of each word (-1: no target) and ``words_per_example``; the MSE
        compares them with the student's (projected) hidden states of the mapped layers at those tokens."""
        config = self.distill_config
        if config.needs_attentions:
            raise ConfigError(f"DistillConfig.attention_loss_weight={config.attention_loss_weight!r}: per-word "
                              "teacher targets carry no attention maps; set it to 0")
        if config.needs_hidden_states:
            if word_hidden is None:
                raise ConfigError(f"DistillConfig.hidden_loss_weight={config.hidden_loss_weight!r}: pass the "
                                  "teacher's per-word hidden states (word_hidden) or set it to 0")
            expected = (len(self.layer_map), facts.hidden_size(self.teacher))
            if tuple(np.shape(word_hidden)[1:]) != expected:
                raise ValueError(f"word_hidden has shape {np.shape(word_hidden)}; the layer map "
                                 f"{self.layer_map} and the teacher's width need [words, {expected[0]}, {expected[1]}]")
        elif word_hidden is not None:
            raise ValueError("word_hidden given but DistillConfig.hidden_loss_weight is 0")
        self._cache = None
        self._cache = TeacherCache.from_token_logits(values, mask, lengths, word_hidden, word_positions,
                                                     words_per_example)
        return {"examples": self._cache.num_examples, "tokens": self._cache.num_tokens,
                "megabytes": round(self._cache.nbytes / 2**20, 2)}

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
            "teacher_layers": facts.num_layers(self.teacher), "student_layers": facts.num_layers(self.student),
            "teacher_params": facts.count_params(self.teacher), "student_params": facts.count_params(self.student),
            "teacher_hidden_size": facts.hidden_size(self.teacher),
            "student_hidden_size": facts.hidden_size(self.student),
            "layer_map": [list(pair) for pair in self.layer_map],
            "hidden_projection": bool(self.hidden_projections),
            "teacher_cached": self._cache is not None,
            "same_tokenizer": self.same_tokenizer,
            "config": dataclasses.asdict(self.distill_config),
        }


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
