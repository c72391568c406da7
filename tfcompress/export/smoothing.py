"""Scale migration (SmoothQuant) from LayerNorm outputs into the Dense kernels that read them: an
equivalence-preserving rewrite for integer graphs, :func:`migrate_activation_scales` (``export.integer_smooth_alpha``).
"""
from __future__ import annotations

import numpy as np

from tfcompress._compat import keras, tf
from tfcompress.export.rewrites import encoder_of, restore_call
from tfcompress.utils import get_logger

log = get_logger("quantize")


_SMOOTHED_CLASSES: dict = {}


def _smoothed_class(base):
    """A subclass of ``base`` (an HF ``*Output`` block, possibly already :func:`_outlier_class`'s) whose
    call multiplies its residual input by ``self._tfcompress_residual_scale`` before ``base``'s call:
    the residual read of a LayerNorm output that :func:`migrate_activation_scales` divided by that
    factor. A class, not an instance-level ``call``, for Keras' SavedModel export."""
    if base not in _SMOOTHED_CLASSES:
        def call(self, hidden_states, input_tensor, training=False):
            scale = tf.constant(self._tfcompress_residual_scale, dtype=input_tensor.dtype)
            return super(smoothed, self).call(hidden_states=hidden_states, input_tensor=input_tensor * scale,
                                              training=training)

        smoothed = type(f"Smoothed{base.__name__}", (base,), {"call": call})
        _SMOOTHED_CLASSES[base] = smoothed
    return _SMOOTHED_CLASSES[base]


def _is_dense(layer) -> bool:
    return isinstance(layer, keras.layers.Dense)  # not QAT-wrapped


def smoothing_sites(model) -> list:
    """``[(path, layer_norm, consumer_denses, residual_block)]``: every LayerNorm whose output feeds
    int8 Dense inputs of the next sub-block and, as the residual, one ``*Output`` block of it.

    HF BERT/RoBERTa/ELECTRA wiring (``TFBertLayer``): the embeddings' LayerNorm (layer ``i - 1``'s
    ``output.LayerNorm``) feeds layer ``i``'s ``attention.self`` query/key/value and
    ``attention.output``'s ``input_tensor``; ``attention.output.LayerNorm`` feeds ``intermediate.dense``
    and ``output``'s ``input_tensor``. The last layer's ``output.LayerNorm`` is the encoder's output (the
    head reads it) and is left alone. ``[]`` (logged) for other layouts: MPNet (its attention residual
    is inside ``TFMPNetAttention`` next to ``attn``), DistilBERT, QAT-wrapped layers, an ELECTRA
    embedding projection.
    """
    try:
        encoder = encoder_of(model)
    except NotImplementedError as error:
        log.info("scale migration: not applied to %s (%s)", type(model).__name__, error)
        return []
    main = getattr(model, model.base_model_prefix)
    layers = list(getattr(encoder, "layer", None) or [])

    def parts(layer):
        attention = getattr(layer, "attention", None)
        selfattn = getattr(attention, "self_attention", None)
        output = getattr(attention, "dense_output", None)
        intermediate = getattr(getattr(layer, "intermediate", None), "dense", None)
        ffn = getattr(layer, "bert_output", None)
        qkv = [getattr(selfattn, name, None) for name in ("query", "key", "value")]
        if not (all(_is_dense(dense) for dense in qkv + [intermediate])
                and all(isinstance(getattr(block, "LayerNorm", None), keras.layers.LayerNormalization)
                        for block in (output, ffn))):
            return None
        return qkv, output, intermediate, ffn

    found = [parts(layer) for layer in layers]
    if not layers or any(item is None for item in found):
        log.info("scale migration: %s's layers are not BERT-style (attention.self query/key/value, "
                 "attention.output, intermediate, output; e.g. MPNet, or QAT-wrapped), not applied",
                 type(model).__name__)
        return []
    sites = []
    embeddings = getattr(main, "embeddings", None)
    norm = getattr(embeddings, "LayerNorm", None)
    if isinstance(norm, keras.layers.LayerNormalization) and getattr(main, "embeddings_project", None) is None:
        sites.append(("embeddings", norm, found[0][0], found[0][1]))
    for index, (qkv, output, intermediate, ffn) in enumerate(found):
        sites.append((f"encoder/layer.{index}/attention", output.LayerNorm, [intermediate], ffn))
        if index + 1 < len(found):
            sites.append((f"encoder/layer.{index}/output", ffn.LayerNorm, found[index + 1][0], found[index + 1][1]))
    return [site for site in sites if site[1].scale and site[1].center]


def normalized_maxima(model, norms: dict, features, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-channel max |(x - mean) / std| (before gamma and beta) of the LayerNorms ``{path: layer}``
    over ``features`` (feature dicts)."""
    maxima: dict[str, np.ndarray] = {}
    previous = {}
    for path, norm in norms.items():
        previous[path] = (norm, vars(norm).get("call"))

        def call(inputs, *args, _path=path, _norm=norm, _original=norm.call, **kwargs):
            mean, variance = tf.nn.moments(inputs, axes=[-1], keepdims=True)
            normalized = (inputs - mean) * tf.math.rsqrt(variance + _norm.epsilon)
            current = tf.reduce_max(tf.reshape(tf.abs(normalized), [-1, inputs.shape[-1]]), axis=0).numpy()
            maxima[_path] = np.maximum(maxima.get(_path, current), current)
            return _original(inputs, *args, **kwargs)

        norm.call = call
    try:
        features = list(features)
        for start in range(0, len(features), batch_size):
            chunk = features[start:start + batch_size]
            model({name: np.concatenate([f[name] for f in chunk]) for name in chunk[0]}, training=False)
    finally:
        for norm, instance_call in previous.values():
            restore_call(norm, instance_call)
    return maxima


def migrate_activation_scales(model, features, alpha: float = 0.5):
    """Move per-channel scale from the LayerNorm outputs that feed int8 Dense inputs into those Dense
    kernels (SmoothQuant), the same float function (undo callable).

    An int8 tensor has one scale, set by its largest channels. The TFLite converter already folds
    LayerNorm's gamma and beta into the next FULLY_CONNECTED (Outlier Suppression's gamma migration,
    for free), so that int8 input is the normalized ``(x - mean) / std``, whose range is set by the
    residual stream's outlier channels. For each LayerNorm in :func:`smoothing_sites`, with ``x_j``
    the calibration max of that normalized channel ``j`` and ``w_j`` the max |gamma_j * weight| of row
    ``j`` over the Dense kernels reading it: ``s_j = x_j^alpha / w_j^(1 - alpha)``. Gamma and beta are
    divided by ``s`` (the LayerNorm's output is ``y / s``), the kernels' rows multiplied by it, and the
    ``*Output`` block that reads the same output as its residual multiplies it back by ``s`` (one
    per-channel MUL, int16 on the integer graph's residual path). Under :func:`explicit_layer_norms`
    the division by ``s`` happens before the rsqrt MUL (``(c / s) * rsqrt(var) * (gamma / s * s) +
    beta / s``), so the converter's gamma fold leaves the Dense an int8 input of ``(x - mean) / std / s``.

    Apply after :func:`scale_outlier_channels` (the residual MUL wraps its class) and undo before it.

    Args:
        model: a built HF TF BERT/RoBERTa/ELECTRA model (plain, not QAT-wrapped); others are left
            unchanged (logged).
        features: calibration feature dicts (the converter's representative data).
        alpha: migration strength in (0, 1]: 1 moves all of the activation's range into the weights.

    Returns:
        ``undo()``, restoring the weights and classes exactly; ``undo.migrated`` is ``{path: (max of the
        Dense's normalized input before, after)}``.

    Raises:
        ValueError: alpha outside (0, 1].
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha={alpha!r}: must be in (0, 1]")
    sites = smoothing_sites(model)
    maxima = normalized_maxima(model, {path: norm for path, norm, _, _ in sites}, features) if sites else {}
    saved, migrated = [], {}
    for path, norm, denses, block in sites:
        gamma = np.abs(norm.gamma.numpy())
        weight_max = gamma * np.max([np.abs(dense.kernel.numpy()).max(axis=1) for dense in denses], axis=0)
        activation_max = maxima[path]
        usable = (activation_max > 0) & (weight_max > 0)
        scale = np.ones_like(activation_max, dtype=np.float64)
        scale[usable] = activation_max[usable] ** alpha / weight_max[usable] ** (1 - alpha)
        scale = np.clip(scale, 1e-5, 1e5).astype(np.float32)
        variables = [norm.gamma, norm.beta] + [dense.kernel for dense in denses]
        saved.append((block, norm, type(block), vars(block).get("call"), [(v, v.numpy()) for v in variables]))
        norm.gamma.assign(norm.gamma.numpy() / scale)
        norm.beta.assign(norm.beta.numpy() / scale)
        for dense in denses:
            dense.kernel.assign(dense.kernel.numpy() * scale[:, None])
        block._tfcompress_residual_scale = scale
        norm._tfcompress_migrated_scale = scale
        vars(block).pop("call", None)  # an earlier SavedModel export's instance-level call would shadow the class'
        block.__class__ = _smoothed_class(type(block))
        migrated[path] = (float(activation_max.max()), float((activation_max / scale).max()))  # normalized input

    def undo():
        for block, norm, cls, instance_call, values in reversed(saved):
            for variable, value in values:
                variable.assign(value)
            block.__class__ = cls
            restore_call(block, instance_call)
            for layer, name in ((block, "_tfcompress_residual_scale"), (norm, "_tfcompress_migrated_scale")):
                if hasattr(layer, name):
                    delattr(layer, name)

    undo.migrated = migrated
    if migrated:
        log.info("scale migration (alpha %g): %d LayerNorm outputs, max |normalized Dense input| before -> after: %s", alpha,
                 len(migrated), "; ".join(f"{path} {a:.1f} -> {b:.2f}" for path, (a, b) in migrated.items()))
    return undo
