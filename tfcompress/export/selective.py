"""Selective int8: TFLite's QuantizationDebugger ranks tensors by their error and keeps the worst in float.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from tfcompress._compat import tf
from tfcompress.config.constants import DEFAULT_ATTENTION_MASK_FLOOR
from tfcompress.export.tflite import (
    ExportConfig,
    make_converter,
    outlier_scaling_applies,
    outliers_scaled,
    representative_features,
    serving_function,
    to_tflite,
)
from tfcompress.models.facts import model_input_names
from tfcompress.utils import atomic_write_bytes, get_logger

log = get_logger("export")

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
    names = list(input_names or model_input_names(model))
    config = ExportConfig(mode="int8", seq_length=seq_length, num_calibration=num_calibration,
                          attention_mask_floor=attention_mask_floor)
    samples = representative_features(representative, names, seq_length, num_calibration)
    concrete = serving_function(model, seq_length, names, friendly=friendly,
                                attention_mask_floor=attention_mask_floor)
    converter = make_converter(concrete, model, config, samples)
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
    samples = representative_features(representative, model_input_names(model), seq_length, num_calibration,
                                       config.calibration_seed) if outlier_scaling_applies(config) else None
    with outliers_scaled(model, config, samples):  # the ranking and every trial see the scaled graph
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
