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
- :func:`scale_outlier_channels` (``int8`` with the residual path in float) divides the few huge
  channels of every feed-forward output by a per-channel factor inside the Dense and multiplies them
  back after the residual add, so the Dense's int8 output step is set by ordinary channels (same
  float function; measured: the 50 %-pruned SST-2 MiniLM's int8 artifact went from -2.3 to +0.0
  points against Keras, agreement 0.950 -> 0.982; CoNLL-2003 entity F1 from -2.0 to -0.2).

Quantization-aware training (:func:`apply` / :func:`hooks` / :func:`strip` /
:func:`to_tflite_from_qat`) uses TFMOT's own pieces on the nested HF layers, since TFMOT's
``quantize_model`` refuses subclassed models:

- :func:`apply` replaces every encoder ``Dense`` (``models.encoder_dense_layers``; optionally the
  classifier too) by ``QuantizeWrapperV2(dense, config)`` where ``config`` is what TFMOT's
  ``Default8BitQuantizeRegistry`` gives a ``Dense``: a ``Default8BitQuantizeConfig`` with a symmetric
  narrow-range 8-bit ``LastValueQuantizer`` on the kernel and an asymmetric 8-bit
  ``MovingAverageQuantizer`` on the output. For a pruned model (``preserve_sparsity``) the config
  comes from TFMOT's ``Default8bitPrunePreserveQuantizeRegistry`` instead (the registry of
  ``Default8BitPrunePreserveQuantizeScheme``, i.e. PQAT): the kernel is multiplied by its zero mask
  before fake quantization, so pruned weights get no gradient and stay zero.
- The wrappers train under the Trainer's ``GradientTape`` in a ``tf.function`` like any layer; the
  output ranges (``post_activation_min/max``) follow an EMA of the batches, the kernel ranges the
  last value. :func:`hooks` keeps each wrapper's ``optimizer_step`` equal to the Trainer's step and
  reports the learned ranges. Pass ``calibration=`` data to :func:`apply` (see
  :func:`calibrate_ranges`): TFMOT's EMA starts at -6/6 with decay 0.999, too slow for short runs.
- :func:`strip` puts the plain ``Dense`` objects back, with their (fake-quant-trained) float weights
  (and, for PQAT, the zeros re-applied), so ``save_model`` writes a normal HF directory.
- :func:`to_tflite_from_qat` converts the *wrapped* model with the stock converter: the graph's
  FakeQuant ranges become the int8 parameters of the Dense kernels and outputs (measured: the
  artifact's FULLY_CONNECTED output scales equal the wrappers' learned ``(max - min) / 255``);
  representative data calibrates only what no wrapper covers (embeddings, attention matmuls,
  softmax, LayerNorm).

Example::

    from tfcompress import quantize
    from tfcompress.train import Trainer, TrainConfig

    quantize.apply(model, quantize.QATConfig(), calibration=train)   # train: EncodedData
    Trainer(model, "sequence", TrainConfig(epochs=1, learning_rate=2e-5), "runs/qat",
            hooks=quantize.hooks()).fit(train, dev)
    quantize.to_tflite_from_qat(model, seq_length=64, representative=train,
                                output_path="runs/export/qat-int8.tflite")
    quantize.strip(model)   # the float model with the QAT-trained weights

Caveats:
    * Kernels are quantized per tensor. TFMOT's Dense config has no per-axis option, and a per-axis
      ``LastValueQuantizer`` on a Dense kernel trains but the TFLite converter (TF 2.21) rejects it
      ("'tfl.transpose' op has mismatched quantized axes"). Post-training int8
      (:mod:`tfcompress.export`) uses per-channel FULLY_CONNECTED weights.
    * While wrapped, ``dense.kernel`` is TFMOT's fake-quantized tensor of the last trace, not the
      variable: read :func:`kernel_variable` (or :func:`strip` first).
    * Only ``Dense`` layers are wrapped; the attention matmuls, softmax, GELU and LayerNorm get their
      int8 ranges from post-training calibration at conversion, not from training.

Caveat: DistilBERT subtracts ``1e30 * (1 - mask)`` inside each attention layer, not through a
shared extended mask; :func:`quantization_friendly` raises ``NotImplementedError`` for it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass

import numpy as np

from tfcompress._compat import tf, keras  # noqa: F401
from tfcompress.train import Hook
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


DEFAULT_OUTLIER_PERCENTILE = 90.0
_OUTLIER_CLASSES: dict = {}


def ffn_output_blocks(model) -> list:
    """``[(path, module)]`` of every feed-forward output block ``LayerNorm(dense(h) + input_tensor)``
    (the ``bert_output`` of each BERT/RoBERTa/ELECTRA layer); ``[]`` for architectures without them
    (DistilBERT)."""
    try:
        encoder = _encoder_of(model)
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
            _restore_call(dense, instance_call)
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
            _restore_call(block, instance_call)
            if hasattr(block, "_tfcompress_channel_scale"):
                delattr(block, "_tfcompress_channel_scale")

    undo.scaled = scaled
    if scaled:
        log.info("outlier channel scaling: %d feed-forward outputs, channels above their p%g max "
                 "scaled down (%s)", len(scaled), percentile,
                 "; ".join(f"{path}: {count} ({maxima_text[path]})" for path, count in scaled.items()))
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


# --------------------------------------------------------------------------------------------------
# Quantization-aware training (TFMOT wrappers on the nested Dense layers)
# --------------------------------------------------------------------------------------------------

def _tfmot():
    """TFMOT's QAT modules (imported lazily: the mask/LayerNorm helpers above do not need TFMOT)."""
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry)
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)
    return quantize_wrapper, default_8bit_quantize_registry, prune_preserve_quantize_registry


def _wrapper_class():
    return _tfmot()[0].QuantizeWrapperV2


# A trained dense kernel has no exact zeros; a pruned one (prune.strip) has >= its sparsity. The
# same 1 % rule as prune.sparsity_report decides which kernels count as pruned.
PRUNED_ZERO_FRACTION = 0.01


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

    Raises:
        ValueError: naming the field and the bad value (on construction, :meth:`validate`).
    """

    preserve_sparsity: bool | None = None
    include_classifier: bool = False
    include: str | None = None
    exclude: str | None = None
    calibration_examples: int = 64

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str):
            raise ValueError(f"qat.{name}={getattr(self, name)!r}: {why}")

        if self.preserve_sparsity is not None and not isinstance(self.preserve_sparsity, bool):
            bad("preserve_sparsity", "must be True, False or None (decide per layer from its zeros)")
        if not isinstance(self.include_classifier, bool):
            bad("include_classifier", "must be True or False")
        if (isinstance(self.calibration_examples, bool) or not isinstance(self.calibration_examples, int)
                or self.calibration_examples < 1):
            bad("calibration_examples", "must be an integer >= 1")
        for name in ("include", "exclude"):
            pattern = getattr(self, name)
            if pattern is not None:
                if not isinstance(pattern, str) or not pattern:
                    bad(name, "must be a non-empty regular expression or None")
                try:
                    re.compile(pattern)
                except re.error as error:
                    bad(name, f"is not a valid regular expression ({error})")


def config_from_dict(values: dict) -> QATConfig:
    """A QATConfig from a dict, naming any unknown field."""
    known = {f.name for f in dataclasses.fields(QATConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown qat config field(s) {unknown}; known: {sorted(known)}")
    return QATConfig(**values)


def _wrapper_refs(model) -> list:
    from tfcompress.models import find_layers

    return find_layers(model, kinds=(_wrapper_class(),))


def _is_pruned(kernel) -> bool:
    values = kernel.numpy()
    return values.size > 0 and (values.size - np.count_nonzero(values)) / values.size >= PRUNED_ZERO_FRACTION


def _select(model, config: QATConfig) -> list:
    from tfcompress.models import find_layers, select_dense_layers

    wrapped = _wrapper_refs(model)
    if wrapped:
        raise ValueError(f"model already holds {len(wrapped)} QAT wrappers (e.g. {wrapped[0].path}); "
                         "call quantize.strip(model) before applying QAT again")
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    pruning = find_layers(model, kinds=(PruneLowMagnitude,))
    if pruning:
        raise ValueError(f"model holds {len(pruning)} pruning wrappers (e.g. {pruning[0].path}); call "
                         "prune.strip(model) first (QAT wraps plain Dense layers; the stripped zeros are "
                         "kept by preserve_sparsity)")
    return select_dense_layers(model, config.include, config.exclude, config.include_classifier, section="qat")


def _quantize_config_for(layer, preserve: bool):
    """TFMOT's own 8-bit QuantizeConfig for ``layer`` (prune-preserving when ``preserve``)."""
    _, default_registry, prune_preserve = _tfmot()
    if preserve:
        # What Default8BitPrunePreserveQuantizeScheme's registry returns: the default Dense config
        # with PrunePreserveDefault8BitWeightsQuantizer (kernel * mask, then fake quant).
        return prune_preserve.Default8bitPrunePreserveQuantizeRegistry().get_quantize_config(layer)
    return default_registry.Default8BitQuantizeRegistry().get_quantize_config(layer)


def apply(model, config: QATConfig | None = None, calibration=None):
    """Wrap the selected nested ``Dense`` layers of ``model`` in TFMOT ``QuantizeWrapperV2``, in place.

    Each wrapper gets the QuantizeConfig TFMOT's 8-bit registry assigns to a ``Dense`` (or its
    prune-preserving variant, see :class:`QATConfig`). The wrappers are built by one inference call on
    ``model.dummy_inputs`` so their range variables exist before the Trainer builds its optimizer and
    checkpoints (the kernel ranges are initialised from that call; the output ranges start at TFMOT's
    initial values -6/6 and follow the training batches).

    Args:
        model (transformers.TFPreTrainedModel): a built HF TF BERT-family model, plain or
            ``prune.strip``-ed (never with pruning wrappers still on).
        config (QATConfig | None): default ``QATConfig()``.
        calibration: optional ``EncodedData`` (training split) or iterable of feature dicts; when
            given, :func:`calibrate_ranges` starts the output ranges at the data's instead of -6/6
            (``config.calibration_examples`` examples). Recommended for short QAT runs.

    Returns:
        The same ``model`` object, wrapped.

    Raises:
        ValueError: already wrapped, pruning wrappers present, or a regex selecting nothing.
    """
    from tfcompress.models import replace_layer

    config = QATConfig() if config is None else config
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    config.validate()
    wrapper_class = _wrapper_class()
    refs = _select(model, config)
    preserved = []
    for ref in refs:
        preserve = config.preserve_sparsity
        if preserve is None:
            preserve = _is_pruned(ref.layer.kernel)
        quantize_config = _quantize_config_for(ref.layer, preserve)
        if preserve:
            preserved.append(ref.path)
        replace_layer(ref, wrapper_class(ref.layer, quantize_config))
    dummy = getattr(model, "dummy_inputs", None)
    if dummy is not None:
        # Builds the wrappers eagerly: the prune-preserving quantizer takes its zero mask from the
        # kernel here (a constant, not a variable), so this must run on the pruned weights.
        model(dummy, training=False)
    if calibration is not None:
        calibrate_ranges(model, calibration, num_examples=config.calibration_examples)
    log.info("QAT: wrapped %d Dense layers in QuantizeWrapperV2 (TFMOT default 8-bit), %d of them "
             "prune-preserving: %s", len(refs), len(preserved), ", ".join(ref.path for ref in refs))
    return model


def _feature_batches(representative, num_examples: int, batch_size: int, seed: int = 0):
    """Batches of int32 feature dicts from an ``EncodedData`` (seeded sample) or an iterable of dicts."""
    if hasattr(representative, "padded_batch") and hasattr(representative, "__len__"):
        count = len(representative)
        order = np.random.default_rng(seed).permutation(count)[: min(num_examples, count)]
        for start in range(0, len(order), batch_size):
            features, _ = representative.padded_batch(np.sort(order[start:start + batch_size]))
            yield features
        return
    seen = 0
    for features in representative:
        yield features
        seen += len(next(iter(features.values())))
        if seen >= num_examples:
            return


def calibrate_ranges(model, representative, num_examples: int = 64, batch_size: int = 16) -> dict:
    """Start each wrapper's output range at the range the float Dense output takes on real data.

    TFMOT's ``MovingAverageQuantizer`` starts the output ranges at -6/6 and moves them by an EMA
    with decay 0.999 and no bias correction, so after ``n`` steps the range is still
    ``0.999**n`` of the initial guess (82 % after 200 steps, 37 % after 1,000): a short QAT run
    (one SST-2 epoch at batch 32 is ~2,100 steps) trains most of its steps against ranges that are
    not the data's. This sets ``post_activation_min/max`` to ``min(batch minima, 0)`` /
    ``max(batch maxima, 0)`` of the wrapped layers' float outputs over ``num_examples`` examples
    (what post-training calibration would measure); the EMA then refines them during training.
    Kernel ranges need no start: TFMOT's ``LastValueQuantizer`` sets them at every training step.

    Args:
        model: a model after :func:`apply`.
        representative: ``EncodedData`` (a seeded sample of it; draw it from the training set) or an
            iterable of feature dicts.
        num_examples: examples to run (eagerly, ``training=False``).
        batch_size: examples per forward pass.

    Returns:
        ``{layer path: (min, max)}`` as set.
    """
    refs = _wrapper_refs(model)
    if not refs:
        raise ValueError("calibrate_ranges: the model holds no QuantizeWrapperV2; call quantize.apply first")
    observed: dict[int, list[float]] = {}
    previous_calls = []
    for ref in refs:
        wrapper = ref.layer
        activations = getattr(wrapper, "_quantize_activations", [])
        activation = activations[0].activation if activations else wrapper.layer.activation
        original = wrapper.call
        observed[id(wrapper)] = [0.0, 0.0]  # TFLite needs 0 inside every range

        def call(inputs, *args, _wrapper=wrapper, _original=original, _activation=activation, **kwargs):
            inner = _wrapper.layer
            kernel = kernel_variable(_wrapper)
            outputs = tf.tensordot(inputs, kernel, [[inputs.shape.rank - 1], [0]])
            if getattr(inner, "use_bias", False) and inner.bias is not None:
                outputs = outputs + inner.bias
            outputs = _activation(outputs)
            bounds = observed[id(_wrapper)]
            bounds[0] = min(bounds[0], float(tf.reduce_min(outputs)))
            bounds[1] = max(bounds[1], float(tf.reduce_max(outputs)))
            return _original(inputs, *args, **kwargs)

        previous_calls.append((wrapper, vars(wrapper).get("call")))
        wrapper.call = call
    try:
        for features in _feature_batches(representative, num_examples, batch_size):
            model({k: tf.constant(v) for k, v in features.items()}, training=False)
    finally:
        for wrapper, previous in previous_calls:
            _restore_call(wrapper, previous)
    out = {}
    for ref in refs:
        ranges = _range_variables(ref.layer)
        low, high = observed[id(ref.layer)]
        if "post_activation_min" in ranges and high > low:
            ranges["post_activation_min"].assign(low)
            ranges["post_activation_max"].assign(high)
            out[ref.path] = (low, high)
    log.info("QAT: output ranges of %d wrapped layers calibrated on representative data", len(out))
    return out


def quantized_layers(model) -> list[str]:
    """Paths of the layers currently under a QAT wrapper."""
    return [ref.path for ref in _wrapper_refs(model)]


def kernel_variable(wrapper) -> tf.Variable:
    """The float kernel variable under a QAT wrapper.

    Read this, not ``wrapper.layer.kernel``: after the first call TFMOT's ``QuantizeWrapper`` has
    replaced the inner layer's ``kernel`` attribute by the fake-quantized tensor of the last trace
    (a symbolic tensor once the Trainer's ``tf.function`` has run), until :func:`strip`.
    """
    return wrapper._weight_vars[0][0]  # pylint: disable=protected-access


def _sparsity_masks(wrapper) -> list:
    """``(kernel variable, mask)`` of a prune-preserving wrapper's kernels (empty otherwise)."""
    out = []
    for weight, _, quantizer_vars in getattr(wrapper, "_weight_vars", []):
        mask = quantizer_vars.get("sparsity_mask") if isinstance(quantizer_vars, dict) else None
        if mask is not None:
            out.append((weight, mask))
    return out


def strip(model):
    """Remove every QAT wrapper, leaving the original ``Dense`` objects with their trained float weights.

    ``QuantizeWrapper.call`` replaces the inner layer's ``kernel`` attribute by the fake-quantized
    tensor and its ``activation`` by a ``QuantizeAwareActivation``; both are put back (the kernel
    variable and the original activation) so the Dense computes in float again. For
    prune-preserving wrappers the zero mask is applied to the kernel once more. TFMOT's PQAT
    quantizer computes ``kernel * mask``, so pruned weights get zero gradients and (with decoupled
    weight decay) stay exactly zero; the re-masking is a guard for optimizers that would move them
    anyway (e.g. coupled L2 with momentum from an earlier run), not something the tests need.
    Weight names are those the layers were built with, so ``save_model``/``load_model`` round-trip.

    Args:
        model: a model that went through :func:`apply` (one without wrappers is returned as is).

    Returns:
        The same ``model`` object, unwrapped.
    """
    from tfcompress.models import replace_layer

    refs = _wrapper_refs(model)
    for ref in refs:
        wrapper = ref.layer
        inner = wrapper.layer
        for weight, mask in _sparsity_masks(wrapper):
            weight.assign(weight * tf.cast(mask, weight.dtype))
        quantize_config = wrapper.quantize_config
        for attr, (weight, _, _) in zip(getattr(quantize_config, "weight_attrs", []), wrapper._weight_vars):
            setattr(inner, attr, weight)
        for attr, activation in zip(getattr(quantize_config, "activation_attrs", []),
                                    getattr(wrapper, "_quantize_activations", [])):
            setattr(inner, attr, activation.activation)
        replace_layer(ref, inner)
    if refs:
        log.info("stripped %d QAT wrappers", len(refs))
    return model


def _range_variables(wrapper) -> dict[str, tf.Variable]:
    """The wrapper's learned range variables by short name (``kernel_min``, ``post_activation_max``...)."""
    out = {}
    for variable in wrapper.non_trainable_weights:
        short = variable.name.split("/")[-1].split(":")[0]
        if short.endswith(("_min", "_max")):
            out[short] = variable
    return out


class QATHook(Hook):
    """Drives TFMOT QAT wrappers from the :class:`~tfcompress.train.Trainer`.

    The fake-quant ops run inside the wrappers' ``call(training=True)``, in the Trainer's compiled
    step; nothing else is needed to train. The hook checks on train begin that the model is wrapped
    and that every wrapper variable is tracked exactly once by the model (a variable reachable twice
    would be checkpointed and optimised twice), keeps each wrapper's ``optimizer_step`` equal to the
    Trainer's step (as ``model.fit`` would advance it), and reports the learned output ranges.
    """

    def __init__(self, config: QATConfig | None = None):
        self.config = config
        self.refs = []
        self.wrappers = []

    def on_train_begin(self, trainer) -> None:
        self.refs = _wrapper_refs(trainer.model)
        if not self.refs:
            raise ValueError("the QAT hook found no QuantizeWrapperV2 in the model: call "
                             "quantize.apply(model, config) before training")
        self.wrappers = [ref.layer for ref in self.refs]
        duplicated = _duplicated_variables(trainer.model)
        if duplicated:
            raise RuntimeError(f"variables tracked more than once by the model: {duplicated[:5]}")
        self._set_steps(trainer.global_step)
        log.info("QAT: %d wrapped layers", len(self.wrappers))

    def _set_steps(self, step: int) -> None:
        for wrapper in self.wrappers:
            wrapper.optimizer_step.assign(step)

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        self._set_steps(step + 1)

    def summaries(self, trainer, step: int) -> dict:
        """Each wrapper's output range width (``post_activation_max - post_activation_min``)."""
        out = {}
        for ref, wrapper in zip(self.refs, self.wrappers):
            ranges = _range_variables(wrapper)
            if "post_activation_min" in ranges and "post_activation_max" in ranges:
                width = float(ranges["post_activation_max"].numpy() - ranges["post_activation_min"].numpy())
                out[f"qat/output_range/{ref.path}"] = width
        return out


def _duplicated_variables(model) -> list[str]:
    seen, duplicated = {}, []
    for variable in model.variables:
        key = id(variable)
        if key in seen:
            duplicated.append(variable.name)
        seen[key] = variable
    return duplicated


def hooks(config: QATConfig | None = None) -> list:
    """The Trainer hooks for QAT: ``[QATHook(config)]``."""
    return [QATHook(config)]


def to_tflite_from_qat(model, seq_length: int = 128, representative=None, output_path=None,
                       num_calibration: int = 200, attention_mask_floor: float | None = -30.0,
                       io_type: str = "float", denylisted_ops=(), denylisted_nodes=()) -> bytes:
    """Convert a QAT-wrapped model to a full-integer int8 TFLite flatbuffer.

    The wrapped model is traced (through :func:`quantization_friendly`: floored mask, explicit
    LayerNorm) with the wrappers in inference mode, so the graph holds TFMOT's FakeQuant ops with
    the learned ranges on every wrapped Dense kernel and output. The stock converter
    (``Optimize.DEFAULT``, ``TFLITE_BUILTINS_INT8``) takes those ranges and calibrates the
    activations no wrapper covers (embeddings, attention matmuls, softmax, LayerNorm) on
    ``representative`` data.

    Args:
        model: a model after :func:`apply` (and training); not stripped.
        seq_length: fixed sequence length of the signature.
        representative: ``EncodedData`` from the training set (or an iterable of feature dicts), for
            the activations the wrappers do not cover. Required.
        output_path: if given, the bytes are written there atomically.
        num_calibration: representative examples used.
        attention_mask_floor: floor of the additive attention mask while tracing (None: keep).
        io_type: ``float`` or ``int8`` logits output.
        denylisted_ops / denylisted_nodes: TFLite ops / tensor names kept in float (selective
            quantization, e.g. ``export.LAYER_NORM_OPS``); the wrapped Dense layers stay int8 with
            their learned ranges. Default: full integer.

    Returns:
        The flatbuffer bytes.

    Raises:
        ValueError: the model holds no QAT wrappers, or no representative data.
    """
    from tfcompress import export
    from tfcompress.utils import atomic_write_bytes

    if not _wrapper_refs(model):
        raise ValueError("to_tflite_from_qat needs the wrapped QAT model (quantize.apply, trained); "
                         "this one holds no QuantizeWrapperV2. For a plain model use export.to_tflite")
    if representative is None:
        raise ValueError("to_tflite_from_qat: representative data is required to calibrate the "
                         "activations the QAT wrappers do not cover")
    config = export.ExportConfig(mode="int8", seq_length=seq_length, num_calibration=num_calibration,
                                 io_type=io_type, attention_mask_floor=attention_mask_floor,
                                 denylisted_ops=tuple(denylisted_ops),
                                 denylisted_nodes=tuple(denylisted_nodes))
    names = export.input_names_for(model)
    samples = export.representative_features(representative, names, seq_length, num_calibration,
                                              config.calibration_seed)
    concrete = export.serving_function(model, seq_length, names, friendly=True,
                                       attention_mask_floor=attention_mask_floor)
    converter = export._make_converter(concrete, model, config, samples)  # pylint: disable=protected-access
    if config.denylisted_ops or config.denylisted_nodes:
        content = export._selective_int8(converter, config)  # pylint: disable=protected-access
    else:
        content = export._convert(converter)  # pylint: disable=protected-access
    export.check_builtin_only(content)
    if output_path is not None:
        atomic_write_bytes(output_path, content)
        log.info("wrote %s (QAT int8, seq %d, %.1f MB)", output_path, seq_length, len(content) / 1e6)
    return content


def __getattr__(name):  # QuantizeWrapperV2 without importing TFMOT at module import
    if name == "QuantizeWrapperV2":
        return _wrapper_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["floor_attention_mask", "explicit_layer_norms", "quantization_friendly", "QATConfig",
           "config_from_dict", "apply", "strip", "hooks", "QATHook", "quantized_layers",
           "to_tflite_from_qat", "kernel_variable", "calibrate_ranges", "QuantizeWrapperV2"]
