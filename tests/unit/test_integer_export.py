"""The ``integer`` export: the LiteRT quantizer's mixed int8/int16 recipe, verified integer-only; bad graphs refused."""
from __future__ import annotations

import numpy as np
import pytest

from tfcompress.evaluate import integer, runtime
from tfcompress.export import litert_quantizer, tflite
from test_export import (SEQ_LENGTH, _features, _model_with_ffn_outlier,
                         _model_with_spread, _rows)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model with a planted feed-forward outlier channel, its integer artifacts without and with
    outlier scaling (``{"plain": path, "scaled": path}``), the Keras logits on padded inputs, and
    whether the exports left every weight as it was."""
    model = _model_with_ffn_outlier()
    weights = [w.numpy() for w in model.weights]
    folder = tmp_path_factory.mktemp("integer")
    paths = {}
    for name, percentile in (("plain", None), ("scaled", 90.0)):
        paths[name] = folder / f"{name}.tflite"
        litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _rows(_features(32, seed=2)), output_path=paths[name],
                                           outlier_percentile=percentile)
    restored = all(np.array_equal(w.numpy(), value) for w, value in zip(model.weights, weights))
    features = _features(8, seed=1)
    return paths, features, model(features, training=False).logits.numpy(), restored


def test_integer_export_is_integer_only_with_int8_matmuls(exported):
    paths, features, reference, _ = exported
    path = paths["scaled"]
    report = integer.integer_report(path)
    assert report["integer_only"], integer.format_offenders(report)
    for op in ("FULLY_CONNECTED", "BATCH_MATMUL"):
        assert set(report["precision"][op]) == {"int8"}, report["precision"][op]
    for op in ("ADD", "MEAN", "RSQRT", "SOFTMAX", "GELU"):  # residual stream, LayerNorm, softmax
        assert set(report["precision"][op]) == {"int16"}, (op, report["precision"][op])
    assert report["mac_share"]["int8"] == 1.0
    artifact = runtime.TFLiteModel(path)
    assert artifact.io_details()["outputs"]["logits"]["dtype"] == "float32"  # one DEQUANTIZE at the output
    assert integer.read_graph(path)["ops"][-1]["op"] == "DEQUANTIZE"
    logits = artifact.predict(features)
    spread = float(reference.max() - reference.min())
    # Measured on this model: max 0.63, mean 0.081 of the logit spread (all-int16 recipe: 0.58/0.075; the
    # tiny random model's LayerNorm variance chain dominates, see docs/integer.md).
    assert float(np.abs(logits - reference).max()) / spread <= 0.8
    assert float(np.abs(logits - reference).mean()) / spread <= 0.11


def test_integer_export_outlier_scaling_runs_on_the_int16_residual_and_restores_the_model(exported):
    paths, _, _, restored = exported
    assert restored
    muls = {name: [op for op in integer.read_graph(path)["ops"] if op["op"] == "MUL"] for name, path in paths.items()}
    assert len(muls["scaled"]) >= len(muls["plain"]) + 2, muls  # the scale and unscale MULs, in int16
    assert all(integer.precision_of(op) == "int16" for op in muls["scaled"])
    steps = {name: max(integer.fully_connected_steps(path, "output")) for name, path in paths.items()}
    # the planted channel set the coarsest int8 step of any Dense output; scaled, it no longer does
    assert steps["scaled"] < steps["plain"] / 4, steps


def test_integer_export_refuses_an_op_without_integer_rule_and_writes_nothing(tmp_path):
    model = _model_with_spread(hidden_act="mish")  # softplus: EXP and LOG, no int16 rule in the quantizer
    path = tmp_path / "integer.tflite"
    with pytest.raises(litert_quantizer.IntegerExportError, match=r"\['EXP'.*\n#\d+ EXP: float tensors: .*intermediate"):
        litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _rows(_features(16, seed=2)), num_calibration=16,
                                           output_path=path)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_integer_mode_is_not_a_converter_mode():
    with pytest.raises(ValueError, match="to_integer_tflite"):
        tflite.ExportConfig(mode="integer")


def test_integer_mode_is_opt_in_and_its_recipe_names_are_checked():
    from tfcompress.config.recipe import ExportStageConfig
    from tfcompress.errors import ConfigError

    assert "integer" not in ExportStageConfig().modes  # needs the optional quantizer; slow int16 on CPU
    ExportStageConfig(modes=["fp32", "integer"]).validate()
    with pytest.raises(ConfigError, match="integer_int8_ops"):
        ExportStageConfig(modes=["integer"], integer_int8_ops=["fully_connected"]).validate()
    with pytest.raises(ValueError, match="'NOT_AN_OP'"):
        litert_quantizer.IntegerRecipe(int8_ops=("NOT_AN_OP",)).apply(None)


def test_integer_export_keeps_pruned_weights_zero(tmp_path):
    """A magnitude-pruned model's zeros survive the quantizer's int8 weights (symmetric: 0 stays 0), so the
    integer artifact keeps its sparsity; ``integer.weight_zeros`` reads them from the flatbuffer."""
    from tfcompress.models.surgery import encoder_dense_layers

    model = _model_with_spread()
    for ref in encoder_dense_layers(model):
        kernel = ref.layer.kernel
        values = kernel.numpy()
        values[np.abs(values) < np.median(np.abs(values))] = 0.0  # half of every encoder kernel
        kernel.assign(values)
    dense = integer.weight_zeros(_integer_of(model, tmp_path / "pruned.tflite"))
    assert dense["weights"] > 0 and dense["zero_fraction"] >= 0.45, dense
    fresh = integer.weight_zeros(_integer_of(_model_with_spread(), tmp_path / "dense.tflite"))
    assert fresh["weights"] == dense["weights"] and fresh["zero_fraction"] < 0.1, fresh


def _integer_of(model, path):
    litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _rows(_features(16, seed=2)), num_calibration=16,
                                       output_path=path)
    return path


def test_integer_export_of_a_token_classifier_is_integer_only_with_per_token_logits(tmp_path):
    import transformers

    from tfcompress._compat import tf

    tf.random.set_seed(0)  # not keras.utils.set_random_seed: its seed generator outlives the test
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=9, max_position_embeddings=64)
    model = transformers.TFBertForTokenClassification(config)
    features = _features(8, seed=1)
    reference = model(features, training=False).logits.numpy()
    path = _integer_of(model, tmp_path / "token.tflite")
    report = integer.integer_report(path)
    assert report["integer_only"], integer.format_offenders(report)
    logits = runtime.TFLiteModel(path).predict(features)
    assert logits.shape == reference.shape  # [batch, tokens, labels]
    # measured 0.15 of the logit spread on this random model
    assert float(np.abs(logits - reference).max()) <= 0.3 * float(reference.max() - reference.min())
