"""TFLite export of Hugging Face TF encoders: fp32, fp16, dynamic-range, full-integer int8, int16x8.

Every artifact is converted by the stock ``tf.lite.TFLiteConverter`` from one concrete function with a
fixed ``[1, seq_length]`` int32 signature: inputs named ``input_ids``, ``attention_mask`` (and
``token_type_ids`` where the model uses them), one output named ``logits``, signature key
``serving_default``. Batch 1 and a fixed length are what mobile runtimes and NPUs want; the runtime
(:mod:`tfcompress.runtime`) pads or truncates to that length and loops over a batch.

Only TFLite builtin ops are allowed by default (no ``SELECT_TF_OPS``), so artifacts run in the plain
mobile runtime; a model that would need flex ops fails with :class:`FlexOpsError` naming them.

Quantized modes (``int8``, ``int16x8``) are traced through a *quantization-friendly graph*
(:func:`tfcompress.quantize.quantization_friendly`): the additive attention mask (-10000 in HF BERT)
is floored at ``attention_mask_floor`` so calibration does not see a 10,000-wide pre-softmax range.
``int8`` keeps chosen op types or tensors in float (``denylisted_ops`` / ``denylisted_nodes``, the
selective quantization of TFLite's QuantizationDebugger options). With the
residual path in float (MUL and ADD denylisted), ``outlier_percentile`` scales the few huge channels
of every feed-forward output down before conversion and back up after the residual add
(:func:`tfcompress.quantize.scale_outlier_channels`), so those Dense outputs get a usable int8 step.

Example:
    >>> from tfcompress import export
    >>> data = to_tflite(model, "int8", seq_length=64, representative=train_data,
    ...                         output_path="out/export/int8.tflite")
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

from tfcompress._compat import tf
from tfcompress.compress import qat
from tfcompress.config.constants import (
    DEFAULT_ATTENTION_MASK_FLOOR,
    EXPORT_MODES,
    IO_TYPES,
    LITERT_QUANTIZER_MODES,
    OUTPUT_NAME,
    QUANTIZED_ACTIVATION_MODES,
)
from tfcompress.evaluate.runtime import op_names
from tfcompress.export.rewrites import quantization_friendly, scale_outlier_channels
from tfcompress.models.facts import model_input_names
from tfcompress.utils import atomic_write_bytes, get_logger
from tfcompress.errors import ArtifactError

log = get_logger("export")


class FlexOpsError(ArtifactError, RuntimeError):
    """Conversion would need TensorFlow (flex) ops that the plain TFLite runtime does not have."""

@dataclasses.dataclass
class ExportConfig:
    """How to convert one artifact.

    Args:
        mode: one of ``fp32``, ``fp16``, ``dynamic``, ``int8``, ``int16x8``.
        seq_length: fixed sequence length of the signature (tokens, including specials).
        num_calibration: representative examples used to calibrate activation ranges (int modes).
        io_type: ``float`` or ``int8``: the type of the ``logits`` output for ``int8`` mode (int32
            token inputs stay int32 either way).
        quantization_friendly: trace quantized modes through
            :func:`tfcompress.quantize.quantization_friendly` (False: the stock converter path).
        attention_mask_floor: floor of the additive attention mask in that graph; ``None`` keeps
            the model's own constant.
        denylisted_ops: TFLite op names (e.g. ``"SOFTMAX"``) kept in float in ``int8`` mode.
        denylisted_nodes: output tensor names kept in float in ``int8`` mode.
        allow_flex_ops: allow ``SELECT_TF_OPS`` (artifacts then need the flex delegate).
        calibration_seed: seed of the sample of representative examples.
        outlier_percentile: ``int8`` mode with MUL and ADD kept in float (the default artifact):
            scale the outlier channels of every feed-forward output down to this percentile of the
            channel maxima before conversion and back up in float after the residual add
            (:func:`tfcompress.quantize.scale_outlier_channels`; same float function). ``None``: off.
    """
    mode: str = "int8"
    seq_length: int = 128
    num_calibration: int = 200
    io_type: str = "float"
    quantization_friendly: bool = True
    attention_mask_floor: float | None = DEFAULT_ATTENTION_MASK_FLOOR
    denylisted_ops: tuple[str, ...] = ()
    denylisted_nodes: tuple[str, ...] = ()
    allow_flex_ops: bool = False
    calibration_seed: int = 0
    outlier_percentile: float | None = None

    def __post_init__(self):
        if self.mode not in EXPORT_MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {EXPORT_MODES}")
        if self.mode in LITERT_QUANTIZER_MODES:
            maker = {"integer": "litert_quantizer.to_integer_tflite", "int4": "int4.to_int4_tflite"}[self.mode]
            raise ValueError(f"mode={self.mode!r} is made by the LiteRT quantizer: tfcompress.export.{maker}")
        if not isinstance(self.seq_length, int) or self.seq_length < 2:
            raise ValueError(f"seq_length={self.seq_length!r}: must be an int >= 2 ([CLS] and [SEP])")
        if self.num_calibration < 1:
            raise ValueError(f"num_calibration={self.num_calibration!r}: must be >= 1")
        if self.io_type not in IO_TYPES:
            raise ValueError(f"io_type={self.io_type!r} is not one of {IO_TYPES}")
        if self.io_type == "int8" and self.mode != "int8":
            raise ValueError(f"io_type='int8' needs mode='int8', got mode={self.mode!r}")
        if self.attention_mask_floor is not None and not self.attention_mask_floor < 0:
            raise ValueError(
                f"attention_mask_floor={self.attention_mask_floor!r}: must be negative (it replaces "
                "the -10000 added at padded positions) or None")
        self.denylisted_ops = tuple(self.denylisted_ops)
        self.denylisted_nodes = tuple(self.denylisted_nodes)
        if self.outlier_percentile is not None and not 0 < self.outlier_percentile <= 100:
            raise ValueError(f"outlier_percentile={self.outlier_percentile!r}: must be in (0, 100] or None")
        if (self.denylisted_ops or self.denylisted_nodes) and self.mode != "int8":
            raise ValueError(
                f"denylisted_ops/denylisted_nodes need mode='int8' (selective quantization), got "
                f"mode={self.mode!r}")


# --------------------------------------------------------------------------------------------
# Signature


def serving_function(model, seq_length: int, input_names: Sequence[str] | None = None,
                     friendly: bool = False,
                     attention_mask_floor: float | None = DEFAULT_ATTENTION_MASK_FLOOR,
                     integer_only: bool = False):
    """A concrete function ``{name: int32[1, seq_length]} -> {"logits": float32[1, ...]}``.

    Args:
        model: a built HF TF model (``TFBertForSequenceClassification``...).
        seq_length: fixed sequence length.
        input_names: signature inputs; default :func:`input_names_for`.
        friendly: trace through :func:`tfcompress.quantize.quantization_friendly`.
        attention_mask_floor: its mask floor (None: keep the model's constant).
        integer_only: with ``friendly``, the integer export's graph (gathered mask, LayerNorm without ABS).
    """
    names = list(input_names or model_input_names(model))
    specs = {name: tf.TensorSpec([1, seq_length], tf.int32, name=name) for name in names}

    @tf.function(input_signature=[specs], autograph=False)
    def serve(features):
        outputs = model({name: features[name] for name in names}, training=False)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return {OUTPUT_NAME: tf.identity(logits, name=OUTPUT_NAME)}

    guard = (quantization_friendly(model, attention_mask_floor, integer_only=integer_only) if friendly
             else contextlib.nullcontext())
    with guard:
        return serve.get_concrete_function()


# --------------------------------------------------------------------------------------------
# Representative data


def representative_features(representative, input_names: Sequence[str], seq_length: int,
                            num_calibration: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Up to ``num_calibration`` feature dicts of int32 ``[1, seq_length]`` arrays.

    Args:
        representative: an ``EncodedData`` (a seeded random sample of it is used: draw it from the
            task's *training* set), or an iterable of feature dicts (each ``[1, T]`` or ``[T]``).
        input_names: the signature's input names.
        seq_length: pad (with zeros, attention mask 0) or truncate to this length.
        num_calibration: how many examples at most.
        seed: sampling seed for ``EncodedData``.
    """
    samples: list[dict[str, np.ndarray]] = []
    if hasattr(representative, "features") and hasattr(representative, "__len__"):
        count = len(representative)
        rng = np.random.default_rng(seed)
        indices = np.sort(rng.permutation(count)[: min(num_calibration, count)])
        for index in indices:
            samples.append({name: np.asarray(representative.features[name][index])[None, :]
                            for name in input_names})
    else:
        for features in representative:
            samples.append({name: np.asarray(features[name]).reshape(1, -1) for name in input_names})
            if len(samples) >= num_calibration:
                break
    if not samples:
        raise ValueError("representative data is empty: int8/int16x8 calibration needs examples")
    return [fit_length(sample, seq_length) for sample in samples]


def fit_length(features: dict[str, np.ndarray], seq_length: int) -> dict[str, np.ndarray]:
    """Pad with zeros or truncate ``[B, T]`` int arrays to ``[B, seq_length]`` int32.

    Padding with 0 is safe for every input: padded positions get attention mask 0 so no real token
    attends to them, whatever their token id. Truncation cuts the trailing ``[SEP]`` of long inputs
    (as a tokenizer with ``max_length`` would not); use a ``seq_length`` covering the data's lengths.
    """
    out = {}
    for name, value in features.items():
        value = np.asarray(value)
        if value.ndim == 1:
            value = value[None, :]
        length = value.shape[1]
        if length >= seq_length:
            value = value[:, :seq_length]
        else:
            value = np.pad(value, ((0, 0), (0, seq_length - length)))
        out[name] = value.astype(np.int32)
    return out


# --------------------------------------------------------------------------------------------
# Conversion

_FLEX_PATTERN = re.compile(r"\btf\.([A-Z][A-Za-z0-9_]*)")


def make_converter(concrete_function, model, config: ExportConfig, samples):
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function], model)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if config.mode == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif config.mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif config.mode in QUANTIZED_ACTIVATION_MODES:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def dataset():
            for sample in samples:
                yield dict(sample)

        converter.representative_dataset = dataset
        if config.mode == "int8":
            # TFLITE_BUILTINS_INT8 alone: every op must have an int8 kernel (full integer).
            # Selective quantization adds float kernels for the denylisted ops afterwards.
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if config.io_type == "int8":
                converter.inference_output_type = tf.int8
        else:
            # int16x8 has no kernel for some ops (e.g. GATHER on int16); those stay float.
            ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                   tf.lite.OpsSet.TFLITE_BUILTINS]
    if config.allow_flex_ops:
        ops = ops + [tf.lite.OpsSet.SELECT_TF_OPS]
    converter.target_spec.supported_ops = ops
    return converter


def convert(converter) -> bytes:
    try:
        return converter.convert()
    except Exception as error:  # ConverterError; message lists unsupported tf.* ops
        message = str(error)
        if "flex" in message.lower() or "select_tf_ops" in message.lower() or "not supported" in message:
            names = sorted(set(_FLEX_PATTERN.findall(message)))
            raise FlexOpsError(
                f"conversion needs TensorFlow ops that TFLite builtins lack: {names or 'see below'}. "
                "Artifacts must run in the plain mobile runtime; rewrite those ops or pass "
                f"allow_flex_ops=True (needs the flex delegate).\n{message[-2000:]}") from error
        raise


def outlier_scaling_applies(config: ExportConfig) -> bool:
    """Whether :func:`to_tflite` scales outlier channels for ``config``: ``int8``, the quantization-
    friendly graph, ``outlier_percentile`` set, and MUL and ADD kept in float (the scale and unscale
    MULs sit on the float residual path; in an all-integer artifact they would be int8 themselves)."""
    return (config.mode == "int8" and config.quantization_friendly and config.outlier_percentile is not None
            and {"MUL", "ADD"} <= set(config.denylisted_ops))


@contextlib.contextmanager
def outliers_scaled(model, config: ExportConfig, samples):
    """Within it, ``model`` has its outlier channels scaled when ``config`` asks for it; restored after."""
    if not outlier_scaling_applies(config):
        yield
        return

    undo = scale_outlier_channels(model, samples, config.outlier_percentile)
    try:
        yield
    finally:
        undo()


def to_tflite(model, mode: str = "int8", seq_length: int = 128, representative=None,
              num_calibration: int = 200, io_type: str = "float",
              quantization_friendly: bool = True,
              attention_mask_floor: float | None = DEFAULT_ATTENTION_MASK_FLOOR,
              denylisted_ops: Iterable[str] = (), denylisted_nodes: Iterable[str] = (),
              allow_flex_ops: bool = False, input_names: Sequence[str] | None = None,
              output_path=None, config: ExportConfig | None = None,
              outlier_percentile: float | None = None) -> bytes:
    """Convert ``model`` to a TFLite flatbuffer and (optionally) write it atomically.

    Args:
        model: a built HF TF model; strip pruning/QAT wrappers first (``prune.strip``) unless it is
            a QAT model (see :func:`tfcompress.quantize.to_tflite_from_qat`).
        mode: ``fp32``, ``fp16`` (weights fp16, for the GPU delegate; CPU dequantizes them),
            ``dynamic`` (int8 weights, float activations), ``int8`` (full integer), ``int16x8``.
        seq_length: fixed sequence length of the signature.
        representative: calibration data for ``int8``/``int16x8`` (``EncodedData`` from the
            training set, or an iterable of feature dicts).
        num_calibration: number of calibration examples.
        io_type: ``float`` or ``int8`` logits output (``int8`` mode only).
        quantization_friendly: for ``int8``/``int16x8``, trace the quantization-friendly graph
            (floored mask, explicit LayerNorm). False reproduces the stock converter path.
        attention_mask_floor: the mask floor in that graph (None: keep the model's -10000).
        denylisted_ops / denylisted_nodes: kept in float in ``int8`` mode (selective quantization).
        allow_flex_ops: permit SELECT_TF_OPS.
        input_names: override the signature inputs.
        outlier_percentile: ``int8`` with MUL and ADD in ``denylisted_ops``: scale the feed-forward
            outputs' outlier channels (see :class:`ExportConfig`); the model is restored afterwards.
        output_path: if given, the bytes are also written there atomically.
        config: an :class:`ExportConfig`; when given it overrides the keyword arguments.

    Returns:
        The flatbuffer bytes.

    Raises:
        FlexOpsError: the model needs ops outside TFLite builtins and ``allow_flex_ops`` is False.
        ValueError: bad arguments (field named), or missing representative data.
    """
    if config is None:
        config = ExportConfig(mode=mode, seq_length=seq_length, num_calibration=num_calibration,
                              io_type=io_type, quantization_friendly=quantization_friendly,
                              attention_mask_floor=attention_mask_floor,
                              denylisted_ops=tuple(denylisted_ops),
                              denylisted_nodes=tuple(denylisted_nodes),
                              allow_flex_ops=allow_flex_ops, outlier_percentile=outlier_percentile)
    names = list(input_names or model_input_names(model))
    quantized_activations = config.mode in QUANTIZED_ACTIVATION_MODES
    samples = None
    if quantized_activations:
        if representative is None:
            raise ValueError(f"mode={config.mode!r} needs representative data to calibrate ranges")
        samples = representative_features(representative, names, config.seq_length,
                                           config.num_calibration, config.calibration_seed)
    with outliers_scaled(model, config, samples):  # the converter reads the variables at convert()
        concrete = serving_function(model, config.seq_length, names,
                                    friendly=quantized_activations and config.quantization_friendly,
                                    attention_mask_floor=config.attention_mask_floor)
        converter = make_converter(concrete, model, config, samples)
        if config.denylisted_ops or config.denylisted_nodes:
            content = _selective_int8(converter, config)
        else:
            content = convert(converter)
    check_builtin_only(content, allow_flex_ops=config.allow_flex_ops)
    if output_path is not None:
        atomic_write_bytes(output_path, content)
        log.info("wrote %s (%s, seq %d, %.1f MB)", output_path, config.mode, config.seq_length,
                 len(content) / 1e6)
    return content


def _selective_int8(converter, config: ExportConfig) -> bytes:
    """Calibrate, then quantize with TFLite's MLIR quantizer leaving denylisted ops in float.

    This is what ``QuantizationDebugger.get_nondebug_quantized_model`` does with
    ``QuantizationDebugOptions(denylisted_ops=..., denylisted_nodes=..., fully_quantize=True)``.
    """
    from tensorflow.lite.python import convert as lite_convert

    converter._experimental_calibrate_only = True  # pylint: disable=protected-access
    converter.experimental_mlir_quantizer = True
    # Float kernels must be allowed for the denylisted ops.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    calibrated = convert(converter)
    output_type = tf.int8 if config.io_type == "int8" else tf.float32
    return lite_convert.mlir_quantize(
        calibrated,
        disable_per_channel=False,
        fully_quantize=config.io_type == "int8",  # True also quantizes the output, whatever its data type
        input_data_type=tf.float32,
        output_data_type=output_type,
        denylisted_ops=list(config.denylisted_ops) or None,
        denylisted_nodes=list(config.denylisted_nodes) or None)


def check_builtin_only(content: bytes, allow_flex_ops: bool = False) -> None:
    """Raise :class:`FlexOpsError` if the flatbuffer uses flex (``Flex*``) or custom ops."""
    names = op_names(content)
    flex = sorted({name for name in names if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE")})
    if flex and not allow_flex_ops:
        raise FlexOpsError(f"artifact uses non-builtin ops {flex}; it would not run in the plain runtime")


def to_tflite_from_qat(model, seq_length: int = 128, representative=None, output_path=None,
                       num_calibration: int = 200, attention_mask_floor: float | None = DEFAULT_ATTENTION_MASK_FLOOR,
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
            quantization, e.g. ``constants.LAYER_NORM_OPS``); the wrapped Dense layers stay int8 with
            their learned ranges. Default: full integer.

    Returns:
        The flatbuffer bytes.

    Raises:
        ValueError: the model holds no QAT wrappers, or no representative data.
    """
    if not qat.quantized_layers(model):
        raise ValueError("to_tflite_from_qat needs the wrapped QAT model (quantize.apply, trained); "
                         "this one holds no QuantizeWrapperV2. For a plain model use to_tflite")
    if representative is None:
        raise ValueError("to_tflite_from_qat: representative data is required to calibrate the "
                         "activations the QAT wrappers do not cover")
    config = ExportConfig(mode="int8", seq_length=seq_length, num_calibration=num_calibration,
                                 io_type=io_type, attention_mask_floor=attention_mask_floor,
                                 denylisted_ops=tuple(denylisted_ops),
                                 denylisted_nodes=tuple(denylisted_nodes))
    names = model_input_names(model)
    samples = representative_features(representative, names, seq_length, num_calibration,
                                              config.calibration_seed)
    concrete = serving_function(model, seq_length, names, friendly=True,
                                       attention_mask_floor=attention_mask_floor)
    converter = make_converter(concrete, model, config, samples)  # pylint: disable=protected-access
    if config.denylisted_ops or config.denylisted_nodes:
        content = _selective_int8(converter, config)  # pylint: disable=protected-access
    else:
        content = convert(converter)  # pylint: disable=protected-access
    check_builtin_only(content)
    if output_path is not None:
        atomic_write_bytes(output_path, content)
        log.info("wrote %s (QAT int8, seq %d, %.1f MB)", output_path, seq_length, len(content) / 1e6)
    return content
