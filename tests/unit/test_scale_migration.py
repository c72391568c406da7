"""Scale migration from LayerNorm outputs into the Dense kernels that read them: same float function, exact undo."""
from __future__ import annotations

import numpy as np
import pytest

from tfcompress.export import rewrites, smoothing, tflite
from test_export import SEQ_LENGTH, _features, _model_with_ffn_outlier, _model_with_spread, _rows

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def _model_with_gamma_outlier(factor: float = 30.0):
    """:func:`_model_with_ffn_outlier` whose every LayerNorm has one gamma 30x the others, as
    fine-tuned BERT-family models do (the channel that sets a LayerNorm output's int8 step)."""
    model = _model_with_ffn_outlier()
    for norm in rewrites._layer_norms(model):
        gamma = norm.gamma.numpy()
        gamma[7] *= factor
        norm.gamma.assign(gamma)
    return model


def test_sites_follow_bert_wiring():
    model = _model_with_spread()
    sites = smoothing.smoothing_sites(model)
    assert [path for path, *_ in sites] == ["embeddings", "encoder/layer.0/attention", "encoder/layer.0/output",
                                           "encoder/layer.1/attention"]
    layers = model.bert.encoder.layer
    path, norm, denses, block = sites[2]
    assert norm is layers[0].bert_output.LayerNorm and block is layers[1].attention.dense_output
    assert denses == [layers[1].attention.self_attention.query, layers[1].attention.self_attention.key,
                      layers[1].attention.self_attention.value]
    assert sites[1][2] == [layers[0].intermediate.dense] and sites[1][3] is layers[0].bert_output


@pytest.mark.parametrize("alpha", [0.5, 0.75])
def test_migration_keeps_float_outputs_and_undoes_exactly(alpha):
    model = _model_with_gamma_outlier()
    features = _features(6)
    before = model(features, training=False).logits.numpy()
    weights = [w.numpy() for w in model.weights]
    classes = [type(site[3]) for site in smoothing.smoothing_sites(model)]
    undo = smoothing.migrate_activation_scales(model, _rows(_features(16, seed=2)), alpha=alpha)
    assert len(undo.migrated) == 4
    sites = smoothing.smoothing_sites(model)
    norm, dense = sites[2][1], sites[2][2][0]
    assert not np.allclose(norm.gamma.numpy(), weights[[w.name for w in model.weights].index(norm.gamma.name)])
    assert hasattr(norm, "_tfcompress_migrated_scale") and hasattr(sites[2][3], "_tfcompress_residual_scale")
    assert not np.allclose(dense.kernel.numpy(), weights[[w.name for w in model.weights].index(dense.kernel.name)])
    migrated = model(features, training=False).logits.numpy()
    assert float(np.abs(migrated - before).max()) < 1e-4
    tflite.serving_function(model, SEQ_LENGTH, NAMES, friendly=True, integer_only=True)  # traces (SavedModel path)
    undo()
    for weight, value in zip(model.weights, weights):
        np.testing.assert_array_equal(weight.numpy(), value)
    assert [type(site[3]) for site in smoothing.smoothing_sites(model)] == classes
    assert all("call" not in vars(site[3]) and not hasattr(site[3], "_tfcompress_residual_scale")
               for site in smoothing.smoothing_sites(model))
    np.testing.assert_array_equal(model(features, training=False).logits.numpy(), before)


def test_migration_composes_with_outlier_scaling():
    model = _model_with_gamma_outlier()
    features = _features(6)
    before = model(features, training=False).logits.numpy()
    weights = [w.numpy() for w in model.weights]
    calibration = _rows(_features(16, seed=2))
    undo_outliers = rewrites.scale_outlier_channels(model, calibration, percentile=90.0)
    undo = smoothing.migrate_activation_scales(model, calibration, alpha=0.5)
    block = model.bert.encoder.layer[0].bert_output
    assert type(block).__name__ == "SmoothedOutlierScaledTFBertOutput"
    assert float(np.abs(model(features, training=False).logits.numpy() - before).max()) < 1e-4
    undo()
    undo_outliers()
    assert type(block).__name__ == "TFBertOutput"
    for weight, value in zip(model.weights, weights):
        np.testing.assert_array_equal(weight.numpy(), value)


def test_migration_needs_alpha_in_range_and_skips_other_layouts():
    model = _model_with_spread()
    with pytest.raises(ValueError, match="alpha"):
        smoothing.migrate_activation_scales(model, [], alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        smoothing.migrate_activation_scales(model, [], alpha=1.5)
    from conftest import build_tiny_model
    distil = build_tiny_model("sequence", "distilbert")
    undo = smoothing.migrate_activation_scales(distil, _rows(_features(2)), alpha=0.5)
    assert undo.migrated == {}
    undo()


def test_integer_export_with_migration_shrinks_the_dense_input_steps_and_restores_the_model(tmp_path):
    from tfcompress.evaluate import integer
    from tfcompress.export import litert_quantizer

    model = _model_with_gamma_outlier()
    weights = [w.numpy() for w in model.weights]
    calibration = _rows(_features(32, seed=2))
    paths = {}
    for name, alpha in (("integer", None), ("migrated", 0.75)):
        paths[name] = tmp_path / f"{name}.tflite"
        litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, calibration, output_path=paths[name],
                                           outlier_percentile=90.0, smooth_alpha=alpha)
    for weight, value in zip(model.weights, weights):
        np.testing.assert_array_equal(weight.numpy(), value)
    report = integer.integer_report(paths["migrated"])
    assert report["integer_only"], integer.format_offenders(report)
    muls = {name: [op for op in integer.read_graph(path)["ops"] if op["op"] == "MUL"] for name, path in paths.items()}
    # per site: the residual's MUL by s and the LayerNorm's division before its rsqrt MUL, in int16
    assert len(muls["migrated"]) == len(muls["integer"]) + 2 * 4, muls
    assert all(integer.precision_of(op) == "int16" for op in muls["migrated"])
    # the converter folds gamma into the Dense, not the division: the Q/K/V and intermediate inputs'
    # int8 steps shrink (measured 0.020-0.040 -> 0.010-0.016 at alpha 0.75)
    plain, migrated = (sorted(integer.fully_connected_steps(paths[name])) for name in ("integer", "migrated"))
    assert sum(a < b * 0.8 for a, b in zip(migrated, plain)) >= 6, (plain, migrated)
    with pytest.raises(ValueError, match=r"alpha=2.0: must be in \(0, 1\]"):
        litert_quantizer.to_integer_tflite(model, SEQ_LENGTH, calibration, smooth_alpha=2.0)


def test_integer_smooth_alpha_config_is_checked():
    from tfcompress.config.recipe import ExportStageConfig
    from tfcompress.errors import ConfigError

    assert ExportStageConfig().integer_smooth_alpha is None
    ExportStageConfig(integer_smooth_alpha=0.5).validate()
    for bad in (0.0, 1.5, -0.5, "0.5", True):
        with pytest.raises(ConfigError, match="export.integer_smooth_alpha"):
            ExportStageConfig(integer_smooth_alpha=bad).validate()
