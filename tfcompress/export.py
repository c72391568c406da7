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
``int8`` can also keep chosen ops/nodes in float (``denylisted_ops`` / ``denylisted_nodes``, the
selective quantization of TFLite's QuantizationDebugger), see :func:`select_float_nodes`. With the
residual path in float (MUL and ADD denylisted), ``outlier_percentile`` scales the few huge channels
of every feed-forward output down before conversion and back up after the residual add
(:func:`tfcompress.quantize.scale_outlier_channels`), so those Dense outputs get a usable int8 step.

Example:
    >>> from tfcompress import export
    >>> data = export.to_tflite(model, "int8", seq_length=64, representative=train_data,
    ...                         output_path="out/export/int8.tflite")
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from tfcompress._compat import tf
from tfcompress.utils import atomic_write_bytes, get_logger

log = get_logger("export")

MODES = ("fp32", "fp16", "dynamic", "int8", "int16x8")
QUANTIZED_ACTIVATION_MODES = ("int8", "int16x8")
IO_TYPES = ("float", "int8")
SIGNATURE_KEY = "serving_default"
OUTPUT_NAME = "logits"
# Floor for the additive attention mask in quantized modes. HF BERT adds -10000 at padded keys; a
# masked key's weight after softmax is exp(floor - (max_score - score)) relative to the row's
# largest, so -30 leaves < 1e-13 per masked key (float outputs unchanged to ~1e-6) while the
# pre-softmax range calibration sees shrinks from ~10,000 to ~30 + the real score spread.
DEFAULT_ATTENTION_MASK_FLOOR = -30.0


# Ops of LayerNorm (as rewritten by quantize.explicit_layer_norms) and of the residual adds that
# feed it. Keeping these in float (``denylisted_ops=LAYER_NORM_OPS``) is what makes int8 MiniLM
# usable: the residual stream has outlier channels (range [-9, 222] after layer 0 of MiniLM-L6,
# step 0.9 in int8 for values that are mostly within +-2), and the LayerNorm variance/rsqrt chain
# loses 35-60 quantization steps per op (QuantizationDebugger, see issue 4 notes). With this list
# alone the matmuls (FULLY_CONNECTED, BATCH_MATMUL), SOFTMAX and GELU stay int8; the pipeline's
# default (ExportStageConfig.int8_float_ops) also keeps BATCH_MATMUL, SOFTMAX and GELU in float, for
# which XNNPACK has no int8 kernels (CPU latency; RESULTS.md "Session 10").
LAYER_NORM_OPS = ("MEAN", "RSQRT", "ABS", "SQUARED_DIFFERENCE", "SUB", "MUL", "ADD")


class FlexOpsError(RuntimeError):
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
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {MODES}")
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


def input_names_for(model) -> list[str]:
    """The model's input names, in signature order (``models.model_input_names``)."""
    from tfcompress.models import model_input_names

    return list(model_input_names(model))


def serving_function(model, seq_length: int, input_names: Sequence[str] | None = None,
                     friendly: bool = False,
                     attention_mask_floor: float | None = DEFAULT_ATTENTION_MASK_FLOOR):
    """A concrete function ``{name: int32[1, seq_length]} -> {"logits": float32[1, ...]}``.

    Args:
        model: a built HF TF model (``TFBertForSequenceClassification``...).
        seq_length: fixed sequence length.
        input_names: signature inputs; default :func:`input_names_for`.
        friendly: trace through :func:`tfcompress.quantize.quantization_friendly`.
        attention_mask_floor: its mask floor (None: keep the model's constant).
    """
    from tfcompress.quantize import quantization_friendly

    names = list(input_names or input_names_for(model))
    specs = {name: tf.TensorSpec([1, seq_length], tf.int32, name=name) for name in names}

    @tf.function(input_signature=[specs], autograph=False)
    def serve(features):
        outputs = model({name: features[name] for name in names}, training=False)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        return {OUTPUT_NAME: tf.identity(logits, name=OUTPUT_NAME)}

    guard = (quantization_friendly(model, attention_mask_floor) if friendly
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


def _make_converter(concrete_function, model, config: ExportConfig, samples):
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


def _convert(converter) -> bytes:
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
    names = list(input_names or input_names_for(model))
    quantized_activations = config.mode in QUANTIZED_ACTIVATION_MODES
    samples = None
    if quantized_activations:
        if representative is None:
            raise ValueError(f"mode={config.mode!r} needs representative data to calibrate ranges")
        samples = representative_features(representative, names, config.seq_length,
                                           config.num_calibration, config.calibration_seed)
    with _outliers_scaled(model, config, samples):  # the converter reads the variables at convert()
        concrete = serving_function(model, config.seq_length, names,
                                    friendly=quantized_activations and config.quantization_friendly,
                                    attention_mask_floor=config.attention_mask_floor)
        converter = _make_converter(concrete, model, config, samples)
        if config.denylisted_ops or config.denylisted_nodes:
            content = _selective_int8(converter, config)
        else:
            content = _convert(converter)
    check_builtin_only(content, allow_flex_ops=config.allow_flex_ops)
    if output_path is not None:
        atomic_write_bytes(output_path, content)
        log.info("wrote %s (%s, seq %d, %.1f MB)", output_path, config.mode, config.seq_length,
                 len(content) / 1e6)
    return content


def outlier_scaling_applies(config: ExportConfig) -> bool:
    """Whether :func:`to_tflite` scales outlier channels for ``config``: ``int8``, the quantization-
    friendly graph, ``outlier_percentile`` set, and MUL and ADD kept in float (the scale and unscale
    MULs sit on the float residual path; in an all-integer artifact they would be int8 themselves)."""
    return (config.mode == "int8" and config.quantization_friendly and config.outlier_percentile is not None
            and {"MUL", "ADD"} <= set(config.denylisted_ops))


@contextlib.contextmanager
def _outliers_scaled(model, config: ExportConfig, samples):
    """Within it, ``model`` has its outlier channels scaled when ``config`` asks for it; restored after."""
    if not outlier_scaling_applies(config):
        yield
        return
    from tfcompress.quantize import scale_outlier_channels

    undo = scale_outlier_channels(model, samples, config.outlier_percentile)
    try:
        yield
    finally:
        undo()


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
    calibrated = _convert(converter)
    output_type = tf.int8 if config.io_type == "int8" else tf.float32
    return lite_convert.mlir_quantize(
        calibrated,
        disable_per_channel=False,
        fully_quantize=True,
        input_data_type=tf.float32,
        output_data_type=output_type,
        denylisted_ops=list(config.denylisted_ops) or None,
        denylisted_nodes=list(config.denylisted_nodes) or None)


def check_builtin_only(content: bytes, allow_flex_ops: bool = False) -> None:
    """Raise :class:`FlexOpsError` if the flatbuffer uses flex (``Flex*``) or custom ops."""
    from tfcompress.runtime import op_names

    names = op_names(content)
    flex = sorted({name for name in names if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE")})
    if flex and not allow_flex_ops:
        raise FlexOpsError(f"artifact uses non-builtin ops {flex}; it would not run in the plain runtime")


# --------------------------------------------------------------------------------------------
# Selective quantization with TFLite's QuantizationDebugger


def layer_errors(model, seq_length: int, representative, num_calibration: int = 100,
                 num_debug: int = 50, friendly: bool = True, attention_mask_floor: float | None = DEFAULT_ATTENTION_MASK_FLOOR,
                 input_names: Sequence[str] | None = None) -> list[dict]:
    """Per-op quantization error of the full-int8 model, from ``tf.lite.experimental.QuantizationDebugger``.

    Each row: ``{"tensor", "op", "rmse_over_scale", "mean_squared_error", "scale", "range"}``,
    sorted worst first by ``rmse_over_scale`` (the error in units of the quantization step: 0.29
    is the ideal rounding error of a uniform quantizer, > 1 means clipping or a too-wide range).

    Args:
        model: built HF TF model.
        seq_length: fixed length.
        representative: calibration data (see :func:`representative_features`).
        num_calibration: examples to calibrate on.
        num_debug: examples to run the debug model on (the first ``num_debug`` of the sample).
        attention_mask_floor: as in :func:`to_tflite`.
    """
    names = list(input_names or input_names_for(model))
    config = ExportConfig(mode="int8", seq_length=seq_length, num_calibration=num_calibration,
                          attention_mask_floor=attention_mask_floor)
    samples = representative_features(representative, names, seq_length, num_calibration)
    concrete = serving_function(model, seq_length, names, friendly=friendly,
                                attention_mask_floor=attention_mask_floor)
    converter = _make_converter(concrete, model, config, samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    debug_samples = samples[:num_debug]
    order: list[str] = []

    def debug_dataset():
        for sample in debug_samples:
            yield [sample[name] for name in order]

    options = tf.lite.experimental.QuantizationDebugOptions(fully_quantize=True)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=debug_dataset, debug_options=options)
    # The debug interpreter's inputs are in tensor order; match them to signature names.
    for detail in debugger._quant_interpreter.get_input_details():  # pylint: disable=protected-access
        order.append(_match_input_name(detail["name"], names))
    debugger.run()
    interpreter = debugger._quant_interpreter  # pylint: disable=protected-access
    rows = []
    for verify_name, stats in debugger.layer_statistics.items():
        # Same lookups as QuantizationDebugger.layer_statistics_dump: the NumericVerify op's first
        # input is the quantized tensor; its defining op and quantization scale.
        tensor_name, _ = debugger._get_operand_name_and_index(verify_name)  # pylint: disable=protected-access
        tensor_index = debugger._numeric_verify_op_details[verify_name]["inputs"][0]  # pylint: disable=protected-access
        op_name = interpreter._get_op_details(debugger._defining_op[tensor_index])["op_name"]  # pylint: disable=protected-access
        details = interpreter._get_tensor_details(tensor_index, subgraph_index=0)  # pylint: disable=protected-access
        scale = float(details["quantization_parameters"]["scales"][0])
        zero_point = int(details["quantization_parameters"]["zero_points"][0])
        rmse = float(np.sqrt(stats["mean_squared_error"]))
        rows.append({
            "tensor": tensor_name,
            "op": op_name,
            "rmse_over_scale": rmse / scale if scale else float("inf"),
            "mean_squared_error": float(stats["mean_squared_error"]),
            "max_abs_error": float(stats["max_abs_error"]),
            "scale": scale,
            # The calibrated float range the int8 grid covers.
            "range": (scale * (-128 - zero_point), scale * (127 - zero_point)),
        })
    rows.sort(key=lambda row: -row["rmse_over_scale"])
    return rows


def _match_input_name(tensor_name: str, names: Sequence[str]) -> str:
    # Signature input tensors are named like "serving_default_input_ids:0".
    for name in sorted(names, key=len, reverse=True):
        if name in tensor_name:
            return name
    raise ValueError(f"cannot match model input tensor {tensor_name!r} to any of {list(names)}")


def select_float_nodes(rows: list[dict], threshold: float = 1.0, max_nodes: int | None = None) -> list[str]:
    """Tensor names from :func:`layer_errors` whose error exceeds ``threshold`` quantization steps.

    These are the ``denylisted_nodes`` to keep in float; the caller re-measures the metric and
    lowers ``threshold`` until its accuracy budget holds.
    """
    chosen = [row["tensor"] for row in rows if row["rmse_over_scale"] > threshold]
    return chosen[:max_nodes] if max_nodes is not None else chosen


def selective_int8(model, seq_length: int, representative, score: Callable[[bytes], float], reference: float,
                   budget: float, denylisted_ops: Iterable[str] = (), thresholds: Sequence[float] = (8.0, 4.0, 2.0, 1.0),
                   num_calibration: int = 200, num_debug: int = 50, io_type: str = "float",
                   output_path=None, outlier_percentile: float | None = None) -> tuple[bytes, dict]:
    """An ``int8`` artifact with the fewest float tensors that keeps the metric within ``budget``.

    TFLite's ``QuantizationDebugger`` measures every tensor's quantization error
    (:func:`layer_errors`); the artifact is converted with no extra float tensor first, then with the
    tensors above each error ``threshold`` (in quantization steps, worst first) kept in float, until
    ``reference - score(artifact) <= budget``. ``score`` should read a held-out slice (the eval split),
    not the test set the parity gate uses afterwards.

    Args:
        model, seq_length, representative, num_calibration, io_type: as for :func:`to_tflite`.
        score: flatbuffer bytes -> metric (same scale as ``reference``, e.g. accuracy in [0, 1]).
        reference: the Keras model's metric on the same examples.
        budget: allowed drop, in the metric's units (0.005 = half a point of accuracy).
        denylisted_ops: op types kept in float in every trial (``ExportStageConfig.int8_float_ops``).
        thresholds: decreasing error thresholds to try; the last trial is used if none meets the budget.
        num_debug: examples the debugger runs.
        outlier_percentile: as for :func:`to_tflite`; applied once, before the debugger ranks the
            tensors, so the ranking and every trial see the same scaled graph.

    Returns:
        (bytes, record): ``record`` holds ``float_nodes`` (tensor names kept in float), the
        ``threshold`` used, ``met`` and every trial's metric, the ten worst tensors by error among
        the candidates (tensors of ``denylisted_ops`` types are not candidates: they are float
        already) and ``skipped_float_op_tensors``, how many were left out for that reason.
    """
    config = ExportConfig(mode="int8", seq_length=seq_length, num_calibration=num_calibration,
                          denylisted_ops=tuple(denylisted_ops), outlier_percentile=outlier_percentile)
    samples = representative_features(representative, input_names_for(model), seq_length, num_calibration,
                                       config.calibration_seed) if outlier_scaling_applies(config) else None
    with _outliers_scaled(model, config, samples):  # the ranking and every trial see the scaled graph
        all_rows = layer_errors(model, seq_length, representative, num_calibration=num_calibration, num_debug=num_debug)
        # The debugger quantizes every op; tensors of the op types kept in float anyway are not candidates
        # (on MiniLM the LayerNorm ops top the ranking, and keeping them "in float" again changed nothing).
        denied = set(denylisted_ops)
        rows = [row for row in all_rows if row["op"] not in denied]
        trials, content, nodes = [], b"", []
        for threshold in (None, *thresholds):
            candidate = [] if threshold is None else select_float_nodes(rows, threshold)
            if trials and candidate == nodes:
                continue
            nodes = candidate
            content = to_tflite(model, "int8", seq_length=seq_length, representative=representative,
                                num_calibration=num_calibration, io_type=io_type, denylisted_ops=denylisted_ops,
                                denylisted_nodes=nodes)
            value = float(score(content))
            trials.append({"threshold": threshold, "float_nodes": len(nodes), "metric": value})
            log.info("selective int8: %d float tensors (error > %s steps): metric %.4f vs Keras %.4f", len(nodes),
                     threshold, value, reference)
            if reference - value <= budget + 1e-9:  # 0.935 - 0.930 is 0.00500000000000006
                break
        if output_path is not None:
            atomic_write_bytes(output_path, content)
        worst = [{"tensor": row["tensor"], "op": row["op"], "rmse_over_scale": round(row["rmse_over_scale"], 3)}
                 for row in rows[:10]]
        record = {"float_nodes": nodes, "threshold": trials[-1]["threshold"], "met": reference - trials[-1]["metric"] <= budget + 1e-9,
                  "reference": reference, "budget": budget, "trials": trials, "worst_tensors": worst,
                  "skipped_float_op_tensors": len(all_rows) - len(rows)}
        return content, record


__all__ = [
    "MODES", "ExportConfig", "FlexOpsError", "to_tflite", "serving_function", "representative_features",
    "fit_length", "check_builtin_only", "layer_errors", "select_float_nodes", "selective_int8",
    "DEFAULT_ATTENTION_MASK_FLOOR", "LAYER_NORM_OPS",
]


# --------------------------------------------------------------------------------------------
# Release bundle for mobile apps


class RegressedArtifactError(RuntimeError):
    """The artifact failed the parity gate and ``allow_regression`` was not given."""


def _tokenizer_settings(tokenizer, seq_length: int) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    lowercase = bool(getattr(tokenizer, "do_lower_case", False))
    strip_accents = None
    if backend is not None:
        import json as _json

        normalizer = _json.loads(backend.to_str()).get("normalizer") or {}
        lowercase = bool(normalizer.get("lowercase", lowercase))
        strip_accents = normalizer.get("strip_accents")
    special = {}
    for name in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            special[name] = {"token": token, "id": int(tokenizer.convert_tokens_to_ids(token))}
    return {
        "type": "wordpiece",
        "lowercase": lowercase,
        # BERT's normalizer strips accents when lower-casing unless told otherwise.
        "strip_accents": lowercase if strip_accents is None else bool(strip_accents),
        "continuing_subword_prefix": "##",
        "max_input_chars_per_word": 100,
        "max_length": int(seq_length),
        "padding": "right, to max_length, with pad_token id and attention_mask 0",
        "special_tokens": special,
    }


def release_bundle(artifact_path, release_dir, tokenizer, label_names: Sequence[str], record: dict | None = None,
                   allow_regression: bool = False) -> Path:
    """Write ``release_dir`` (e.g. ``OUTPUT/release/int8``) for a mobile app, atomically.

    Contents: ``model.tflite``, ``vocab.txt``, ``tokenizer.json`` (tfcompress's own small settings
    file: lower-casing, max length, special-token ids), ``labels.txt`` (one per line, index order)
    and ``manifest.json`` (input/output names, dtypes, shapes, int8 scale/zero point of quantized
    I/O, metrics and sizes from ``record``).

    Args:
        artifact_path: the ``.tflite`` file.
        release_dir: the bundle directory (replaced as a whole).
        tokenizer: the model's (WordPiece) tokenizer; its vocabulary is written in id order.
        label_names: class names in logit order.
        record: the artifact record from :func:`tfcompress.runtime.artifact_record` (optional).
        allow_regression: release even if ``record["passed"]`` is False.

    Raises:
        RegressedArtifactError: the record failed the parity gate and ``allow_regression`` is False.
    """
    import shutil

    from tfcompress.runtime import TFLiteModel, sizes
    from tfcompress.utils import atomic_dir, atomic_write_json, atomic_write_text

    if record is not None and not record.get("passed", True) and not allow_regression:
        raise RegressedArtifactError(
            f"{record.get('name')}: metric {record.get('metrics', {}).get(record.get('primary_metric', ''), '?')} "
            f"is more than {record.get('accuracy_budget', '?')} pt below the Keras model's "
            f"{record.get('reference_metric', '?')}; not released (pass allow_regression to override)")
    artifact = TFLiteModel(artifact_path)
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise ValueError("tokenizer vocabulary ids are not contiguous from 0; cannot write vocab.txt")
    settings = _tokenizer_settings(tokenizer, artifact.seq_length)
    manifest = {
        "format": "tflite",
        "signature": SIGNATURE_KEY,
        "task": "token" if len(artifact.output_details["logits"]["shape"]) == 3 else "sequence",
        **artifact.io_details(),
        "labels": list(label_names),
        "tokenizer": "tokenizer.json",
        "vocab": "vocab.txt",
        **sizes(artifact_path),
    }
    if record is not None:
        for key in ("name", "quantization", "seq_length", "sparsity", "metrics", "agreement",
                    "latency_ms", "float_ops", "passed"):
            if key in record:
                manifest[key] = record[key]
    with atomic_dir(release_dir) as tmp:
        shutil.copyfile(artifact_path, Path(tmp) / "model.tflite")
        atomic_write_text(Path(tmp) / "vocab.txt", "\n".join(tokens) + "\n")
        atomic_write_text(Path(tmp) / "labels.txt", "\n".join(label_names) + "\n")
        atomic_write_json(Path(tmp) / "tokenizer.json", settings)
        atomic_write_json(Path(tmp) / "manifest.json", manifest)
    log.info("release bundle %s", release_dir)
    return Path(release_dir)


__all__ += ["release_bundle", "RegressedArtifactError"]
