"""The ``integer`` export: a mixed int8/int16 integer-only artifact made by Google's LiteRT quantizer.

NPUs, DSPs and the Edge TPU run integer graphs only. The stock converter's full-int8 mode loses
6-12 points on these encoders and its ``int16x8`` mode is int16 everywhere (slow on CPU, and not
what int8 accelerators want). This export keeps the matmuls, nearly all the MACs, in int8 and gives
16 bits only to what needs them, by per-op rules of the LiteRT quantizer (PyPI ``ai-edge-quantizer``,
``pip install -r requirements-integer.txt``):

1. trace the model through the integer-friendly graph
   (:func:`tfcompress.export.rewrites.quantization_friendly` with ``integer_only=True``: the attention
   mask as a GATHER of ``[floor, 0]`` instead of a float CAST, LayerNorm's variance as a MUL of the
   centred values instead of SQUARED_DIFFERENCE or ABS, neither of which has an int16 rule);
2. convert it to a float ``.tflite`` (builtin ops only);
3. ``Quantizer.add_static_config``: every op int16 activations x int8 weights (the residual stream,
   LayerNorm, SOFTMAX, GELU), then ``int8_ops`` (default FULLY_CONNECTED and BATCH_MATMUL) int8 x int8;
   calibrate on the representative examples; quantize;
4. verify the result from its graph (:func:`tfcompress.evaluate.integer.integer_report`): any op left
   in float or computing on int32 activations fails the export naming the op and its tensors, and no
   file is written.

CPU latency of int16 kernels is poor (LiteRT's XNNPACK has none): that is not the target hardware.

Example:
    >>> content = to_integer_tflite(model, seq_length=64, representative=train,
    ...                             output_path="out/export/integer.tflite")
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tfcompress._compat import tf
from tfcompress.compress import qat_integer
from tfcompress.config.constants import DEFAULT_ATTENTION_MASK_FLOOR, DEFAULT_INTEGER_INT8_OPS
from tfcompress.errors import ArtifactError
from tfcompress.evaluate.integer import format_offenders, integer_report, read_graph
from tfcompress.export.rewrites import scale_outlier_channels
from tfcompress.export.smoothing import migrate_activation_scales
from tfcompress.export.tflite import convert, representative_features, serving_function
from tfcompress.models.facts import model_input_names
from tfcompress.utils import atomic_write_bytes, get_logger

log = get_logger("export")
SIGNATURE = "serving_default"


class IntegerExportError(ArtifactError, RuntimeError):
    """The quantized graph is not integer-only: an op the recipe cannot quantize (named in the message)."""


@dataclasses.dataclass
class IntegerRecipe:
    """Per-op rules for the LiteRT quantizer: int16 activations by default, int8 for ``int8_ops``.

    Args:
        int8_ops: TFLite op types quantized int8 activations x int8 weights (asymmetric activations,
            symmetric per-channel weights, as LiteRT's int8 kernels want).
        int8_regex: a regex over the op's output tensor names that the ``int8_ops`` rule applies to
            (``.*``: every such op; e.g. ``layer_\\._[1-5]/`` leaves the first layer's in int16).
        int16_regex: where every other op gets int16 activations x int8 weights.
        float_logits: leave the graph's output float (one DEQUANTIZE before it), so MediaPipe's
            TextClassifier and float-expecting apps read it; False: int16 logits (integer I/O).

    Example:
        >>> recipe = IntegerRecipe(int8_ops=("FULLY_CONNECTED",))  # attention matmuls in int16
        >>> to_integer_tflite(model, seq_length=64, representative=train, recipe=recipe)
    """
    int8_ops: tuple[str, ...] = DEFAULT_INTEGER_INT8_OPS
    int8_regex: str = ".*"
    int16_regex: str = ".*"
    float_logits: bool = True

    def apply(self, quantizer) -> None:
        """Add the rules to an ``ai_edge_quantizer.quantizer.Quantizer`` (later rules win where both match)."""
        from ai_edge_quantizer import algorithm_manager, qtyping  # optional dependency (requirements-integer.txt)

        operations = []
        for op in self.int8_ops:
            try:
                operations.append(qtyping.TFLOperationName[op])
            except KeyError:
                raise ValueError(f"int8_ops: {op!r} is not an op the LiteRT quantizer knows "
                                 "(e.g. FULLY_CONNECTED, BATCH_MATMUL)") from None
        quantizer.add_static_config(self.int16_regex, qtyping.TFLOperationName.ALL_SUPPORTED,
                                    activation_num_bits=16, weight_num_bits=8)
        for operation in operations:
            quantizer.add_static_config(self.int8_regex, operation, activation_num_bits=8, weight_num_bits=8)
        if self.float_logits:  # one DEQUANTIZE at the output: float logits, as the other modes give
            quantizer.update_quantization_recipe(".*", qtyping.TFLOperationName.OUTPUT,
                                                 algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)


def float_graph(model, seq_length: int, input_names: Sequence[str] | None = None,
                attention_mask_floor: float = DEFAULT_ATTENTION_MASK_FLOOR, points: dict | None = None) -> bytes:
    """The float ``.tflite`` of the integer-friendly graph (what the quantizer starts from).

    With ``points`` (a dict), the model is traced through the integer QAT's patched calls
    (:func:`tfcompress.compress.qat_integer.recording`, the same float function) and ``points`` fills
    with ``{point: graph op name}``."""
    names = list(input_names or model_input_names(model))
    if points is None:
        concrete = serving_function(model, seq_length, names, friendly=True,
                                    attention_mask_floor=attention_mask_floor, integer_only=True)
    else:
        with qat_integer.recording(model, attention_mask_floor) as recorded:
            concrete = serving_function(model, seq_length, names, friendly=False)
        points.update(recorded)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return convert(converter)


def learned_tensor_ranges(float_content: bytes, points: dict[str, str], ranges: dict[str, dict]) -> dict:
    """``{float .tflite tensor name: (min, max)}`` for every learned range (``qat_integer.read_ranges``).

    A point's tensor is the op output whose ``;``-joined name holds the point's graph op name
    (``points``, from :func:`float_graph`), first in the name where fused names share it. The RESHAPE
    and TRANSPOSE ops that produce it get the same range: the quantizer gives such a chain one scale,
    taken from its first tensor (for the attention's Q/K/V, the FULLY_CONNECTED output).

    Raises:
        IntegerExportError: a point that was not traced, or whose tensor the converter did not keep.
    """
    graph = read_graph(float_content)
    producers = {tensor["name"]: op for op in graph["ops"] for tensor in op["outputs"]}
    out = {}
    for point, learned in ranges.items():
        op_name = points.get(point)
        if op_name is None:
            raise IntegerExportError(f"learned range of {point!r}: the model has no such point in the traced graph "
                                     "(was it QAT-trained from another architecture or layer count?)")
        candidates = [name for name in producers if op_name in name.split(";")]
        first = [name for name in candidates if name.split(";")[0] == op_name]
        found = first if first else candidates
        if len(found) != 1:
            raise IntegerExportError(f"learned range of {point!r}: graph op {op_name!r} is "
                                     f"{'not kept' if not found else 'ambiguous'} in the float .tflite "
                                     f"({len(found)} tensors), cannot place its range")
        name = found[0]
        while True:
            out[name] = (float(learned["min"]), float(learned["max"]))
            op = producers.get(name)
            if op is None or op["op"] not in ("RESHAPE", "TRANSPOSE") or op["inputs"][0]["name"] not in producers:
                break
            name = op["inputs"][0]["name"]
    return out


def quantize(float_content: bytes, samples: list[dict], recipe: IntegerRecipe | None = None,
             num_threads: int = 2, learned: dict[str, tuple[float, float]] | None = None) -> bytes:
    """Calibrate ``float_content`` on ``samples`` (feature dicts) and quantize it by ``recipe``;
    raise :class:`IntegerExportError` naming the offending ops if the result is not integer-only.
    ``learned`` (``{tensor name: (min, max)}``, :func:`learned_tensor_ranges`) replaces those tensors'
    calibrated min/max (the quantizer's step is then ``max(|min|, |max|) / 32767`` for int16,
    ``(max - min) / 255`` for int8)."""
    from ai_edge_quantizer import quantizer as litert_quantizer  # optional dependency (requirements-integer.txt)

    engine = litert_quantizer.Quantizer(bytearray(float_content))
    (recipe or IntegerRecipe()).apply(engine)
    calibration = engine.calibrate({SIGNATURE: [dict(sample) for sample in samples]}, num_threads=num_threads)
    for name, (low, high) in (learned or {}).items():
        if name not in calibration:
            raise IntegerExportError(f"learned range for tensor {name!r}: the quantizer calibrated no such tensor")
        calibrated = calibration[name]
        calibration[name] = {**calibrated, "min": np.full_like(calibrated["min"], low),
                             "max": np.full_like(calibrated["max"], high)}
    content = bytes(engine.quantize(calibration, enable_progress_report=False).quantized_model)
    report = integer_report(content)
    if not report["integer_only"]:
        # The ops with no integer rule first; the QUANTIZE/DEQUANTIZE around them only follow from them.
        causes = sorted(report["offenders"], key=lambda item: item["op"] in ("QUANTIZE", "DEQUANTIZE"))
        names = sorted({item["op"] for item in causes if item["op"] not in ("QUANTIZE", "DEQUANTIZE")})
        raise IntegerExportError(
            f"the integer recipe left {len(causes)} ops outside int8/int16, {names or 'domain crossings'} "
            "among them (no integer rule or kernel; rewrite them before conversion, see "
            "tfcompress.export.rewrites):\n" + format_offenders({**report, "offenders": causes}))
    return content


def to_integer_tflite(model, seq_length: int = 128, representative=None, num_calibration: int = 200,
                      recipe: IntegerRecipe | None = None,
                      attention_mask_floor: float = DEFAULT_ATTENTION_MASK_FLOOR,
                      input_names: Sequence[str] | None = None, output_path=None,
                      calibration_seed: int = 0, outlier_percentile: float | None = None,
                      smooth_alpha: float | None = None, learned_ranges: dict | None = None) -> bytes:
    """Export ``model`` as a mixed int8/int16 integer-only ``.tflite`` (int32 token inputs, float logits
    through one DEQUANTIZE at the output), verified from its graph before anything is written.

    Args:
        model: a built HF TF BERT-family model (strip pruning wrappers first).
        seq_length: fixed sequence length of the signature.
        representative: calibration data (``EncodedData`` from the training set, or feature dicts).
        num_calibration: calibration examples.
        recipe: the per-op rules (default :class:`IntegerRecipe`: FULLY_CONNECTED and BATCH_MATMUL
            int8 x int8, everything else int16 x int8).
        attention_mask_floor: the gathered mask's value at padded positions.
        input_names: override the signature inputs.
        output_path: if given, the bytes are written there atomically (only once verified).
        calibration_seed: seed of the sample of representative examples.
        outlier_percentile: scale each feed-forward output's outlier channels down to this percentile
            of its channel maxima inside the Dense, and back up after the residual add
            (:func:`tfcompress.export.rewrites.scale_outlier_channels`, the same float function): the
            Dense's int8 output then gets a step set by ordinary channels, and the two per-channel MULs
            run on the int16 residual path. ``None``: off. The model is restored afterwards.
        smooth_alpha: migrate per-channel scale out of the LayerNorm outputs that feed the int8 Q/K/V and
            intermediate Dense inputs into those kernels, with this SmoothQuant strength
            (:func:`tfcompress.export.smoothing.migrate_activation_scales`, the same float function; the
            residual reads multiply back in int16). ``None``: off. The model is restored afterwards.
        learned_ranges: ranges learned by QAT for this graph (``QATConfig(target="integer")``,
            :func:`tfcompress.compress.qat_integer.read_ranges`): they replace calibration at their points;
            every other tensor keeps its calibrated range. Not with ``smooth_alpha`` (it rescales the
            LayerNorm outputs the ranges were learned on).

    Returns:
        The flatbuffer bytes.

    Raises:
        IntegerExportError: an op stays float (or int32) after quantization; nothing is written.
        ValueError: no representative data, smooth_alpha outside (0, 1] (from migrate_activation_scales), or
            smooth_alpha with learned_ranges.
    """
    if representative is None:
        raise ValueError("mode='integer' needs representative data to calibrate ranges")
    if learned_ranges and smooth_alpha is not None:
        raise ValueError("smooth_alpha rescales the LayerNorm outputs whose ranges QAT learned; export a "
                         "QAT-integer model without export.integer_smooth_alpha")
    names = list(input_names or model_input_names(model))
    samples = representative_features(representative, names, seq_length, num_calibration, calibration_seed)
    undos = []
    try:  # the converter reads the (scaled) variables at convert()
        if outlier_percentile:
            undos.append(scale_outlier_channels(model, samples, outlier_percentile))
        if smooth_alpha is not None:  # after outlier scaling: its residual MUL wraps that block class
            undos.append(migrate_activation_scales(model, samples, smooth_alpha))
        points = {} if learned_ranges else None
        float_content = float_graph(model, seq_length, names, attention_mask_floor, points=points)
    finally:
        for undo in reversed(undos):
            undo()
    learned = learned_tensor_ranges(float_content, points, learned_ranges) if learned_ranges else None
    content = quantize(float_content, samples, recipe, learned=learned)
    if learned:
        log.info("integer: %d tensors take their range from QAT (%d points), the rest from calibration",
                 len(learned), len(learned_ranges))
    if output_path is not None:
        atomic_write_bytes(output_path, content)
        log.info("wrote %s (integer: int8 %s, int16 elsewhere; seq %d, %.1f MB)", output_path,
                 "/".join((recipe or IntegerRecipe()).int8_ops), seq_length, len(content) / 1e6)
    return content
