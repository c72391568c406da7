"""TFLite export and runtime on tiny models: every mode against Keras, signatures, ops, parity gate.

Shared harness (as keras-hub's ``run_litert_export_test``): export, load with LiteRT
(``ai_edge_litert``), compare logits with the Keras model's on padded inputs, max and mean error
relative to the spread of the Keras logits (a random tiny model's logits are ~0.05 wide, so
absolute tolerances would say nothing).
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SST_ROWS, app_tokenize, build_tiny_model
from tfcompress._compat import tf
from tfcompress import release
from tfcompress.config import constants
from tfcompress.evaluate import gate, integer
from tfcompress.evaluate import runtime
from tfcompress.export import rewrites
from tfcompress.export import tflite

SEQ_LENGTH = 16


def _features(count: int, seed: int = 0, width: int = 12) -> dict[str, np.ndarray]:
    """Padded batches with real padding: every row has 3..width tokens, then zeros."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 60, size=(count, width)).astype(np.int32)
    mask = np.zeros((count, width), np.int32)
    for row in range(count):
        length = int(rng.integers(3, width + 1))
        mask[row, :length] = 1
        ids[row, 0], ids[row, length - 1] = 2, 3  # [CLS] ... [SEP]
        ids[row, length:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _rows(features):
    count = len(features["input_ids"])
    return [{name: value[i: i + 1] for name, value in features.items()} for i in range(count)]


def _model_with_spread(task="sequence", **overrides):
    """A tiny model whose logits are O(1), so quantization error is visible.

    Weights are re-drawn from a fixed NumPy seed (normal, std 0.2; LayerNorm gamma 1 +- 0.1, beta
    +- 0.1): TF's initializers depend on how many models the process built before, and int8 error
    on random tiny models varies several-fold between draws.
    """
    model = build_tiny_model(task, "bert", **overrides)
    rng = np.random.default_rng(0)
    values = []
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "LayerNorm" in weight.name and "gamma" in weight.name:
            values.append(1.0 + 0.1 * rng.standard_normal(shape))
        elif "LayerNorm" in weight.name:
            values.append(0.1 * rng.standard_normal(shape))
        else:
            values.append(0.2 * rng.standard_normal(shape))
    model.set_weights([value.astype(np.float32) for value in values])
    return model


def run_litert_export_test(model, mode, tmp_path, max_relative=1e-4, mean_relative=1e-5, **kwargs):
    """Export ``model`` in ``mode``, run it with LiteRT, compare with Keras; returns the artifact."""
    features = _features(8, seed=1)
    reference = model(features, training=False).logits.numpy()
    path = tmp_path / f"{mode}.tflite"
    tflite.to_tflite(model, mode, seq_length=SEQ_LENGTH, representative=_rows(_features(32, seed=2)),
                     output_path=path, **kwargs)
    artifact = runtime.TFLiteModel(path)
    logits = artifact.predict(features)
    assert logits.shape == reference.shape
    spread = float(reference.max() - reference.min())
    max_error = float(np.abs(logits - reference).max()) / spread
    mean_error = float(np.abs(logits - reference).mean()) / spread
    assert max_error <= max_relative, f"{mode}: max error {max_error:.2e} of the logit spread"
    assert mean_error <= mean_relative, f"{mode}: mean error {mean_error:.2e} of the logit spread"
    return artifact, path


# Relative to the logits' spread. fp16 rounds weights to 11 bits; int8 is 8 bits per tensor
# through 2 layers (~1/256 per step, errors accumulate); int16x8 keeps 16-bit activations.
# (mode, extra export arguments): max and mean error relative to the logit spread.
# fp16 rounds weights to 11 bits; int16x8 keeps 16-bit activations. Full-integer int8 through
# LayerNorm is the known-bad case (the reason the int8 export keeps it in float): it is only held to "no collapse";
# int8 with LayerNorm/residual ops in float (constants.LAYER_NORM_OPS) must be close.
CASES = {  # measured on this model: fp32 4e-7/1.5e-7, fp16 9e-4/4e-4, dynamic 0.023/0.011,
    # int8 full integer 0.50/0.17, int8 float LayerNorm 0.093/0.024, int16x8 0.095/0.017
    "fp32": ("fp32", {}, 1e-5, 1e-6),
    "fp16": ("fp16", {}, 3e-3, 1e-3),
    "dynamic": ("dynamic", {}, 4e-2, 1.6e-2),
    "int8_full_integer": ("int8", {}, 7.5e-1, 2.5e-1),
    "int8_float_layer_norm": ("int8", {"denylisted_ops": constants.LAYER_NORM_OPS}, 1.4e-1, 3.5e-2),
    "int16x8": ("int16x8", {}, 1.4e-1, 2.5e-2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tflite_matches_keras_within_tolerance(case, tmp_path):
    mode, kwargs, max_relative, mean_relative = CASES[case]
    model = _model_with_spread()
    artifact, _ = run_litert_export_test(model, mode, tmp_path, max_relative, mean_relative, **kwargs)
    assert sorted(artifact.input_names) == ["attention_mask", "input_ids", "token_type_ids"]
    assert artifact.output_names == ["logits"]
    assert artifact.seq_length == SEQ_LENGTH
    if mode == "int8":
        int8_kernels, total = runtime.int8_kernel_count(artifact.path)
        assert total > 0 and int8_kernels == total, "int8 artifact has float FULLY_CONNECTED kernels"
        assert (runtime.float_ops(artifact.path) == []) == (not kwargs)


def test_token_classifier_exports_per_token_logits(tmp_path):
    model = _model_with_spread("token", num_labels=5)
    artifact, _ = run_litert_export_test(model, "fp32", tmp_path, 1e-5, 1e-6)
    features = _features(2)
    assert artifact.predict(features).shape == (2, 12, 5)


def test_int8_output_is_dequantized_with_its_scale_and_zero_point(tmp_path):
    model = _model_with_spread()
    artifact, _ = run_litert_export_test(model, "int8", tmp_path, *CASES["int8_float_layer_norm"][2:],
                                         io_type="int8", denylisted_ops=constants.LAYER_NORM_OPS)
    assert artifact.output_dtype == np.int8
    details = artifact.io_details()["outputs"]["logits"]
    assert details["dtype"] == "int8" and details["scale"] > 0


def test_distilbert_exports_without_token_type_ids(tmp_path):
    model = build_tiny_model("sequence", "distilbert")
    features = {name: value for name, value in _features(4).items() if name != "token_type_ids"}
    reference = model(features, training=False).logits.numpy()
    path = tmp_path / "distil.tflite"
    tflite.to_tflite(model, "fp32", seq_length=SEQ_LENGTH, output_path=path)
    artifact = runtime.TFLiteModel(path)
    assert sorted(artifact.input_names) == ["attention_mask", "input_ids"]
    np.testing.assert_allclose(artifact.predict(features), reference, atol=1e-5)


def test_no_flex_ops_in_artifacts(tmp_path):
    model = _model_with_spread()
    for mode in ("fp32", "dynamic", "int8"):
        content = tflite.to_tflite(model, mode, seq_length=SEQ_LENGTH,
                                   representative=_rows(_features(8)))
        names = runtime.op_names(content)
        assert names and not [name for name in names if name.startswith("Flex") or name == "CUSTOM"]


class _NeedsFlex(tf.keras.Model):
    """A stand-in classifier whose head uses an op TFLite builtins lack (matrix determinant)."""

    def __init__(self):
        super().__init__()
        self.embedding = tf.keras.layers.Embedding(100, 4)

    def call(self, inputs, training=False):
        embedded = self.embedding(inputs["input_ids"])[:, :4, :]          # [B, 4, 4]
        determinant = tf.linalg.det(embedded)[:, None]                    # not a builtin op
        mask = tf.cast(inputs["attention_mask"][:, :1], tf.float32)
        return {"logits": tf.concat([determinant, mask], axis=-1)}


def test_flex_ops_fail_naming_them():
    model = _NeedsFlex()
    model({"input_ids": tf.ones([1, 8], tf.int32), "attention_mask": tf.ones([1, 8], tf.int32)})
    with pytest.raises(tflite.FlexOpsError, match="MatrixDeterminant"):
        tflite.to_tflite(model, "fp32", seq_length=8, input_names=["input_ids", "attention_mask"])


def test_mask_clipping_keeps_float_outputs():
    model = _model_with_spread()
    features = _features(6)
    assert features["attention_mask"].min() == 0  # the test needs padded positions
    before = model(features, training=False).logits.numpy()
    with rewrites.quantization_friendly(model, attention_mask_floor=-30.0):
        friendly = model(features, training=False).logits.numpy()
    after = model(features, training=False).logits.numpy()
    np.testing.assert_allclose(friendly, before, atol=1e-5)
    np.testing.assert_array_equal(after, before)
    # The floor is really in the graph: a floor that lets padded keys through changes outputs.
    with rewrites.quantization_friendly(model, attention_mask_floor=-0.01):
        leaky = model(features, training=False).logits.numpy()
    assert np.abs(leaky - before).max() > 1e-3
    assert "call" not in vars(model.bert.encoder)  # undone


def test_quantization_friendly_fp32_artifact_matches_keras(tmp_path):
    model = _model_with_spread()
    features = _features(4)
    reference = model(features, training=False).logits.numpy()
    concrete = tflite.serving_function(model, SEQ_LENGTH, ["input_ids", "attention_mask", "token_type_ids"],
                                       friendly=True)
    outputs = concrete(**{"features": {k: tf.constant(tflite.fit_length({k: v[:1]}, SEQ_LENGTH)[k])
                                       for k, v in features.items()}})
    np.testing.assert_allclose(outputs["logits"].numpy(), reference[:1], atol=1e-5)


def _model_with_ffn_outlier(factor: float = 60.0):
    """:func:`_model_with_spread` whose layer-0 feed-forward output writes one huge channel into the
    residual stream, as fine-tuned BERT-family models do (MiniLM: |189| against a median channel max
    of 1.1)."""
    model = _model_with_spread(max_position_embeddings=64)  # the weights the thresholds were measured on
    dense = model.bert.encoder.layer[0].bert_output.dense
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    kernel[:, 5] *= factor
    bias[5] = factor
    dense.kernel.assign(kernel)
    dense.bias.assign(bias)
    return model


def test_outlier_channel_scaling_keeps_float_outputs_and_undoes_exactly():
    model = _model_with_ffn_outlier()
    features = _features(6)
    before = model(features, training=False).logits.numpy()
    weights = [w.numpy() for w in model.weights]
    blocks = rewrites.ffn_output_blocks(model)
    assert [path for path, _ in blocks] == ["encoder/layer.0/output", "encoder/layer.1/output"]
    classes = [type(block) for _, block in blocks]
    undo = rewrites.scale_outlier_channels(model, _rows(_features(16, seed=2)), percentile=90.0)
    assert undo.scaled.get("encoder/layer.0/output", 0) >= 1  # the planted channel at least
    dense = model.bert.encoder.layer[0].bert_output.dense
    assert np.abs(dense.kernel.numpy()[:, 5]).max() < np.abs(weights[0]).max() * 60  # really scaled
    scaled = model(features, training=False).logits.numpy()
    np.testing.assert_allclose(scaled, before, rtol=1e-4, atol=1e-4 * float(np.abs(before).max()))
    tflite.serving_function(model, SEQ_LENGTH, ["input_ids", "attention_mask", "token_type_ids"], friendly=True)
    undo()
    for weight, value in zip(model.weights, weights):
        np.testing.assert_array_equal(weight.numpy(), value)
    assert [type(block) for _, block in blocks] == classes
    assert all("call" not in vars(block) for _, block in blocks)
    np.testing.assert_array_equal(model(features, training=False).logits.numpy(), before)


def test_outlier_channel_scaling_brings_int8_back_to_keras(tmp_path):
    model = _model_with_ffn_outlier()
    features = _features(8, seed=1)
    reference = model(features, training=False).logits.numpy()
    weights = [w.numpy() for w in model.weights]
    denylist = constants.LAYER_NORM_OPS + ("BATCH_MATMUL",)  # the pipeline's int8 default
    errors, muls, steps = {}, {}, {}
    for name, percentile in (("plain", None), ("scaled", 90.0)):
        path = tmp_path / f"{name}.tflite"
        tflite.to_tflite(model, "int8", seq_length=SEQ_LENGTH, representative=_rows(_features(32, seed=2)),
                         denylisted_ops=denylist, outlier_percentile=percentile, output_path=path)
        errors[name] = float(np.abs(runtime.TFLiteModel(path).predict(features) - reference).mean())
        muls[name] = runtime.op_names(path).count("MUL")
        steps[name] = max(integer.fully_connected_steps(path, "output"))
    for weight, value in zip(model.weights, weights):  # the export left the model as it was
        np.testing.assert_array_equal(weight.numpy(), value)
    # the converter kept the scale and unscale MULs (it folds a MUL that directly follows a
    # FULLY_CONNECTED into its weights, which would undo the scaling)
    assert muls["scaled"] >= muls["plain"] + 2, muls
    # the planted channel set the coarsest int8 step of any Dense output; scaled, it no longer does
    assert steps["scaled"] < steps["plain"] / 4, steps
    assert errors["scaled"] < 0.75 * errors["plain"], errors  # measured 0.045 vs 0.081


def test_outlier_channel_scaling_applies_only_with_a_float_residual_path():
    on = dict(mode="int8", outlier_percentile=90.0)
    assert tflite.outlier_scaling_applies(tflite.ExportConfig(denylisted_ops=("MUL", "ADD"), **on))
    assert not tflite.outlier_scaling_applies(tflite.ExportConfig(**on))  # all-integer
    assert not tflite.outlier_scaling_applies(tflite.ExportConfig(mode="int8", denylisted_ops=("MUL", "ADD")))
    with pytest.raises(ValueError, match="outlier_percentile"):
        tflite.ExportConfig(outlier_percentile=0.0)
    assert rewrites.ffn_output_blocks(build_tiny_model("sequence", "distilbert")) == []


def test_export_config_names_bad_field():
    with pytest.raises(ValueError, match="mode="):
        tflite.ExportConfig(mode="int3")
    with pytest.raises(ValueError, match="io_type"):
        tflite.ExportConfig(mode="dynamic", io_type="int8")
    with pytest.raises(ValueError, match="attention_mask_floor"):
        tflite.ExportConfig(attention_mask_floor=5.0)


def test_quantized_modes_need_representative_data():
    with pytest.raises(ValueError, match="representative"):
        tflite.to_tflite(_model_with_spread(), "int8", seq_length=SEQ_LENGTH)


def test_selective_quantization_keeps_denylisted_ops_in_float(tmp_path):
    model = _model_with_spread()
    artifact, path = run_litert_export_test(model, "int8", tmp_path, *CASES["int8_full_integer"][2:],
                                            denylisted_ops=["SOFTMAX"])
    float_ops = runtime.float_ops(path)
    assert any(op.startswith("SOFTMAX") for op in float_ops), float_ops
    assert runtime.int8_kernel_count(path)[0] > 0


# --------------------------------------------------------------------------------------------
# Parity gate


def test_parity_gate_budget_in_points():
    assert gate.parity_gate(0.885, 0.891, accuracy_budget=1.0)
    assert not gate.parity_gate(0.870, 0.891, accuracy_budget=1.0)
    assert gate.parity_gate(0.881, 0.891, accuracy_budget=1.0)  # exactly one point
    with pytest.raises(ValueError, match="accuracy_budget"):
        gate.parity_gate(0.5, 0.5, accuracy_budget=-1)


def _sst_data(tokenizer, model):
    from tfcompress.data import encoding
    from tfcompress.data import readers
    from tfcompress.models.facts import model_input_names

    examples = readers.TextClassificationExamples(
        texts=[text for text, _ in SST_ROWS], labels=[label for _, label in SST_ROWS],
        label_names=["negative", "positive"], source="conftest")
    return encoding.encode(tokenizer, examples, max_length=SEQ_LENGTH,
                              input_names=model_input_names(model))


def test_parity_gate_blocks_regressed_artifact(tmp_path, tiny_tokenizer):
    from tfcompress.evaluate.metrics import compute_metrics

    model = _model_with_spread()
    data = _sst_data(tiny_tokenizer, model)
    # Make the Keras model right on every example: a head that reads the label off the data is
    # not available, so take the Keras predictions as the labels (metric 1.0 by construction).
    features, _ = data.padded_batch(np.arange(len(data)), pad_to=SEQ_LENGTH)
    keras_logits = model(features, training=False).logits.numpy()
    data.labels = keras_logits.argmax(-1).astype(np.int32)
    reference = compute_metrics("sequence", keras_logits, data.labels, data.label_names)
    assert reference["accuracy"] == 1.0

    good = tmp_path / "good.tflite"
    tflite.to_tflite(model, "fp32", seq_length=SEQ_LENGTH, output_path=good)
    kernel, bias = model.classifier.get_weights()
    model.classifier.set_weights([-kernel, -bias])  # flips every prediction
    bad = tmp_path / "bad.tflite"
    tflite.to_tflite(model, "fp32", seq_length=SEQ_LENGTH, output_path=bad)

    kwargs = dict(data=data, keras_logits=keras_logits, reference_metrics=reference,
                  quantization="fp32", seq_length=SEQ_LENGTH, latency_runs=3, latency_warmup=1,
                  output_dir=tmp_path)
    good_record = gate.artifact_record("good", good, **kwargs)
    bad_record = gate.artifact_record("bad", bad, **kwargs)
    assert good_record["passed"] and good_record["agreement"] == 1.0
    assert not bad_record["passed"] and bad_record["agreement"] == 0.0
    expected_keys = {"name", "path", "format", "quantization", "seq_length", "sparsity", "size_bytes",
                     "gzip_bytes", "metrics", "agreement", "latency_ms", "float_ops", "integer_only", "integer_check", "passed"}
    assert expected_keys <= set(good_record)
    assert good_record["integer_only"] is False  # fp32: every op computes in float
    assert good_record["path"] == "good.tflite"
    assert set(good_record["latency_ms"]) == {"threads1", "threads2"}
    assert 0 < good_record["gzip_bytes"] < good_record["size_bytes"]


# --------------------------------------------------------------------------------------------
# Release bundle


# Text an app meets that a "split on whitespace and punctuation" recipe gets wrong: symbols BERT counts
# as punctuation (` $ ^ + < = > | ~), CJK ideographs, accents, control and zero-width characters.
HOSTILE_SENTENCES = ["`` a good movie ''", "it was $5 !", "loved it+fun=great|~^", "a東京film", "naïve Café",
                     "a\u200bgood\x07movie", "tab\tand\u00a0nbsp", "the film 's " + "a" * 120, "<great>",
                     "a\ue000good\U000f0000movie", "line\u2028and\u2029para", "a\U0002B830b\U0002B920c"]


def test_app_tokenizer_follows_tokenizer_json_on_hostile_text(tiny_tokenizer):
    """The rules written in tokenizer.json, applied literally, give the Hugging Face tokenizer's ids."""
    settings = release.tokenizer_settings(tiny_tokenizer, 24)
    vocab = tiny_tokenizer.get_vocab()
    expected = tiny_tokenizer(HOSTILE_SENTENCES, padding="max_length", truncation=True, max_length=24)["input_ids"]
    assert [app_tokenize(s, vocab, settings)[0] for s in HOSTILE_SENTENCES] == expected
    naive = dict(settings, ascii_punctuation_ranges=[], cjk_ranges=[])  # the old recipe: Unicode P* only
    assert [app_tokenize(s, vocab, naive)[0] for s in HOSTILE_SENTENCES] != expected


def test_release_bundle_runs_like_an_app(tmp_path, tiny_tokenizer):
    import json

    model = _model_with_spread()
    artifact_path = tmp_path / "int8.tflite"
    tflite.to_tflite(model, "int8", seq_length=SEQ_LENGTH, io_type="int8",
                     denylisted_ops=constants.LAYER_NORM_OPS, representative=_rows(_features(16)),
                     output_path=artifact_path)
    bundle = release.release_bundle(artifact_path, tmp_path / "release" / "int8", tiny_tokenizer,
                                   ["negative", "positive"], record={"name": "int8", "passed": True})
    assert sorted(p.name for p in bundle.iterdir()) == [
        "labels.txt", "manifest.json", "model.tflite", "tokenizer.json", "vocab.txt"]

    # The app: nothing but ai_edge_litert, numpy and the bundle's files.
    from ai_edge_litert.interpreter import Interpreter

    manifest = json.loads((bundle / "manifest.json").read_text())
    settings = json.loads((bundle / "tokenizer.json").read_text())
    vocab = {token: i for i, token in enumerate((bundle / "vocab.txt").read_text().splitlines())}
    labels = (bundle / "labels.txt").read_text().splitlines()
    runner = Interpreter(model_path=str(bundle / "model.tflite")).get_signature_runner(manifest["signature"])
    output = manifest["outputs"]["logits"]
    sentences = [text for text, _ in SST_ROWS] + ["John visited Berlin!", "Loved it, wonderful."] + HOSTILE_SENTENCES
    app_labels = []
    for sentence in sentences:
        ids, mask = app_tokenize(sentence, vocab, settings)
        inputs = {"input_ids": np.array([ids], np.int32), "attention_mask": np.array([mask], np.int32)}
        if "token_type_ids" in manifest["inputs"]:
            inputs["token_type_ids"] = np.zeros((1, len(ids)), np.int32)
        raw = runner(**inputs)["logits"]
        logits = (raw.astype(np.float32) - output["zero_point"]) * output["scale"]
        app_labels.append(labels[int(logits.argmax())])

    # The Keras model's labels, tokenised by the real tokenizer.
    encoded = tiny_tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQ_LENGTH, return_tensors="np")
    assert encoded["input_ids"].tolist() == [
        app_tokenize(s, vocab, settings)[0] for s in sentences], "app tokenizer differs from HF's"
    keras_logits = model({k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                         training=False).logits.numpy()
    keras_labels = [labels[i] for i in keras_logits.argmax(-1)]
    # int8 may flip a near-tie; require agreement wherever the Keras margin is clear.
    margin = np.abs(keras_logits[:, 1] - keras_logits[:, 0])
    clear = margin > 0.1 * (keras_logits.max() - keras_logits.min())
    assert clear.sum() >= len(sentences) // 2
    assert [a for a, c in zip(app_labels, clear) if c] == [k for k, c in zip(keras_labels, clear) if c]


def test_release_refuses_regressed_artifact(tmp_path, tiny_tokenizer):
    model = _model_with_spread()
    path = tmp_path / "fp32.tflite"
    tflite.to_tflite(model, "fp32", seq_length=SEQ_LENGTH, output_path=path)
    record = {"name": "fp32", "passed": False, "metrics": {"accuracy": 0.5}, "primary_metric": "accuracy",
              "reference_metric": 0.9, "accuracy_budget": 1.0}
    with pytest.raises(release.RegressedArtifactError, match="not released"):
        release.release_bundle(path, tmp_path / "release" / "fp32", tiny_tokenizer, ["n", "p"], record=record)
    assert not (tmp_path / "release" / "fp32").exists()
    release.release_bundle(path, tmp_path / "release" / "fp32", tiny_tokenizer, ["n", "p"], record=record,
                          allow_regression=True)
    assert (tmp_path / "release" / "fp32" / "model.tflite").exists()


def test_default_int8_float_ops_keep_the_graph_in_few_xnnpack_partitions(tmp_path):
    """XNNPACK has no int8 SOFTMAX or GELU kernel: left in int8 they split the CPU graph around every
    layer's softmax and GELU (14 partitions for the 6-layer MiniLM, 2.4 vs 1.9 ms at 2 threads);
    the pipeline's default keeps them in float and the delegated graph in a few pieces (2 for
    MiniLM; the tiny model's embedding GATHERs and pooler leave it 3)."""
    from tfcompress.config.recipe import ExportStageConfig

    model = _model_with_spread()
    default = tuple(ExportStageConfig().int8_float_ops)
    assert {"SOFTMAX", "GELU"} <= set(default)
    partitions = {}
    for name, denylist in (("default", default),
                           ("int8-softmax-gelu", tuple(op for op in default if op not in ("SOFTMAX", "GELU")))):
        path = tmp_path / f"{name}.tflite"
        tflite.to_tflite(model, "int8", seq_length=SEQ_LENGTH, representative=_rows(_features(16, seed=2)),
                         denylisted_ops=denylist, output_path=path)
        partitions[name] = runtime.xnnpack_partitions(path)
    assert 1 <= partitions["default"] <= 3, partitions
    # int8 SOFTMAX and GELU each split the graph in both of the tiny model's layers (measured 3 vs 7)
    assert partitions["int8-softmax-gelu"] >= partitions["default"] + 4, partitions


@pytest.mark.parametrize("io_type, dtype", [("float", np.float32), ("int8", np.int8)])
def test_int8_artifact_output_type_is_what_io_type_says(io_type, dtype):
    """With the float residual path (the pipeline's default) the MLIR quantizer used to quantize the
    logits output too, so ``io_type="float"`` shipped int8 logits; now the output follows io_type."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model_with_spread()
    content = tflite.to_tflite(model, "int8", seq_length=SEQ_LENGTH, representative=_rows(_features(16, seed=2)),
                               denylisted_ops=constants.DEFAULT_INT8_FLOAT_OPS, io_type=io_type)
    (output,) = Interpreter(model_content=content).get_output_details()
    assert output["dtype"] == dtype
    assert runtime.int8_kernel_count(content, "FULLY_CONNECTED")[0] > 0  # the matmuls stay int8
