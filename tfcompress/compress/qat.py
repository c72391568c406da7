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

    from tfcompress.compress import qat
    from tfcompress.config import training
    from tfcompress.export import tflite
    from tfcompress.config.training import TrainConfig
    from tfcompress.train.trainer import Trainer

    qat.apply(model, training.QATConfig(), calibration=train)   # train: EncodedData
    Trainer(model, "sequence", TrainConfig(epochs=1, learning_rate=2e-5), "runs/qat",
            hooks=qat.hooks()).fit(train, dev)
    tflite.to_tflite_from_qat(model, seq_length=64, representative=train,
                                output_path="runs/export/qat-int8.tflite")
    qat.strip(model)   # the float model with the QAT-trained weights

Caveats:
    * Kernels are quantized per tensor. TFMOT's Dense config has no per-axis option, and a per-axis
      ``LastValueQuantizer`` on a Dense kernel trains but the TFLite converter (TF 2.21) rejects it
      ("'tfl.transpose' op has mismatched quantized axes"). Post-training int8
      (:mod:`tfcompress.export`) uses per-channel FULLY_CONNECTED weights.
    * While wrapped, ``dense.kernel`` is TFMOT's fake-quantized tensor of the last trace, not the
      variable: read :func:`kernel_variable` (or :func:`strip` first).
    * Only ``Dense`` layers are wrapped; the attention matmuls, softmax, GELU and LayerNorm get their
      int8 ranges from post-training calibration at conversion, not from training. For the ``integer``
      artifact, ``QATConfig(target="integer")`` also trains the LayerNorm, residual and softmax ranges
      (:mod:`tfcompress.compress.qat_integer`, :func:`learned_ranges`).

Caveat: DistilBERT subtracts ``1e30 * (1 - mask)`` inside each attention layer, not through a
shared extended mask; :func:`quantization_friendly` raises ``NotImplementedError`` for it.
"""
from __future__ import annotations

import numpy as np

from tfcompress._compat import tf
from tfcompress.compress import qat_integer
from tfcompress.config.constants import PRUNED_ZERO_FRACTION
from tfcompress.config.training import QATConfig
from tfcompress.export.rewrites import restore_call
from tfcompress.models.surgery import find_layers, replace_layer, select_dense_layers
from tfcompress.train.trainer import Hook
from tfcompress.utils import get_logger

log = get_logger("quantize")

# --------------------------------------------------------------------------------------------------
# Quantization-aware training (TFMOT wrappers on the nested Dense layers)
# --------------------------------------------------------------------------------------------------

def _tfmot():
    """TFMOT's QAT modules (imported lazily: the mask/LayerNorm helpers above do not need TFMOT)."""
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper
    from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
        prune_preserve_quantize_registry,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_registry
    return quantize_wrapper, default_8bit_quantize_registry, prune_preserve_quantize_registry


def _wrapper_class():
    return _tfmot()[0].QuantizeWrapperV2


def _wrapper_refs(model) -> list:

    return find_layers(model, kinds=(_wrapper_class(),))


def _is_pruned(kernel) -> bool:
    values = kernel.numpy()
    return values.size > 0 and (values.size - np.count_nonzero(values)) / values.size >= PRUNED_ZERO_FRACTION


def _select(model, config: QATConfig) -> list:

    wrapped = _wrapper_refs(model)
    if wrapped:
        raise ValueError(f"model already holds {len(wrapped)} QAT wrappers (e.g. {wrapped[0].path}); "
                         "call qat.strip(model) before applying QAT again")
    if qat_integer.points_layer(model) is not None:
        raise ValueError("model already holds integer QAT points; call qat.strip(model) before applying QAT again")
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
    config = QATConfig() if config is None else config
    if not isinstance(config, QATConfig):
        raise TypeError(f"config must be a QATConfig, got {type(config).__name__}")
    config.validate()
    wrapper_class = _wrapper_class()
    refs = _select(model, config)
    preserved = []
    try:  # a failure half-way leaves the model as it came: no wrappers, no integer points
        for ref in refs:
            preserve = config.preserve_sparsity
            if preserve is None:
                preserve = _is_pruned(ref.layer.kernel)
            quantize_config = _quantize_config_for(ref.layer, preserve)
            if preserve:
                preserved.append(ref.path)
            replace_layer(ref, wrapper_class(ref.layer, quantize_config))
        points = qat_integer.install(model) if config.target == "integer" else []
        dummy = getattr(model, "dummy_inputs", None)
        if dummy is not None:
            # Builds the wrappers eagerly: the prune-preserving quantizer takes its zero mask from the
            # kernel here (a constant, not a variable), so this must run on the pruned weights.
            model(dummy, training=False)
        if calibration is not None:
            calibrate_ranges(model, calibration, num_examples=config.calibration_examples)
    except BaseException:
        try:
            strip(model)
        except Exception:  # the original error is the one to see
            log.exception("QAT: could not undo a failed qat.apply; the model may hold QAT wrappers")
        raise
    log.info("QAT: wrapped %d Dense layers in QuantizeWrapperV2 (TFMOT default 8-bit), %d of them "
             "prune-preserving: %s", len(refs), len(preserved), ", ".join(ref.path for ref in refs))
    if points:
        log.info("QAT target integer: %d activation fake-quant points (LayerNorm inputs/outputs and softmax "
                 "inputs int16, attention probabilities int8)", len(points))
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

    With ``QATConfig(target="integer")`` the learned activation points start at the data's range too
    (symmetric: ``+-max(|min|, |max|)``).

    Returns:
        ``{layer path or point: (min, max)}`` as set.
    """
    refs = _wrapper_refs(model)
    if not refs:
        raise ValueError("calibrate_ranges: the model holds no QuantizeWrapperV2; call qat.apply first")
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
        with qat_integer.observing(model) as points:  # the integer target's activation points, if any
            for features in _feature_batches(representative, num_examples, batch_size):
                model({k: tf.constant(v) for k, v in features.items()}, training=False)
    finally:
        for wrapper, previous in previous_calls:
            restore_call(wrapper, previous)
    out = {}
    for ref in refs:
        ranges = _range_variables(ref.layer)
        low, high = observed[id(ref.layer)]
        if "post_activation_min" in ranges and high > low:
            ranges["post_activation_min"].assign(low)
            ranges["post_activation_max"].assign(high)
            out[ref.path] = (low, high)
    log.info("QAT: output ranges of %d wrapped layers calibrated on representative data", len(out))
    if points:
        log.info("QAT: ranges of %d integer activation points calibrated", len(points))
    return {**out, **points}


def learned_ranges(model) -> dict[str, dict]:
    """The ranges the ``integer`` artifact takes from training (``QATConfig(target="integer")``), for
    :func:`tfcompress.compress.qat_integer.save_ranges`: every learned activation point and the Q/K/V
    Dense outputs (the attention matmuls' int8 inputs). ``{}`` for a model without integer points."""
    if qat_integer.points_layer(model) is None:
        return {}
    dense = {}
    for ref in _wrapper_refs(model):
        ranges = _range_variables(ref.layer)
        if "post_activation_min" in ranges:
            dense[ref.path] = (float(ranges["post_activation_min"].numpy()),
                               float(ranges["post_activation_max"].numpy()))
    return qat_integer.learned_ranges(model, dense)


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
    The integer target's activation points go too, and the LayerNorm, self-attention, encoder and main
    layer calls are the model's own again (:func:`tfcompress.compress.qat_integer.remove`); read
    :func:`learned_ranges` before stripping.

    Args:
        model: a model that went through :func:`apply` (one without wrappers is returned as is).

    Returns:
        The same ``model`` object, unwrapped.
    """
    refs = _wrapper_refs(model)
    for ref in refs:
        wrapper = ref.layer
        inner = wrapper.layer
        if not hasattr(wrapper, "_weight_vars"):  # never built (apply failed before its first call)
            replace_layer(ref, inner)
            continue
        for weight, mask in _sparsity_masks(wrapper):
            weight.assign(weight * tf.cast(mask, weight.dtype))
        quantize_config = wrapper.quantize_config
        for attr, (weight, _, _) in zip(getattr(quantize_config, "weight_attrs", []), wrapper._weight_vars):
            setattr(inner, attr, weight)
        for attr, activation in zip(getattr(quantize_config, "activation_attrs", []),
                                    getattr(wrapper, "_quantize_activations", [])):
            setattr(inner, attr, activation.activation)
        replace_layer(ref, inner)
    points = qat_integer.remove(model)
    if refs or points:
        log.info("stripped %d QAT wrappers and %d integer activation points", len(refs), points)
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
                             "qat.apply(model, config) before training")
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
        """Each wrapper's output range width (``post_activation_max - post_activation_min``) and, for the
        integer target, each learned activation point's half-width (``qat/integer_range/<point>``)."""
        out = {}
        for ref, wrapper in zip(self.refs, self.wrappers):
            ranges = _range_variables(wrapper)
            if "post_activation_min" in ranges and "post_activation_max" in ranges:
                width = float(ranges["post_activation_max"].numpy() - ranges["post_activation_min"].numpy())
                out[f"qat/output_range/{ref.path}"] = width
        out.update(qat_integer.summaries(trainer.model))
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

def __getattr__(name):  # QuantizeWrapperV2 without importing TFMOT at module import
    if name == "QuantizeWrapperV2":
        return _wrapper_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
