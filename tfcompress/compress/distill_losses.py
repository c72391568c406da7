"""The loss terms of knowledge distillation: pure functions on tensors, each tested against a numpy
reference (:mod:`tfcompress.compress.distill` combines them in :meth:`~tfcompress.compress.distill.Distiller.loss_fn`).
"""
from __future__ import annotations

from tfcompress._compat import tf
from tfcompress.config.constants import IGNORE_INDEX


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


def logit_losses(student_logits, teacher_logits, labels, padding_mask, task, alpha, temperature,
                 teacher_mask=None):
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
        ``(weighted_sum, {"distill/task_loss": CE, "distill/kd_loss": T^2 * KL})``. Token task: CE
        averages over positions with a label that are not padding, KL too (live teacher).
        Sequence task: CE averages over the examples with a label, KL over every example (augmented
        texts carry ``IGNORE_INDEX`` and only the teacher's soft label). ``teacher_mask`` (token task,
        ``[B, T]``): where the teacher has a target (per-word targets of a teacher with another
        tokenizer); the KL term then averages over exactly those positions, labelled or not (the words
        of augmented sentences have no hard label).
    """
    labels = tf.cast(labels, tf.int32)
    mask = tf.cast(tf.not_equal(labels, IGNORE_INDEX), tf.float32)
    kd_mask = None
    if task == "token":
        mask *= tf.cast(padding_mask, tf.float32)
        # per-word targets (another tokenizer): wherever the teacher has one, labelled or not (the words
        # of augmented sentences carry no hard label); a live teacher: at the labelled positions
        kd_mask = mask if teacher_mask is None else tf.cast(padding_mask, tf.float32) * tf.cast(teacher_mask, tf.float32)
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
