"""Graph rewrites before conversion: attention-mask floor (or gathered mask), explicit LayerNorm, outlier scaling,
the word embeddings as EMBEDDING_LOOKUP (scale migration into the Dense kernels: :mod:`tfcompress.export.smoothing`).
"""
from __future__ import annotations

import contextlib
import inspect

import numpy as np

from tfcompress._compat import keras, tf  # noqa: F401
from tfcompress.config.constants import DEFAULT_ATTENTION_MASK_FLOOR, DEFAULT_OUTLIER_PERCENTILE
from tfcompress.utils import get_logger

log = get_logger("quantize")

def encoder_of(model):
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
    encoder = encoder_of(model)
    previous = vars(encoder).get("call")
    original = encoder.call

    def call(hidden_states, attention_mask=None, *args, **kwargs):
        if attention_mask is not None:
            attention_mask = tf.maximum(attention_mask, tf.cast(floor, attention_mask.dtype))
        return original(hidden_states, attention_mask, *args, **kwargs)

    encoder.call = call
    encoder._tfcompress_mask_floor = float(floor)

    def undo():
        restore_call(encoder, previous)
        encoder._tfcompress_mask_floor = None

    return undo


def _layer_norms(model):
    seen, out = set(), []
    for layer in model.submodules:
        if isinstance(layer, keras.layers.LayerNormalization) and id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def restore_call(layer, previous) -> None:
    if previous is None:
        vars(layer).pop("call", None)
    else:
        layer.call = previous


def explicit_layer_norms(model, through_abs: bool = True):
    """Make every ``LayerNormalization`` compute ``(x - mean) * rsqrt(mean((x - mean)^2) + eps)``.

    Same float function, different ops: Keras' path (``tf.nn.moments``) lowers to
    ``SQUARED_DIFFERENCE``, which has no int16 kernel in TFLite (``int16x8`` artifacts fail at invoke
    with "SquaredDifference only supports FLOAT32 and INT32") and no int16 rule in the LiteRT
    quantizer; the explicit form is SUB/MUL/MEAN/RSQRT, which all have int8 and int16 kernels.

    Args:
        model: a built Keras/HF TF model.
        through_abs: square the centred values as ``|c| * |c|`` (the ``int16x8`` converter path) rather
            than ``c * c``. The LiteRT quantizer has no rule for ABS, so the integer export passes False;
            a float conversion keeps ``c * c`` a MUL (checked by the integer export's tests).

    Returns:
        An undo callable.
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
            magnitude = tf.abs(centered) if through_abs else centered
            variance = tf.reduce_mean(magnitude * magnitude, axis=axes, keepdims=True)
            # migrate_activation_scales: divide by s before the rsqrt MUL, not in gamma, which the
            # converter folds into the next FULLY_CONNECTED (its int8 input is this MUL's output)
            migrated = getattr(_layer, "_tfcompress_migrated_scale", None)
            if migrated is not None:
                centered = centered * tf.constant(1.0 / migrated, dtype=centered.dtype)
            outputs = centered * tf.math.rsqrt(variance + _layer.epsilon)
            if _layer.scale:
                outputs = outputs * (_layer.gamma if migrated is None
                                     else _layer.gamma * tf.constant(migrated, dtype=outputs.dtype))
            if _layer.center:
                outputs = outputs + _layer.beta
            return outputs

        layer.call = call
        undos.append(lambda _layer=layer, _previous=previous: restore_call(_layer, _previous))

    def undo():
        for item in undos:
            item()

    return undo


_OUTLIER_CLASSES: dict = {}


def ffn_output_blocks(model) -> list:
    """``[(path, module)]`` of every feed-forward output block ``LayerNorm(dense(h) + input_tensor)``
    (the ``bert_output`` of each BERT/RoBERTa/ELECTRA layer); ``[]`` for architectures without them
    (DistilBERT)."""
    try:
        encoder = encoder_of(model)
    except NotImplementedError:
        return []
    blocks = []
    for index, layer in enumerate(getattr(encoder, "layer", None) or []):
        block = getattr(layer, "bert_output", None)
        if (block is not None and all(hasattr(block, name) for name in ("dense", "dropout", "LayerNorm"))
                and isinstance(block.dense, keras.layers.Dense)):  # not QAT-wrapped
            blocks.append((f"encoder/layer.{index}/output", block))
    return blocks


def _outlier_class(base):
    """A subclass of ``base`` (an HF ``*Output`` block) whose call computes the same function with the
    dense layer's output channels divided by ``self._tfcompress_channel_scale`` and multiplied back
    after the residual add: ``LayerNorm((dense'(h) + x / t) * t)``. A class, not an instance-level
    ``call``: Keras' SavedModel export (which the converter runs) cannot serialize the latter here."""
    if base not in _OUTLIER_CLASSES:
        def call(self, hidden_states, input_tensor, training=False):
            hidden = self.dropout(inputs=self.dense(inputs=hidden_states), training=training)
            scale = self._tfcompress_channel_scale
            residual = input_tensor * tf.constant(1.0 / scale, dtype=input_tensor.dtype)
            return self.LayerNorm(inputs=(hidden + residual) * tf.constant(scale, dtype=hidden.dtype))

        _OUTLIER_CLASSES[base] = type(f"OutlierScaled{base.__name__}", (base,), {"call": call})
    return _OUTLIER_CLASSES[base]


def ffn_output_maxima(model, features, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-channel max |output| of every feed-forward output Dense over ``features`` (a list of
    feature dicts, e.g. ``export.representative_features``), ``{path: [hidden]}``."""
    blocks = ffn_output_blocks(model)
    maxima: dict[str, np.ndarray] = {}
    previous = {}
    for path, block in blocks:
        dense = block.dense
        previous[path] = (dense, vars(dense).get("call"))

        def call(inputs, *args, _path=path, _original=dense.call, **kwargs):
            outputs = _original(inputs, *args, **kwargs)
            flat = tf.reshape(tf.abs(outputs), [-1, outputs.shape[-1]])
            current = tf.reduce_max(flat, axis=0).numpy()
            maxima[_path] = np.maximum(maxima.get(_path, current), current)
            return outputs

        dense.call = call
    try:
        features = list(features)
        for start in range(0, len(features), batch_size):
            chunk = features[start:start + batch_size]
            batch = {name: np.concatenate([f[name] for f in chunk]) for name in chunk[0]}
            model(batch, training=False)
    finally:
        for dense, instance_call in previous.values():
            restore_call(dense, instance_call)
    return maxima


def scale_outlier_channels(model, features, percentile: float = DEFAULT_OUTLIER_PERCENTILE):
    """Shrink the outlier channels of every feed-forward output before int8 conversion (undo callable).

    BERT-family encoders grow a few huge channels in the residual stream, and they are written there
    by the feed-forward output Dense (measured on the 50 %-pruned SST-2 MiniLM, 200 sentences: one
    channel reaches |191| at layer 0 while the median channel max is 1.06; this function logs both). An int8 tensor has
    one scale, so that channel sets a step of ~1.5 for every other channel of the Dense's output,
    most of which then round to 0 or +-1 step. Here each channel ``j`` whose calibration max ``a_j``
    exceeds the ``percentile``-th percentile ``q`` of the channel maxima is divided by
    ``t_j = a_j / q`` inside the Dense (kernel column and bias), and multiplied back after the
    residual add, in float: ``LayerNorm((dense'(h) + x / t) * t)``, the same function as
    ``LayerNorm(dense(h) + x)``. The two per-channel MULs are LayerNorm-side ops (float in the
    default ``int8`` artifact, which keeps MUL/ADD in float); the Dense output becomes int8 with a step
    set by ordinary channels. The converter does not fold them back (the MUL follows the ADD, not the
    FULLY_CONNECTED).

    Args:
        model: a built HF TF BERT/RoBERTa/ELECTRA model (plain, not QAT-wrapped); others are left
            unchanged (no feed-forward output blocks found; logged).
        features: calibration feature dicts (the converter's representative data).
        percentile: channels above this percentile of the per-channel maxima are scaled down to it.

    Returns:
        ``undo()``, restoring the weights and the blocks' classes exactly. The record of what was
        scaled is in ``undo.scaled`` (``{path: number of channels}``).

    Raises:
        ValueError: percentile outside (0, 100].
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile!r}: must be in (0, 100]")
    blocks = ffn_output_blocks(model)
    if not blocks:
        log.info("outlier channel scaling: no feed-forward output blocks in %s, not applied",
                 type(model).__name__)
    maxima = ffn_output_maxima(model, features) if blocks else {}
    saved, scaled, maxima_text = [], {}, {}
    for path, block in blocks:
        amax = maxima[path]
        target = float(np.percentile(amax, percentile))
        scale = np.maximum(1.0, amax / max(target, 1e-6)).astype(np.float32)
        if not (scale > 1.0).any():
            continue
        dense = block.dense
        kernel, bias = dense.kernel, dense.bias
        saved.append((block, type(block), vars(block).get("call"), kernel, kernel.numpy(),
                      bias, None if bias is None else bias.numpy()))
        kernel.assign(kernel.numpy() / scale[None, :])
        if bias is not None:
            bias.assign(bias.numpy() / scale)
        block._tfcompress_channel_scale = scale
        # An earlier conversion's SavedModel export can leave an instance-level call on the block
        # that would shadow the class' (and run the unscaled function on the scaled weights).
        vars(block).pop("call", None)
        block.__class__ = _outlier_class(type(block))
        scaled[path] = int((scale > 1.0).sum())
        maxima_text[path] = f"max {float(amax.max()):.1f}, median channel max {float(np.median(amax)):.2f}"

    def undo():
        for block, cls, instance_call, kernel, kernel_value, bias, bias_value in saved:
            kernel.assign(kernel_value)
            if bias is not None:
                bias.assign(bias_value)
            block.__class__ = cls
            # the converter's SavedModel export leaves an instance-level call behind that would
            # keep running the scaled function
            restore_call(block, instance_call)
            if hasattr(block, "_tfcompress_channel_scale"):
                delattr(block, "_tfcompress_channel_scale")

    undo.scaled = scaled
    if scaled:
        log.info("outlier channel scaling: %d feed-forward outputs, channels above their p%g max "
                 "scaled down (%s)", len(scaled), percentile,
                 "; ".join(f"{path}: {count} ({maxima_text[path]})" for path, count in scaled.items()))
    return undo


def gathered_attention_mask(model, floor: float = DEFAULT_ATTENTION_MASK_FLOOR):
    """Make the encoder's additive attention mask a GATHER of ``[floor, 0]`` by the int mask (undo callable).

    HF BERT builds it as ``(1 - cast(mask, float)) * -10000``: a float CAST that an integer graph cannot
    hold (the LiteRT quantizer has no CAST rule) and a 10,000-wide range. Here the main layer's int
    ``attention_mask`` (0 = padding, 1 = token; other values are out of the table's range) indexes a
    two-row constant table instead, which the quantizer treats like an embedding lookup; the floored
    value is the one :func:`floor_attention_mask` gives, so float outputs match it. The model's own
    CAST path is then unused and the converter drops it.

    Args:
        model: HF TF BERT-family model (BERT, RoBERTa, ELECTRA, MPNet: a main layer with an ``.encoder``).
        floor: negative additive mask value at padded positions.
    """
    if not floor < 0:
        raise ValueError(f"floor={floor!r}: must be negative")
    encoder = encoder_of(model)
    main = getattr(model, model.base_model_prefix)
    previous_main, previous_encoder = vars(main).get("call"), vars(encoder).get("call")
    main_call, encoder_call = main.call, encoder.call
    seen = {}

    def call_main(*args, **kwargs):
        seen["mask"] = kwargs.get("attention_mask")
        try:
            return main_call(*args, **kwargs)
        finally:
            seen.pop("mask", None)

    def call_encoder(hidden_states, attention_mask=None, *args, **kwargs):
        mask = seen.get("mask")
        if mask is not None and attention_mask is not None:
            table = tf.constant([floor, 0.0], dtype=hidden_states.dtype)
            additive = tf.gather(table, tf.cast(mask, tf.int32))
            attention_mask = tf.reshape(additive, [tf.shape(mask)[0], 1, 1, tf.shape(mask)[1]])
        return encoder_call(hidden_states, attention_mask, *args, **kwargs)

    main.call, encoder.call = call_main, call_encoder

    def undo():
        restore_call(encoder, previous_encoder)
        restore_call(main, previous_main)

    return undo


def embedding_lookups(model):
    """Trace the word-embedding lookup as TFLite's EMBEDDING_LOOKUP op instead of GATHER (undo callable).

    HF's embeddings layers look the tokens up with ``tf.gather(self.weight, input_ids)``, which the
    converter makes a GATHER; the LiteRT quantizer has no weight rule for GATHER, so the table (most of
    a small encoder's weights) would stay float. Here the embeddings layer's ``call`` looks the flattened
    ids up through a ``tf.function`` that implements ``"embedding_matmul"``, the composite the converter
    fuses into EMBEDDING_LOOKUP, whose table the quantizer stores in int4 or int8; the layer then adds
    the position (from the same ids, for RoBERTa and MPNet) and token-type embeddings as before. Same
    float function; the position and token-type tables stay GATHERs (small).

    Args:
        model: HF TF encoder whose main layer has ``.embeddings`` with a ``weight`` table (BERT,
            DistilBERT, RoBERTa, ELECTRA, MPNet).

    Raises:
        NotImplementedError: the model has no such embeddings layer.
    """
    prefix = getattr(model, "base_model_prefix", None)
    layer = getattr(getattr(model, prefix, None), "embeddings", None) if prefix else None
    table = getattr(layer, "weight", None)
    if layer is None or table is None or len(table.shape) != 2:
        raise NotImplementedError(f"{type(model).__name__}: no embeddings layer with a [vocab, hidden] weight "
                                  f"at .{prefix}.embeddings")
    previous, original = vars(layer).get("call"), layer.call
    signature = inspect.signature(original)

    @tf.function(experimental_implements="embedding_matmul", autograph=False, input_signature=[
        tf.TensorSpec(table.shape, table.dtype), tf.TensorSpec([None], tf.int32)])
    def lookup(params, ids):  # the converter replaces this body by EMBEDDING_LOOKUP(ids, params)
        return tf.gather(params, ids)

    def call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        arguments = bound.arguments
        input_ids = arguments.get("input_ids")
        if input_ids is None or arguments.get("inputs_embeds") is not None:
            return original(*args, **kwargs)
        input_ids = tf.cast(input_ids, tf.int32)
        if arguments.get("position_ids") is None and hasattr(layer, "create_position_ids_from_input_ids"):
            arguments["position_ids"] = layer.create_position_ids_from_input_ids(input_ids=input_ids)
        rows = lookup(tf.convert_to_tensor(table), tf.reshape(input_ids, [-1]))
        arguments["inputs_embeds"] = tf.reshape(rows, tf.concat([tf.shape(input_ids), tf.shape(table)[1:]], 0))
        arguments["input_ids"] = None
        return original(*bound.args, **bound.kwargs)

    layer.call = call

    def undo():
        restore_call(layer, previous)

    return undo


@contextlib.contextmanager
def quantization_friendly(model, attention_mask_floor: float | None = DEFAULT_ATTENTION_MASK_FLOOR,
                          explicit_layer_norm: bool = True, integer_only: bool = False):
    """Context manager: within it, ``model`` runs (and traces) as a quantization-friendly graph.

    Args:
        model: HF TF BERT-family model.
        attention_mask_floor: floor of the additive attention mask (None: leave it).
        explicit_layer_norm: rewrite LayerNorm without SQUARED_DIFFERENCE (see
            :func:`explicit_layer_norms`).
        integer_only: the graph the integer export quantizes: the mask as a GATHER
            (:func:`gathered_attention_mask`, needs ``attention_mask_floor``) and LayerNorm without ABS.
    """
    if integer_only and attention_mask_floor is None:
        raise ValueError("integer_only needs an attention_mask_floor: the gathered mask's padded value")
    undos = []
    try:
        if integer_only:
            undos.append(gathered_attention_mask(model, attention_mask_floor))
        elif attention_mask_floor is not None:
            undos.append(floor_attention_mask(model, attention_mask_floor))
        if explicit_layer_norm:
            undos.append(explicit_layer_norms(model, through_abs=not integer_only))
        yield model
    finally:
        for undo in reversed(undos):
            undo()
