"""QAT with target ``integer``: fake quant on the integer export's int16/int8 activations, its ranges in the artifact."""
from __future__ import annotations

import numpy as np
import pytest

from tfcompress._compat import keras
from tfcompress.compress import qat, qat_integer
from tfcompress.config import training
from tfcompress.errors import ConfigError
from tfcompress.evaluate import integer
from tfcompress.export import litert_quantizer
from tfcompress.models import loading, surgery
from test_export import SEQ_LENGTH, _features, _model_with_spread, _rows
from test_qat import _logits, _train, sst_encoded  # noqa: F401  (fixture)

INTEGER = training.QATConfig(target="integer")


def _calibration():
    return _rows(_features(32, seed=2))


def _trained(model, encoded, folder, steps=4):
    """``model`` QAT-trained for ``steps`` steps with target integer; returns its learned ranges, stripped."""
    qat.apply(model, INTEGER, calibration=encoded)  # the training split, as the qat stage does
    _train(model, encoded, folder, steps, qat.hooks(INTEGER), learning_rate=1e-3)
    ranges = qat.learned_ranges(model)
    qat.strip(model)
    return ranges


def _traced(model):
    """The float ``.tflite`` the integer export quantizes and ``{point: graph op name}``; a point's tensor is
    the one whose name starts with its op name (what ``learned_tensor_ranges`` finds)."""
    points = {}
    return litert_quantizer.float_graph(model, SEQ_LENGTH, points=points), points


def test_integer_target_artifact_uses_the_learned_ranges(sst_encoded, tmp_path):
    model = _model_with_spread()
    ranges = _trained(model, sst_encoded, tmp_path / "qat")
    blocks = model.config.num_hidden_layers
    # per block: 2 LayerNorms x (input, output) + softmax input; + the embeddings' LayerNorm; + Q/K/V
    assert len(ranges) == blocks * 5 + 2 + blocks * 3, sorted(ranges)
    learned_path, plain_path = tmp_path / "learned.tflite", tmp_path / "plain.tflite"
    litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _calibration(), output_path=learned_path,
                                       learned_ranges=ranges)
    litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _calibration(), output_path=plain_path)

    report = integer.integer_report(learned_path)
    assert report["integer_only"], integer.format_offenders(report)
    for op in ("FULLY_CONNECTED", "BATCH_MATMUL"):
        assert set(report["precision"][op]) == {"int8"}, report["precision"][op]
    for op in ("ADD", "MEAN", "RSQRT", "SOFTMAX"):  # residual sums, LayerNorm, softmax
        assert set(report["precision"][op]) == {"int16"}, (op, report["precision"][op])

    content, points = _traced(model)
    placed = litert_quantizer.learned_tensor_ranges(content, points, ranges)
    tensors = {point: next(name for name in placed if name.split(";")[0] == points[point]) for point in ranges}
    learned_steps, plain_steps = integer.tensor_steps(learned_path), integer.tensor_steps(plain_path)
    differs = 0
    int16_points = [f"bert/encoder/layer.{i}/{block}/LayerNorm:{side}" for i in range(blocks)
                    for block in ("attention/dense_output", "bert_output") for side in ("input", "output")]
    int16_points += [f"bert/encoder/layer.{i}/attention/self_attention:softmax_input" for i in range(blocks)]
    for point in int16_points:
        bound = max(abs(ranges[point]["min"]), abs(ranges[point]["max"]))
        step = learned_steps[tensors[point]]
        np.testing.assert_allclose(step, bound / 32767, rtol=1e-5, err_msg=point)  # symmetric int16
        differs += abs(plain_steps[tensors[point]] - step) > 1e-3 * step
    assert differs > 0  # calibration alone gives other steps
    # the query's BATCH_MATMUL input: TRANSPOSE <- RESHAPE <- FULLY_CONNECTED, one range (the Dense wrapper's)
    query = "bert/encoder/layer.0/attention/self_attention/query"
    chain = list(litert_quantizer.learned_tensor_ranges(content, points, {query: ranges[query]}))
    low, high = ranges[query]["min"], ranges[query]["max"]
    assert len(chain) == 3
    np.testing.assert_allclose(learned_steps[chain[-1]], (max(high, 0) - min(low, 0)) / 255, rtol=1e-5)  # int8
    np.testing.assert_allclose(learned_steps[chain[0]], max(abs(low), abs(high)) / 32767, rtol=1e-5)  # int16
    # the probabilities' int8 step is fixed, the FixedQuantizer's: (high - low) / 255
    softmax = points["bert/encoder/layer.0/attention/self_attention:probabilities"]
    steps = [step for name, step in learned_steps.items() if name.split(";")[0].startswith(softmax)]
    low, high = qat_integer.PROBABILITY_RANGE
    assert any(abs(step - (high - low) / 255) < 1e-6 * step for step in steps), steps


def test_missing_point_fails_naming_it(tmp_path):
    model = _model_with_spread()
    ranges = {"bert/encoder/layer.7/bert_output/LayerNorm:input": {"min": -1.0, "max": 1.0}}
    with pytest.raises(litert_quantizer.IntegerExportError, match=r"layer\.7/bert_output/LayerNorm:input"):
        litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _calibration(), learned_ranges=ranges,
                                           output_path=tmp_path / "never.tflite")
    assert not (tmp_path / "never.tflite").exists()


def test_pruned_model_keeps_its_zeros_through_integer_qat_and_artifact(sst_encoded, tmp_path):
    model = _model_with_spread()
    for ref in surgery.encoder_dense_layers(model):  # a prune.strip-ed model: ~50 % exact zeros per kernel
        values = ref.layer.kernel.numpy()
        values[np.abs(values) < np.median(np.abs(values))] = 0.0
        ref.layer.kernel.assign(values)
    zeros = {ref.path: ref.layer.kernel.numpy() == 0 for ref in surgery.encoder_dense_layers(model)}
    kernels = {ref.path: ref.layer.kernel.numpy().copy() for ref in surgery.encoder_dense_layers(model)}
    ranges = _trained(model, sst_encoded, tmp_path / "qat")
    for ref in surgery.encoder_dense_layers(model):
        kernel = ref.layer.kernel.numpy()
        assert not np.allclose(kernel, kernels[ref.path]), ref.path  # trained
        assert (kernel[zeros[ref.path]] == 0).all(), ref.path
    path = tmp_path / "pruned.tflite"
    litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _calibration(), output_path=path, learned_ranges=ranges)
    stored = integer.weight_zeros(path)
    assert stored["zero_fraction"] >= 0.45, stored


def test_strip_restores_the_float_model_and_its_calls(sst_encoded, tmp_path):
    model = _model_with_spread()
    features = _features(8, seed=1)
    logits = _logits(model, features)
    names = sorted(v.name for v in model.weights)
    patched = [ref.layer for ref in surgery.find_layers(model, kinds=None)
               if isinstance(ref.layer, keras.layers.LayerNormalization) or ref.path.endswith("self_attention")]
    patched += [model.bert, model.bert.encoder]

    qat.apply(model, INTEGER, calibration=_calibration())
    assert len(qat_integer.quantizers(model)) == 14  # 5 LayerNorms x 2 + 2 attentions x 2
    assert all("call" in vars(layer) for layer in patched)
    assert not np.allclose(_logits(model, features), logits)  # the points quantize
    ids = [id(v) for v in model.variables]
    assert len(ids) == len(set(ids)) and len(ids) > len(names) + 12 * 4

    qat.strip(model)
    np.testing.assert_allclose(_logits(model, features), logits, atol=1e-6)
    assert not any("call" in vars(layer) for layer in patched)
    assert qat_integer.quantizers(model) == [] and sorted(v.name for v in model.weights) == names
    loading.save_model(model, None, tmp_path / "stripped")
    reloaded = loading.load_model(str(tmp_path / "stripped"), task="sequence")
    np.testing.assert_allclose(_logits(reloaded, features), logits, atol=1e-5)


def test_a_failing_calibration_leaves_the_model_as_it_came():
    model = _model_with_spread()
    features = _features(8, seed=1)
    logits = _logits(model, features)
    patched = [ref.layer for ref in surgery.find_layers(model, kinds=None)
               if isinstance(ref.layer, keras.layers.LayerNormalization)] + [model.bert.encoder]

    def broken():
        yield from _calibration()[:1]
        raise OSError("calibration file vanished")

    with pytest.raises(OSError, match="vanished"):
        qat.apply(model, INTEGER, calibration=broken())
    assert qat.quantized_layers(model) == [] and qat_integer.quantizers(model) == []
    assert not any("call" in vars(layer) for layer in patched)
    np.testing.assert_allclose(_logits(model, features), logits, atol=1e-6)
    qat.apply(model, INTEGER, calibration=_calibration())  # and it can be applied again
    assert len(qat_integer.quantizers(model)) == 14


def test_an_encoder_the_integer_points_do_not_know_fails_with_that_error_and_no_wrappers_left():
    from conftest import build_tiny_model

    model = build_tiny_model("sequence", "distilbert")
    with pytest.raises(NotImplementedError):
        qat.apply(model, INTEGER)
    assert qat.quantized_layers(model) == [] and qat_integer.quantizers(model) == []


def test_hook_reports_the_learned_ranges(sst_encoded, tmp_path):
    model = _model_with_spread()
    qat.apply(model, INTEGER, calibration=_calibration())
    hook = qat.hooks(INTEGER)[0]
    trainer = _train(model, sst_encoded, tmp_path / "qat", 1, [hook])
    scalars = hook.summaries(trainer, 1)
    points = [name for name in scalars if name.startswith("qat/integer_range/")]
    assert len(points) == 12  # the learned points (the probabilities' range is fixed)
    learned = qat.learned_ranges(model)
    point = "bert/encoder/layer.1/bert_output/LayerNorm:output"
    assert scalars[f"qat/integer_range/{point}"] == pytest.approx(learned[point]["max"])


def test_bad_target_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"qat\.target='int4'"):
        training.QATConfig(target="int4")
    assert training.QATConfig().target == "int8"
