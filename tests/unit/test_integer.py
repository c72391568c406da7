"""The integer-only check reads every op's tensor types from the flatbuffer, edges and casts included."""
from __future__ import annotations

import numpy as np
import pytest

from tfcompress._compat import keras, tf
from tfcompress.config import constants
from tfcompress.errors import ArtifactError
from tfcompress.evaluate import integer, runtime
from tfcompress.export import tflite
from test_export import SEQ_LENGTH, _features, _model_with_spread, _rows


def _dense_stack(inference_type=None) -> tuple[bytes, int]:
    """A float-input MLP (8 -> 16 -> 4) converted full-integer (QUANTIZE in, DEQUANTIZE out) or, with
    ``inference_type="dynamic"``, dynamic-range; returns the flatbuffer and its MAC count."""
    tf.random.set_seed(0)
    model = keras.Sequential([keras.layers.Input((8,), batch_size=1), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if inference_type != "dynamic":
        rng = np.random.default_rng(0)
        converter.representative_dataset = lambda: ([rng.normal(size=(1, 8)).astype(np.float32)] for _ in range(16))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert(), 8 * 16 + 16 * 4


def test_integer_artifact_with_float_edges_passes_and_counts_its_macs():
    content, expected_macs = _dense_stack()
    report = integer.integer_report(content)
    ops = [op["op"] for op in integer.read_graph(content)["ops"]]
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE", ops  # float I/O crosses only at the edges
    assert report["integer_only"], integer.format_offenders(report)
    assert report["macs"] == expected_macs
    assert report["precision"]["FULLY_CONNECTED"] == {"int8": {"ops": 2, "mac_share": 1.0}}


def test_dynamic_range_artifact_is_not_integer_only():
    content, _ = _dense_stack("dynamic")
    report = integer.integer_report(content)
    assert not report["integer_only"]
    assert {item["op"] for item in report["offenders"]} == {"FULLY_CONNECTED"}
    assert report["mac_share"]["float"] == 1.0


def test_float_island_int8_fails_on_the_mask_casts_that_float_ops_misses(tmp_path):
    path = tmp_path / "int8.tflite"
    tflite.to_tflite(_model_with_spread(), "int8", seq_length=SEQ_LENGTH, representative=_rows(_features(32, seed=2)),
                     denylisted_ops=constants.DEFAULT_INT8_FLOAT_OPS, output_path=path)
    report = integer.integer_report(path)
    assert not report["integer_only"]
    casts = [item for item in report["offenders"] if item["op"] == "CAST"]
    assert casts and all(any(out.endswith(":float32") for out in item["outputs"]) for item in casts)
    assert not any(op.startswith("CAST") for op in runtime.float_ops(path))  # the old check's blind spot
    offending = {item["op"] for item in report["offenders"]}
    assert {"SOFTMAX", "QUANTIZE", "DEQUANTIZE"} <= offending  # the float islands and their crossings
    assert set(report["precision"]["FULLY_CONNECTED"]) == {"int8"}
    assert set(report["precision"]["SOFTMAX"]) == {"float"}
    assert 0 < report["mac_share"]["float"] < report["mac_share"]["int8"]  # float attention matmuls
    fields = integer.record_fields(path, limit=3)
    assert fields["integer_only"] is False and len(fields["integer_check"]["offenders"]) == 3
    assert fields["integer_check"]["offender_count"] == len(report["offenders"])


def test_non_tflite_bytes_are_refused():
    with pytest.raises(ArtifactError, match="TFL3"):
        integer.integer_report(b"not a flatbuffer at all")
