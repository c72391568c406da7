"""QAT with TFMOT's QuantizeWrapperV2 on tiny HF models: train, strip, convert, prune-preserving QAT."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import build_tiny_model
from tfcompress.data import encoding
from tfcompress.data import readers
from tfcompress.compress import prune
from tfcompress.compress import qat
from tfcompress.config import training
from tfcompress.evaluate import runtime
from tfcompress.export import tflite
from tfcompress.models import loading
from tfcompress.models import surgery
from tfcompress._compat import keras, tf
from tfcompress.config.training import TrainConfig
from tfcompress.train.trainer import Hook, Trainer

ENCODER_PATHS = [f"bert/encoder/layer.{i}/{name}" for i in range(2) for name in (
    "attention/self_attention/query", "attention/self_attention/key", "attention/self_attention/value",
    "attention/dense_output/dense", "intermediate/dense", "bert_output/dense")]


@pytest.fixture
def sst_encoded(sst_tsv, tiny_tokenizer):
    examples = readers.read_text_classification(sst_tsv)
    return encoding.encode(tiny_tokenizer, examples, max_length=16)


def _features(encoded):
    features, _ = encoded.padded_batch(np.arange(len(encoded)))
    return features


def _logits(model, features):
    return model({k: tf.constant(v) for k, v in features.items()}, training=False).logits.numpy()


class _RecordLosses(Hook):
    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, step, logs):
        self.losses.append(logs["loss"])


def _train(model, encoded, output_dir, steps, hooks, learning_rate=1e-2):
    config = TrainConfig(max_steps=steps, batch_size=4, learning_rate=learning_rate, warmup_ratio=0.0,
                         checkpoint_every=100, log_every=1, histograms=False)
    trainer = Trainer(model, "sequence", config, output_dir, hooks=hooks)
    trainer.fit(encoded)
    return trainer


def _wrappers(model):
    return [ref.layer for ref in surgery.find_layers(model, kinds=(qat.QuantizeWrapperV2,))]


def _ranges(wrapper) -> dict[str, np.ndarray]:
    return {name: variable.numpy().copy() for name, variable in qat._range_variables(wrapper).items()}


def test_qat_wrappers_train_under_trainer(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    qat.apply(model, training.QATConfig())
    assert qat.quantized_layers(model) == ENCODER_PATHS
    wrappers = _wrappers(model)
    kernels_before = [qat.kernel_variable(w).numpy().copy() for w in wrappers]
    ranges_before = [_ranges(w) for w in wrappers]
    assert set(ranges_before[0]) == {"kernel_min", "kernel_max", "post_activation_min", "post_activation_max"}

    record = _RecordLosses()
    trainer = _train(model, sst_encoded, tmp_path / "qat", 4, qat.hooks(training.QATConfig()) + [record])

    assert len(record.losses) == 4 and np.all(np.isfinite(record.losses))
    for wrapper, kernel, ranges in zip(wrappers, kernels_before, ranges_before):
        kernel_after = qat.kernel_variable(wrapper).numpy()
        assert not np.allclose(kernel_after, kernel), wrapper.name
        after = _ranges(wrapper)
        # moving-average output ranges moved away from TFMOT's initial -6/6 toward the batches' range
        assert not np.allclose(after["post_activation_min"], ranges["post_activation_min"]), wrapper.name
        assert not np.allclose(after["post_activation_max"], ranges["post_activation_max"]), wrapper.name
        # last-value kernel ranges: symmetric, set from the kernel of the last forward pass (before
        # the last optimizer update, hence the tolerance), no longer TFMOT's initial -6/6
        assert not np.allclose(after["kernel_max"], ranges["kernel_max"]), wrapper.name
        np.testing.assert_allclose(after["kernel_min"], -after["kernel_max"], rtol=1e-6)
        np.testing.assert_allclose(after["kernel_max"], np.abs(kernel_after).max(), rtol=0.1)
        assert int(wrapper.optimizer_step.numpy()) == 4
    # every variable (kernels, min/max ranges, optimizer_step) is tracked once, in the model and
    # in the Trainer's checkpoint
    ids = [id(v) for v in model.variables]
    assert len(ids) == len(set(ids))
    trainable = [id(v) for v in model.trainable_variables]
    assert len(trainable) == len(set(trainable))
    assert sum("kernel_min" in v.name for v in model.trainable_variables) == 0
    checkpoint = tf.train.latest_checkpoint(str(tmp_path / "qat" / "checkpoints")) or \
        trainer._manager.latest_checkpoint
    names = [name for name, _ in tf.train.list_variables(checkpoint)]
    for short in ("post_activation_min", "post_activation_max", "kernel_min", "optimizer_step"):
        entries = [n for n in names if n.endswith(f"{short}/.ATTRIBUTES/VARIABLE_VALUE")
                   and "/.OPTIMIZER_SLOT/" not in n]
        assert len(entries) == len(ENCODER_PATHS), (short, entries)


def test_qat_strip_restores_plain_dense(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    features = _features(sst_encoded)
    original_names = sorted(v.name for v in model.weights)
    original_logits = _logits(model, features)

    qat.apply(model)
    qat.strip(model)  # untrained round trip: exactly the float model again
    np.testing.assert_allclose(_logits(model, features), original_logits, atol=1e-6)

    qat.apply(model)
    _train(model, sst_encoded, tmp_path / "qat", 3, qat.hooks())
    trained_kernels = {ref.path: qat.kernel_variable(ref.layer).numpy().copy()
                       for ref in surgery.find_layers(model, kinds=(qat.QuantizeWrapperV2,))}
    qat.strip(model)

    assert not _wrappers(model)
    refs = {ref.path: ref.layer for ref in surgery.find_layers(model)}
    for path in ENCODER_PATHS:
        layer = refs[path]
        assert type(layer) is keras.layers.Dense, path
        assert isinstance(layer.kernel, tf.Variable), path  # not the wrapper's fake-quant tensor
        assert layer.activation is keras.activations.linear, path
        np.testing.assert_array_equal(layer.kernel.numpy(), trained_kernels[path])
    assert sorted(v.name for v in model.weights) == original_names  # no quant_* variables left
    stripped_logits = _logits(model, features)
    assert not np.allclose(stripped_logits, original_logits)  # the QAT-trained weights are kept
    loading.save_model(model, None, tmp_path / "stripped")
    reloaded = loading.load_model(str(tmp_path / "stripped"), task="sequence")
    np.testing.assert_allclose(_logits(reloaded, features), stripped_logits, atol=1e-5)


def _fully_connected_output_scales(content: bytes) -> dict[str, float]:
    """``{output tensor name: scale}`` of every FULLY_CONNECTED op."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    out = {}
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        if op["op_name"] == "FULLY_CONNECTED":
            detail = details[int(op["outputs"][0])]
            scales = detail["quantization_parameters"]["scales"]
            out[detail["name"]] = float(scales[0]) if len(scales) else 0.0
    return out


def test_qat_then_convert_emits_int8_kernels(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    qat.apply(model, calibration=sst_encoded)  # data ranges, not -6/6: each layer's differs
    _train(model, sst_encoded, tmp_path / "qat", 3, qat.hooks())
    learned = {}
    for wrapper in _wrappers(model):
        ranges = qat._range_variables(wrapper)
        scope = ranges["post_activation_min"].name.rsplit("/", 1)[0] + "/"  # ".../self/quant_query/"
        width = ranges["post_activation_max"].numpy() - ranges["post_activation_min"].numpy()
        learned[scope] = float(width) / 255
    assert len(set(np.round(list(learned.values()), 6))) > 1  # the check below can tell layers apart

    path = tmp_path / "qat-int8.tflite"
    content = tflite.to_tflite_from_qat(model, seq_length=16, representative=sst_encoded, output_path=path)

    assert path.read_bytes() == content
    int8, total = runtime.int8_kernel_count(content, "FULLY_CONNECTED")
    assert total == len(ENCODER_PATHS) + 2  # + pooler and classifier
    assert int8 == total
    assert runtime.float_ops(content) == []  # full integer: nothing computes in float
    fully_connected = [row for row in runtime.op_tensor_types(content) if row["op"] == "FULLY_CONNECTED"]
    assert all(row["inputs"][:2] == ["int8", "int8"] and row["outputs"] == ["int8"]
               for row in fully_connected)
    # every wrapped FULLY_CONNECTED carries the output range its wrapper learned, not a re-calibrated one
    scales = _fully_connected_output_scales(content)
    for scope, scale in learned.items():
        matches = [value for name, value in scales.items() if scope in name]
        assert len(matches) == 1, (scope, list(scales))
        assert matches[0] == pytest.approx(scale, rel=1e-4), scope
    # and the artifact still computes the model (loose: a random tiny model, int8 everywhere)
    artifact = runtime.TFLiteModel(path)
    features = _features(sst_encoded)
    predicted = artifact.predict(features)
    keras_logits = _logits(model, features)
    assert np.abs(predicted - keras_logits).max() < 0.5 * max(np.abs(keras_logits).max(), 1.0)


def test_selective_qat_conversion_keeps_layer_norm_float_and_dense_int8(sst_encoded):
    from tfcompress.config import constants

    model = build_tiny_model("sequence")
    qat.apply(model, calibration=sst_encoded)
    content = tflite.to_tflite_from_qat(model, seq_length=16, representative=sst_encoded,
                                          denylisted_ops=constants.LAYER_NORM_OPS)
    assert runtime.int8_kernel_count(content, "FULLY_CONNECTED") == (len(ENCODER_PATHS) + 2,) * 2
    float_ops = {entry.split(" ")[0] for entry in runtime.float_ops(content)}
    assert {"MEAN", "RSQRT"} <= float_ops and not float_ops & {"FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX"}


def test_to_tflite_from_qat_refuses_unwrapped_model(sst_encoded):
    with pytest.raises(ValueError, match="QuantizeWrapperV2"):
        tflite.to_tflite_from_qat(build_tiny_model("sequence"), seq_length=16, representative=sst_encoded)


def _prune_to_half(model, encoded, output_dir):
    config = training.PruneConfig(final_sparsity=0.5, end_step=4, frequency=1)
    prune.apply(model, config, total_steps=4)
    _train(model, encoded, output_dir, 4, prune.hooks(config))
    prune.strip(model)
    return {path: np.count_nonzero(model_kernel(model, path) == 0) for path in ENCODER_PATHS}


def model_kernel(model, path) -> np.ndarray:
    layer = {ref.path: ref.layer for ref in surgery.find_layers(model, into_wrappers=True)}[path]
    return layer.kernel.numpy()


@pytest.mark.parametrize("preserve_sparsity", [True, False])
def test_pruned_qat_keeps_sparsity(sst_encoded, tmp_path, preserve_sparsity):
    model = build_tiny_model("sequence")
    zeros = _prune_to_half(model, sst_encoded, tmp_path / "prune")
    for path in ENCODER_PATHS:
        assert zeros[path] == model_kernel(model, path).size // 2, path

    qat.apply(model, training.QATConfig(preserve_sparsity=preserve_sparsity))
    _train(model, sst_encoded, tmp_path / "qat", 3, qat.hooks())
    qat.strip(model)

    report = prune.sparsity_report(model)["layers"]
    if preserve_sparsity:
        for path in ENCODER_PATHS:
            kernel = model_kernel(model, path)
            assert np.count_nonzero(kernel == 0) == kernel.size // 2, path
            assert report[f"{path}/kernel"]["sparsity"] == pytest.approx(0.5), path
    else:
        # the control: plain QAT lets gradients fill the pruned weights back in
        assert all(report[f"{path}/kernel"]["sparsity"] < 0.1 for path in ENCODER_PATHS)


def test_default_config_preserves_sparsity_only_of_pruned_kernels(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    layer = {ref.path: ref.layer for ref in surgery.find_layers(model)}[ENCODER_PATHS[0]]
    kernel = layer.kernel.numpy()
    kernel[:, ::2] = 0.0  # half the columns pruned, as prune.strip leaves them
    layer.kernel.assign(kernel)
    qat.apply(model)  # preserve_sparsity=None: decided per layer from its zeros
    kinds = {ref.path: type(ref.layer.quantize_config.weight_quantizer).__name__
             for ref in surgery.find_layers(model, kinds=(qat.QuantizeWrapperV2,))}
    assert kinds[ENCODER_PATHS[0]] == "PrunePreserveDefault8BitWeightsQuantizer"
    assert {kinds[p] for p in ENCODER_PATHS[1:]} == {"LastValueQuantizer"}


def test_apply_refuses_wrapped_models_and_bad_config():
    model = build_tiny_model("sequence")
    prune.apply(model, training.PruneConfig(final_sparsity=0.5, end_step=4, frequency=1))
    with pytest.raises(ValueError, match="prune.strip"):
        qat.apply(model)
    prune.strip(model)
    qat.apply(model)
    with pytest.raises(ValueError, match="qat.strip"):
        qat.apply(model)
    with pytest.raises(ValueError, match="preserve_sparsity"):
        training.QATConfig(preserve_sparsity="yes")
    with pytest.raises(ValueError, match="qat.include"):
        qat.apply(build_tiny_model("sequence"), training.QATConfig(include="no-such-layer"))


def test_calibrated_ranges_start_at_the_data_range_not_minus_six_six(sst_encoded):
    model = build_tiny_model("sequence")
    qat.apply(model, training.QATConfig(calibration_examples=12), calibration=sst_encoded)
    features = _features(sst_encoded)
    for wrapper in _wrappers(model):
        ranges = _ranges(wrapper)
        low, high = float(ranges["post_activation_min"]), float(ranges["post_activation_max"])
        assert low <= 0.0 <= high and (low, high) != (-6.0, 6.0), wrapper.name
    # the first wrapper (layer 0 query) sees the embedding LayerNorm output: recompute its range
    qat.strip(model)
    embedding_output = model.bert.embeddings(input_ids=tf.constant(features["input_ids"]),
                                             token_type_ids=tf.constant(features["token_type_ids"]),
                                             training=False)
    query = model.bert.encoder.layer[0].attention.self_attention.query
    outputs = query(embedding_output).numpy()
    qat.apply(model, training.QATConfig(calibration_examples=12), calibration=sst_encoded)
    ranges = _ranges(_wrappers(model)[0])
    np.testing.assert_allclose(ranges["post_activation_min"], min(outputs.min(), 0.0), rtol=1e-4)
    np.testing.assert_allclose(ranges["post_activation_max"], max(outputs.max(), 0.0), rtol=1e-4)
    with pytest.raises(ValueError, match="calibration_examples"):
        training.QATConfig(calibration_examples=0)


def test_qat_checkpoint_restores_into_freshly_wrapped_model(sst_encoded, tmp_path):
    """What the pipeline's export does: rebuild the input model, apply QAT, read the QAT weights."""
    features = _features(sst_encoded)
    model = build_tiny_model("sequence")
    loading.save_model(model, None, tmp_path / "input")
    qat.apply(model)
    _train(model, sst_encoded, tmp_path / "qat", 3, qat.hooks())
    trained_logits = _logits(model, features)
    trained_ranges = [_ranges(w) for w in _wrappers(model)]
    tf.train.Checkpoint(model=model).write(str(tmp_path / "qat_weights" / "weights"))

    rebuilt = qat.apply(loading.load_model(str(tmp_path / "input"), task="sequence"))
    assert not np.allclose(_logits(rebuilt, features), trained_logits)  # before reading: untrained
    tf.train.Checkpoint(model=rebuilt).read(str(tmp_path / "qat_weights" / "weights")).expect_partial()
    np.testing.assert_allclose(_logits(rebuilt, features), trained_logits, atol=1e-5)
    for wrapper, ranges in zip(_wrappers(rebuilt), trained_ranges):
        for name, value in _ranges(wrapper).items():
            np.testing.assert_array_equal(value, ranges[name])
