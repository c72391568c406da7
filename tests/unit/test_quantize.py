"""The quantization-friendly graph: same float function, ops the int8/int16 kernels can take."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import build_tiny_model
from tfcompress.export import rewrites
from tfcompress.export import tflite

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _padded_features():
    ids = np.array([[2, 7, 8, 9, 3, 0, 0, 0], [2, 10, 3, 0, 0, 0, 0, 0]], np.int32)
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32),
            "token_type_ids": np.zeros_like(ids)}


def test_explicit_layer_norms_keep_float_outputs_and_drop_squared_difference():
    model = build_tiny_model("sequence", "bert")
    features = _padded_features()
    before = model(features, training=False).logits.numpy()
    undo = rewrites.explicit_layer_norms(model)
    try:
        after = model(features, training=False).logits.numpy()
        concrete = tflite.serving_function(model, 8, ["input_ids", "attention_mask", "token_type_ids"])
        op_types = {op.type for op in concrete.graph.get_operations()}
    finally:
        undo()
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert "SquaredDifference" not in op_types and "Abs" in op_types
    concrete = tflite.serving_function(model, 8, ["input_ids", "attention_mask", "token_type_ids"])
    assert "SquaredDifference" in {op.type for op in concrete.graph.get_operations()}  # undone


def test_integer_graph_rewrites_keep_float_outputs_and_drop_the_ops_without_integer_rules():
    model = build_tiny_model("sequence", "bert")
    features = _padded_features()
    with rewrites.quantization_friendly(model):
        floored = model(features, training=False).logits.numpy()
    with rewrites.quantization_friendly(model, integer_only=True):
        gathered = model(features, training=False).logits.numpy()
    np.testing.assert_allclose(gathered, floored, atol=1e-5)  # same mask floor, same LayerNorm function
    np.testing.assert_allclose(gathered, model(features, training=False).logits.numpy(), atol=1e-4)
    integer_ops = [op.type for op in
                   tflite.serving_function(model, 8, NAMES, friendly=True, integer_only=True).graph.get_operations()]
    friendly_ops = [op.type for op in tflite.serving_function(model, 8, NAMES, friendly=True).graph.get_operations()]
    assert not {"SquaredDifference", "Abs"} & set(integer_ops), integer_ops
    assert integer_ops.count("GatherV2") == friendly_ops.count("GatherV2") + 1  # the mask's table lookup
    assert "Abs" in friendly_ops  # the int16x8 path is unchanged


def test_mask_floor_refuses_distilbert_and_positive_floor():
    with pytest.raises(NotImplementedError, match="DistilBERT"):
        rewrites.floor_attention_mask(build_tiny_model("sequence", "distilbert"), -30.0)
    with pytest.raises(ValueError, match="floor"):
        rewrites.floor_attention_mask(build_tiny_model("sequence", "bert"), 1.0)
