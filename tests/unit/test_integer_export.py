"""The ``integer`` export: the LiteRT quantizer's mixed int8/int16 recipe, verified integer-only; bad graphs refused."""
from __future__ import annotations

import numpy as np
import pytest

from tfcompress.evaluate import integer, runtime
from tfcompress.export import litert_quantizer, tflite
from test_export import SEQ_LENGTH, _features, _model_with_spread, _rows


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model, its integer artifact's path, and the Keras logits on padded inputs."""
    model = _model_with_spread()
    path = tmp_path_factory.mktemp("integer") / "integer.tflite"
    litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, _rows(_features(32, seed=2)), output_path=path)
    features = _features(8, seed=1)
    return model, path, features, model(features, training=False).logits.numpy()


def test_integer_export_is_integer_only_with_int8_matmuls(exported):
    model, path, features, reference = exported
    report = integer.integer_report(path)
    assert report["integer_only"], integer.format_offenders(report)
    for op in ("FULLY_CONNECTED", "BATCH_MATMUL"):
        assert set(report["precision"][op]) == {"int8"}, report["precision"][op]
    for op in ("ADD", "MEAN", "RSQRT", "SOFTMAX", "GELU"):  # residual stream, LayerNorm, softmax
        assert set(report["precision"][op]) == {"int16"}, (op, report["precision"][op])
    assert report["mac_share"]["int8"] == 1.0
    logits = runtime.TFLiteModel(path).predict(features)
    spread = float(reference.max() - reference.min())
    # Measured on this random model: max 0.30, mean 0.059 of the logit spread (full int8: 0.50/0.17).
    assert float(np.abs(logits - reference).max()) / spread <= 0.4
    assert float(np.abs(logits - reference).mean()) / spread <= 0.08


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
