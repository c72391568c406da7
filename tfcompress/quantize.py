"""Quantization: a quantization-friendly graph for HF encoders, and TFMOT quantization-aware training.

Post-training modes (fp16, dynamic-range, full-integer int8, int16x8) are conversions; they live in
:mod:`tfcompress.export`. This module changes the *model* before conversion:

- :func:`quantization_friendly` floors the additive attention mask. HF TF BERT/RoBERTa/ELECTRA add
  ``-10000 * (1 - mask)`` to the attention scores; int8 calibration then sees a pre-softmax range of
  ~10,000, i.e. a quantization step of ~40 for real scores that span ~20: every score rounds to the
  same value and attention becomes uniform. Flooring the mask at ``-30`` (TF Model Garden's
  MobileBERT-EdgeTPU export uses -120) keeps float outputs (a masked key's weight is < e^-30) and
  shrinks that range ~300x.
- :func:`explicit_layer_norms` writes LayerNorm without ``SQUARED_DIFFERENCE`` (no int16 kernel), so
  ``int16x8`` artifacts run.

Not here yet: QAT (``apply`` / ``strip`` / ``hooks`` with TFMOT's ``QuantizeWrapperV2``), see issue 4.

Caveat: DistilBERT subtracts ``1e30 * (1 - mask)`` inside each attention layer, not through a
shared extended mask; :func:`quantization_friendly` raises ``NotImplementedError`` for it.
"""
from __future__ import annotations

import contextlib
import dataclasses

from tfcompress._compat import tf, keras  # noqa: F401
from tfcompress.utils import get_logger

log = get_logger("quantize")


def _encoder_of(model):
    prefix = getattr(model, "base_model_prefix", None)
    main = getattr(model, prefix, None) if prefix else None
    if main is None:
        raise NotImplementedError(f"{type(model).__name__}: no main layer at .{prefix}")
    if getattr(getattr(model, "config", None), "model_type", "") == "distilbert":
        raise NotImplementedError(
            "DistilBERT applies its -1e30 mask inside each attention layer; mask flooring is "
            "implemented for the BERT family (BERT, RoBERTa, ELECTRA) whose main layer passes an "
            "extended additive mask to .encoder")
    encoder = getattr(main, "encoder", None)
    if encoder is None:
        raise NotImplementedError(f"{type(main).__name__} has no .encoder")
    return encoder


def floor_attention_mask(model, floor: float):
    """Persistently floor the additive attention mask at ``floor`` (returns an undo callable).

    Patches the encoder instance's ``call`` (weights and checkpoint paths unchanged) so the
    extended mask it receives is ``max(mask, floor)``.

    Args:
        model: HF TF BERT-family model.
        floor: negative constant replacing the model's -10000.
    """
    if not floor < 0:
        raise ValueError(f"floor={floor!r}: must be negative")
    encoder = _encoder_of(model)
    previous = vars(encoder).get("call")
    original = encoder.call

    def call(hidden_states, attention_mask=None, *args, **kwargs):
        if attention_mask is not None:
            attention_mask = tf.maximum(attention_mask, tf.cast(floor, attention_mask.dtype))
        return original(hidden_states, attention_mask, *args, **kwargs)

    encoder.call = call
    encoder._tfcompress_mask_floor = float(floor)

    def undo():
        _restore_call(encoder, previous)
        encoder._tfcompress_mask_floor = None

    return undo


def _layer_norms(model):
    seen, out = set(), []
    for layer in model.submodules:
        if isinstance(layer, keras.layers.LayerNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def _restore_call(layer, previous) -> None:
    if previous is None:
        vars(layer).pop("call", None)
    else:
        layer.call = previous


def explicit_layer_norms(model):
    """Make every ``LayerNormalization`` compute ``(x - mean) * rsqrt(mean((x - mean)^2) + eps)``.

    Same float function, different ops: Keras' path lowers to ``SQUARED_DIFFERENCE``, which has no
    int16 kernel in TFLite (``int16x8`` artifacts fail at invoke with "SquaredDifference only
    supports FLOAT32 and INT32"); the explicit form is SUB/ABS/MUL/MEAN/RSQRT, which all have int8
    and int16 kernels. Returns an undo callable.
    """
    undos = []
    for layer in _layer_norms(model):
        # Keras' SavedModel export (which the TFLite converter runs) can leave an instance-level
        # `call` behind; remember it and put it back on undo.
        previous = vars(layer).get("call")

        def call(inputs, *args, _layer=layer, **kwargs):
            axes = _layer.axis if isinstance(_layer.axis, (list, tuple)) else [_layer.axis]
            mean = tf.reduce_mean(inputs, axis=axes, keepdims=True)
            centered = inputs - mean
            # |x|*|x| rather than x*x: the TFLite converter rewrites (a-b)*(a-b) back into
            # SQUARED_DIFFERENCE, which has no int16 kernel; ABS blocks that fusion.
            magnitude = tf.abs(centered)
            variance = tf.reduce_mean(magnitude * magnitude, axis=axes, keepdims=True)
            outputs = centered * tf.math.rsqrt(variance + _layer.epsilon)
            if _layer.scale:
                outputs = outputs * _layer.gamma
            if _layer.center:
                outputs = outputs + _layer.beta
            return outputs

        layer.call = call
        undos.append(lambda _layer=layer, _previous=previous: _restore_call(_layer, _previous))

    def undo():
        for item in undos:
            item()

    return undo


@contextlib.contextmanager
def quantization_friendly(model, attention_mask_floor: float | None = -30.0,
                          explicit_layer_norm: bool = True):
    """Context manager: within it, ``model`` runs (and traces) as a quantization-friendly graph.

    Args:
        model: HF TF BERT-family model.
        attention_mask_floor: floor of the additive attention mask (None: leave it).
        explicit_layer_norm: rewrite LayerNorm without SQUARED_DIFFERENCE (see
            :func:`explicit_layer_norms`).
    """
    undos = []
    try:
        if attention_mask_floor is not None:
            undos.append(floor_attention_mask(model, attention_mask_floor))
        if explicit_layer_norm:
            undos.append(explicit_layer_norms(model))
        yield model
    finally:
        for undo in reversed(undos):
            undo()


__all__ = ["floor_attention_mask", "explicit_layer_norms", "quantization_friendly"]
