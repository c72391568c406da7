"""Quantization-aware training for the ``integer`` artifact: fake quant where its int16/int8 graph quantizes.

The ``integer`` export (:mod:`tfcompress.export.litert_quantizer`) runs FULLY_CONNECTED and BATCH_MATMUL
in int8 and everything else in int16, with ranges from post-training calibration. Plain QAT
(:mod:`tfcompress.compress.qat`, ``QATConfig.target="int8"``) trains only the Dense kernels and outputs
in int8. With ``target="integer"``, :func:`tfcompress.compress.qat.apply` keeps those Dense wrappers
(prune-preserving for pruned kernels) and this module adds TFMOT's own quantizers on the activations
the integer graph quantizes, per LayerNorm and per self-attention:

===============================  =====  ============================================================
point                            bits   TFMOT quantizer
===============================  =====  ============================================================
``<LayerNorm path>:input``       16     ``MovingAverageQuantizer``, symmetric, narrow range (the
                                        residual sum; the embeddings' sum for the first LayerNorm)
``<LayerNorm path>:output``      16     the same (the int16 residual stream the next block reads)
``<attention path>:softmax_input`` 16   the same (scores / sqrt(d) + mask, mask floored as exported)
``<attention path>:probabilities`` 8    ``FixedQuantizer`` on +-32767/32768: the quantizer gives
                                        the int16 SOFTMAX output the fixed scale 1/32768 and
                                        requantizes that range to int8 (step 0.0078429, zero point 0),
                                        not a calibrated one (read from the artifact, test-checked)
query / key / value              8      the Q/K/V Dense wrappers' output quantizers (asymmetric
                                        ``MovingAverageQuantizer``): RESHAPE and TRANSPOSE only move
                                        values, so the BATCH_MATMUL's int8 inputs are those outputs
===============================  =====  ============================================================

TFMOT's symmetric narrow-range 16-bit fake quant has the step ``max(|min|, |max|) / 32767``, the
step the LiteRT quantizer gives a symmetric int16 tensor from the same min/max
(``uniform_quantize_tensor.tensor_zp_scale_from_min_max``), so the ranges learned here carry over as
they are.

The points are trained on the graph the export traces: :func:`install` applies the integer export's
rewrites (the attention mask as a GATHER of ``[floor, 0]`` and LayerNorm written out,
:mod:`tfcompress.export.rewrites`) and patches each LayerNorm's and self-attention's ``call`` on the
instance (same float function; the attention is HF BERT's self-attention, written out with the
points between its ops). :func:`recording` installs the same patches without fake quant and records
the graph name of every point's tensor while the export traces, which is how
:func:`tfcompress.export.litert_quantizer.to_integer_tflite` finds the float ``.tflite`` tensors whose
calibrated min/max it replaces by the learned ones (:func:`learned_ranges`, saved beside the model as
``integer_ranges.json``).

Caveats:
    * BERT-family self-attention only (BERT, MiniLM, RoBERTa, ELECTRA): DistilBERT and MPNet raise
      ``NotImplementedError``; cross-attention and cached keys are refused at call time.
    * The Dense outputs that feed the residual ADD or the GELU are trained by the Dense wrappers but keep
      their calibrated ranges in the artifact.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from tfcompress._compat import keras, tf
from tfcompress.config.constants import DEFAULT_ATTENTION_MASK_FLOOR
from tfcompress.export.rewrites import encoder_of, quantization_friendly, restore_call
from tfcompress.models.surgery import find_layers
from tfcompress.utils import atomic_write_json, get_logger

log = get_logger("quantize")

RANGES_FILE = "integer_ranges.json"
INT16_BITS = 16
INT8_BITS = 8
# The int16 SOFTMAX output has the fixed symmetric scale 1/32768, i.e. the range +-32767/32768 (the
# quantizer's min/max of it); its int8 requantization for the BATCH_MATMUL takes that range:
# step 2 * (32767/32768) / 255 = 0.0078429, zero point 0.
PROBABILITY_RANGE = (-32767 / 32768, 32767 / 32768)
MATMUL_INPUTS = ("query", "key", "value")
POINTS_ATTRIBUTE = "_tfcompress_integer_points"


class ActivationQuantizer(keras.layers.Layer):
    """One fake-quant point on an activation, with TFMOT's quantizer and its range variables.

    Args:
        point (str): the point's name (``<layer path>:<kind>``), used in the ranges file and TensorBoard.
        num_bits (int): 16 (symmetric, narrow range, learned) or 8.
        fixed_range (tuple[float, float] | None): a fixed ``(min, max)`` (``FixedQuantizer``) instead of a
            learned range.
    """

    def __init__(self, point: str, num_bits: int, fixed_range: tuple[float, float] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.point = point
        self.num_bits = num_bits
        self.fixed_range = fixed_range
        self.observed = None  # [min, max] while calibrating (eager)

    def build(self, input_shape):
        from tensorflow_model_optimization.python.core.quantization.keras import quantizers

        if self.fixed_range is not None:
            self.quantizer = quantizers.FixedQuantizer(self.num_bits, *self.fixed_range, narrow_range=False)
        else:
            self.quantizer = quantizers.MovingAverageQuantizer(self.num_bits, per_axis=False, symmetric=True,
                                                               narrow_range=True)
        self.range_weights = self.quantizer.build(tf.TensorShape(input_shape), "activation", self)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if self.observed is not None:
            self.observed[0] = min(self.observed[0], float(tf.reduce_min(inputs)))
            self.observed[1] = max(self.observed[1], float(tf.reduce_max(inputs)))
        return tf.__internal__.smart_cond.smart_cond(
            bool(training) if training is None or isinstance(training, bool) else training,
            lambda: self.quantizer(inputs, True, self.range_weights),
            lambda: self.quantizer(inputs, False, self.range_weights))

    def learned_range(self) -> tuple[float, float] | None:
        """``(min, max)`` the artifact should use, or None for a fixed point."""
        if self.fixed_range is not None or not self.built:
            return None
        return float(self.range_weights["min_var"].numpy()), float(self.range_weights["max_var"].numpy())

    def set_range(self, low: float, high: float) -> None:
        bound = max(abs(low), abs(high))  # symmetric: what the EMA would converge to
        self.range_weights["min_var"].assign(-bound)
        self.range_weights["max_var"].assign(bound)


class IntegerPoints(keras.layers.Layer):
    """Holds the :class:`ActivationQuantizer` layers on the model (so the Trainer checkpoints them) and
    the undo of the call patches. Never called itself."""

    def __init__(self, quantizers: list, **kwargs):
        super().__init__(**kwargs)
        self.quantizers = quantizers
        self.undo = None


def _attention_refs(model) -> list:
    encoder_of(model)  # NotImplementedError for DistilBERT / no encoder
    refs = [ref for ref in find_layers(model, kinds=None) if ref.path.endswith("self_attention")]
    needed = ("query", "key", "value", "transpose_for_scores", "sqrt_att_head_size", "all_head_size", "dropout")
    for ref in refs:
        missing = [name for name in needed if not hasattr(ref.layer, name)]
        if missing:
            raise NotImplementedError(f"{ref.path} ({type(ref.layer).__name__}): not a BERT-family self-attention "
                                      f"(no {', '.join(missing)}); QAT target 'integer' supports BERT, RoBERTa, ELECTRA")
    if not refs:
        raise NotImplementedError(f"{type(model).__name__}: no BERT-family self-attention layers "
                                  "(QAT target 'integer' supports BERT, RoBERTa, ELECTRA)")
    return refs


def _layer_norm_refs(model) -> list:
    prefix = getattr(model, "base_model_prefix", "")
    return [ref for ref in find_layers(model, kinds=(keras.layers.LayerNormalization,))
            if ref.path.startswith(f"{prefix}/")]


def point_names(model) -> list[tuple[str, int, tuple | None]]:
    """``[(point, bits, fixed range or None)]`` of the new fake-quant points of ``model``, in model order."""
    out = []
    for ref in _layer_norm_refs(model):
        out += [(f"{ref.path}:input", INT16_BITS, None), (f"{ref.path}:output", INT16_BITS, None)]
    for ref in _attention_refs(model):
        out += [(f"{ref.path}:softmax_input", INT16_BITS, None),
                (f"{ref.path}:probabilities", INT8_BITS, PROBABILITY_RANGE)]
    return out


def _patch_layer_norm(layer, tap, path: str):
    previous, original = vars(layer).get("call"), layer.call

    def call(inputs, *args, **kwargs):
        outputs = original(tap(f"{path}:input", inputs), *args, **kwargs)
        return tap(f"{path}:output", outputs)

    layer.call = call
    return lambda: restore_call(layer, previous)


def _patch_self_attention(attention, tap, path: str):
    """HF BERT's ``TFBertSelfAttention.call`` (encoder self-attention, no cache), op for op, with points."""
    from transformers.tf_utils import shape_list

    previous = vars(attention).get("call")

    def call(hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
             encoder_attention_mask=None, past_key_value=None, output_attentions=False, training=False):
        if encoder_hidden_states is not None or past_key_value is not None or attention.is_decoder:
            raise NotImplementedError(f"{path}: QAT target 'integer' covers encoder self-attention only "
                                      "(no cross-attention, no cached keys)")
        batch_size = shape_list(hidden_states)[0]
        query, key, value = (tap(f"{path}/{name}", attention.transpose_for_scores(
            getattr(attention, name)(inputs=hidden_states), batch_size)) for name in MATMUL_INPUTS)
        scores = tf.matmul(query, key, transpose_b=True)
        scores = tf.divide(scores, tf.cast(attention.sqrt_att_head_size, dtype=scores.dtype))
        if attention_mask is not None:
            scores = tf.add(scores, attention_mask)
        scores = tap(f"{path}:softmax_input", scores + 1e-9)  # transformers' stable_softmax adds 1e-9
        probabilities = tap(f"{path}:probabilities", tf.nn.softmax(logits=scores, axis=-1))
        probabilities = attention.dropout(inputs=probabilities, training=training)
        if head_mask is not None:
            probabilities = tf.multiply(probabilities, head_mask)
        outputs = tf.transpose(tf.matmul(probabilities, value), perm=[0, 2, 1, 3])
        outputs = tf.reshape(tensor=outputs, shape=(batch_size, -1, attention.all_head_size))
        return (outputs, probabilities) if output_attentions else (outputs,)

    attention.call = call
    return lambda: restore_call(attention, previous)


def _patch(model, tap, attention_mask_floor: float | None):
    """The integer export's graph (``rewrites.quantization_friendly(..., integer_only=True)``, when
    ``attention_mask_floor`` is given), then the point patches calling ``tap(point, tensor) -> tensor``;
    returns the undo."""
    stack = contextlib.ExitStack()
    try:
        if attention_mask_floor is not None:
            stack.enter_context(quantization_friendly(model, attention_mask_floor, integer_only=True))
        for ref in _layer_norm_refs(model):
            stack.callback(_patch_layer_norm(ref.layer, tap, ref.path))
        for ref in _attention_refs(model):
            stack.callback(_patch_self_attention(ref.layer, tap, ref.path))
    except BaseException:
        stack.close()
        raise
    return stack.close


def install(model, attention_mask_floor: float = DEFAULT_ATTENTION_MASK_FLOOR) -> list[str]:
    """Add the integer graph's fake-quant points to ``model`` (in place; the Dense wrappers are
    :mod:`tfcompress.compress.qat`'s). Called by ``qat.apply`` for ``QATConfig(target="integer")``.

    Returns:
        The point names (see the module docstring).

    Raises:
        ValueError: already installed. NotImplementedError: not a BERT-family encoder.
    """
    if points_layer(model) is not None:
        raise ValueError("model already holds integer QAT points; call qat.strip(model) first")
    quantizers = [ActivationQuantizer(point, bits, fixed, name=f"integer_point_{index}")
                  for index, (point, bits, fixed) in enumerate(point_names(model))]
    by_name = {layer.point: layer for layer in quantizers}

    def tap(point, tensor):
        layer = by_name.get(point)
        return tensor if layer is None else layer(tensor)  # query/key/value: the Dense wrappers quantize

    holder = IntegerPoints(quantizers, name="integer_points")
    holder.undo = _patch(model, tap, attention_mask_floor)
    setattr(model, POINTS_ATTRIBUTE, holder)
    return list(by_name)


def points_layer(model) -> IntegerPoints | None:
    return getattr(model, POINTS_ATTRIBUTE, None)


def quantizers(model) -> list[ActivationQuantizer]:
    """The model's integer fake-quant layers ([] when none are installed)."""
    holder = points_layer(model)
    return list(holder.quantizers) if holder is not None else []


def remove(model) -> int:
    """Undo :func:`install`: the original calls back, the point layers (and their variables) gone.
    Returns how many points were removed."""
    holder = points_layer(model)
    if holder is None:
        return 0
    holder.undo()
    delattr(model, POINTS_ATTRIBUTE)
    return len(holder.quantizers)


@contextlib.contextmanager
def observing(model):
    """Within it, every learned point records the min/max of what passes (eager calls); on exit the
    points' ranges are set to them (``{point: (min, max)}`` yielded, filled on exit). Used by
    :func:`tfcompress.compress.qat.calibrate_ranges`: TFMOT's EMA starts at -6/6."""
    learned = [layer for layer in quantizers(model) if layer.fixed_range is None]
    result: dict[str, tuple[float, float]] = {}
    for layer in learned:
        layer.observed = [0.0, 0.0]
    try:
        yield result
    finally:
        for layer in learned:
            low, high = layer.observed
            layer.observed = None
            if high > low:
                layer.set_range(low, high)
                result[layer.point] = layer.learned_range()


@contextlib.contextmanager
def recording(model, attention_mask_floor: float = DEFAULT_ATTENTION_MASK_FLOOR):
    """Within it, ``model`` runs the integer export's graph (as inside
    ``rewrites.quantization_friendly(model, floor, integer_only=True)``) through the same patched calls
    as in training, without fake quant; while a ``tf.function`` traces it, the yielded dict fills with
    ``{point: graph op name of the point's tensor}`` (query/key/value under their Dense paths)."""
    names: dict[str, str] = {}

    def tap(point, tensor):
        if not tf.executing_eagerly():
            names[point] = tensor.name.rsplit(":", 1)[0]
        return tensor

    undo = _patch(model, tap, attention_mask_floor)
    try:
        yield names
    finally:
        undo()


def learned_ranges(model, dense_output_ranges: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """``{point: {"min", "max", "num_bits", "symmetric"}}`` for the artifact: every learned point, and
    the Q/K/V matmul inputs from ``dense_output_ranges`` (``{Dense path: (min, max)}``, the QAT
    wrappers' output ranges; Dense layers without one keep calibration)."""
    out = {}
    for layer in quantizers(model):
        learned = layer.learned_range()
        if learned is not None:
            out[layer.point] = {"min": learned[0], "max": learned[1], "num_bits": layer.num_bits, "symmetric": True}
    for ref in _attention_refs(model):
        for name in MATMUL_INPUTS:
            path = f"{ref.path}/{name}"
            if path in dense_output_ranges:
                low, high = dense_output_ranges[path]
                out[path] = {"min": low, "max": high, "num_bits": INT8_BITS, "symmetric": False}
    return out


def save_ranges(model_dir, ranges: dict) -> Path:
    """Write ``ranges`` (:func:`learned_ranges`) as ``<model_dir>/integer_ranges.json``."""
    path = Path(model_dir) / RANGES_FILE
    atomic_write_json(path, {"points": ranges})
    return path


def read_ranges(model_dir) -> dict | None:
    """The learned ranges saved beside a model folder, or None if it was not QAT-trained for ``integer``."""
    path = Path(model_dir) / RANGES_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())["points"]


def summaries(model) -> dict[str, float]:
    """TensorBoard scalars: each learned point's range half-width (``qat/integer_range/<point>``)."""
    out = {}
    for layer in quantizers(model):
        learned = layer.learned_range()
        if learned is not None:
            out[f"qat/integer_range/{layer.point}"] = max(abs(learned[0]), abs(learned[1]))
    return out
