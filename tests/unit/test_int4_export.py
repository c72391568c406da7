"""The ``int4`` export: word embeddings traced as EMBEDDING_LOOKUP, int4 weights by the LiteRT quantizer, verified."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import build_tiny_model, seeded_weights
from tfcompress._compat import tf
from tfcompress.evaluate import integer, runtime
from tfcompress.export import int4, rewrites, tflite
from tfcompress.models.facts import model_input_names
from test_export import SEQ_LENGTH, _features


def _inputs(model, features):
    return {name: features[name] for name in model_input_names(model)}


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet", "distilbert", "electra"])
def test_the_lookup_rewrite_gives_embedding_lookup_and_the_same_float_function(model_type):
    """RoBERTa and MPNet take their position ids from the token ids (the pad id 1 gets the padding
    position): the rewrite must keep them, so a token classifier's logits match Keras at every position,
    padded ones included (sequential positions would move those)."""
    model = seeded_weights(build_tiny_model("token", model_type), seed=3)
    features = _features(6, seed=4, width=SEQ_LENGTH)
    if model_type in ("roberta", "mpnet"):  # their padding index is 1
        features["input_ids"] = np.where(features["attention_mask"] == 1, features["input_ids"], 1).astype(np.int32)
    layer = getattr(model, model.base_model_prefix).embeddings
    undo = rewrites.embedding_lookups(model)
    try:
        concrete = tflite.serving_function(model, SEQ_LENGTH)
    finally:
        undo()
    assert "call" not in vars(layer)  # the layer's own call is back
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    content = tflite.convert(converter)
    assert "EMBEDDING_LOOKUP" in runtime.op_names(content)
    keras = model(_inputs(model, features), training=False).logits.numpy()
    lite = runtime.TFLiteModel(content).predict(features)
    np.testing.assert_allclose(lite, keras, atol=1e-5)


@pytest.mark.parametrize("block_size", [0, 32])
def test_int4_export_stores_matmuls_and_word_embeddings_in_four_bits(tmp_path, block_size):
    model = seeded_weights(build_tiny_model("sequence"), seed=5)
    path = tmp_path / "int4.tflite"
    int4.to_int4_tflite(model, SEQ_LENGTH, output_path=path, block_size=block_size)
    graph = integer.read_graph(path)
    int4_weights = [tensor for op in graph["ops"] for tensor in op["inputs"] if tensor["dtype"] == "int4"]
    assert int4_weights and {tensor.get("block_size", 0) for tensor in int4_weights} == {block_size}
    graph_ops = runtime.op_names(path)
    assert "EMBEDDING_LOOKUP" in graph_ops and graph_ops.count("FULLY_CONNECTED") >= 12
    storage = int4.weight_storage(path)
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    assert storage["int4"] >= vocab * hidden + 2 * (4 * hidden * hidden + 2 * hidden * 64)  # table + both layers
    assert storage["float32"] < storage["int4"] / 10  # biases, LayerNorm, small tables
    features = _features(8, seed=6, width=SEQ_LENGTH)
    keras = model(_inputs(model, features), training=False).logits.numpy()
    dynamic = runtime.TFLiteModel(tflite.to_tflite(model, "dynamic", SEQ_LENGTH)).predict(features)
    four = runtime.TFLiteModel(path).predict(features)
    # int4 steps are 16x int8's: further from Keras than dynamic-range, yet the same function
    assert np.abs(dynamic - keras).max() < np.abs(four - keras).max() < 0.5 * np.abs(keras).max()
    assert np.corrcoef(four.ravel(), keras.ravel())[0, 1] > 0.9


def test_int4_export_refuses_a_float_word_embedding_table_and_writes_nothing(tmp_path, monkeypatch):
    """Without the lookup rewrite the table is a GATHER the quantizer leaves float: refused, nothing written."""
    model = build_tiny_model("sequence")
    monkeypatch.setattr(int4, "embedding_lookups", lambda model: (lambda: None))
    path = tmp_path / "int4.tflite"
    with pytest.raises(int4.Int4ExportError, match="no EMBEDDING_LOOKUP: the word embeddings are still a GATHER"):
        int4.to_int4_tflite(model, SEQ_LENGTH, output_path=path, block_size=0)
    assert not list(tmp_path.iterdir())


def test_a_block_size_the_model_widths_do_not_take_is_refused_naming_the_field(tmp_path):
    from tfcompress.errors import ConfigError

    model = build_tiny_model("sequence")  # hidden 32, intermediate 64
    path = tmp_path / "int4.tflite"
    with pytest.raises(ConfigError, match=r"export.int4_block_size=128: .* width \[32, 64\] .* use one of \[32\]"):
        int4.to_int4_tflite(model, SEQ_LENGTH, output_path=path, block_size=128)
    with pytest.raises(ConfigError, match=r"export.int4_block_size=100: must be one of \[0, 32, 64, 128, 256\]"):
        int4.to_int4_tflite(model, SEQ_LENGTH, output_path=path, block_size=100)
    assert not list(tmp_path.iterdir())


def test_the_block_size_enters_the_export_hash_only_with_an_int4_artifact():
    from tfcompress.config.recipe import RecipeConfig
    from tfcompress.pipeline.runner import stage_config

    plain = RecipeConfig()
    assert "int4_block_size" not in stage_config(plain, "export")["export"]
    with_int4 = RecipeConfig()
    with_int4.export.modes = ["dynamic", "int4"]
    other = RecipeConfig()
    other.export.modes, other.export.int4_block_size = ["dynamic", "int4"], 0
    assert stage_config(with_int4, "export") != stage_config(other, "export")


def test_the_lookup_rewrite_names_a_model_without_an_embeddings_table():
    class Plain:
        base_model_prefix = "bert"
        bert = object()

    with pytest.raises(NotImplementedError, match=r"Plain: no embeddings layer .* at \.bert\.embeddings"):
        rewrites.embedding_lookups(Plain())


def test_int4_mode_is_opt_in_made_by_the_quantizer_and_needs_it(monkeypatch):
    import importlib.util

    from tfcompress.config.recipe import ExportStageConfig
    from tfcompress.errors import ConfigError

    assert "int4" not in ExportStageConfig().modes
    with pytest.raises(ValueError, match="to_int4_tflite"):
        tflite.ExportConfig(mode="int4")
    ExportStageConfig(modes=["dynamic", "int4"]).validate()
    with pytest.raises(ConfigError, match="export.int4_block_size=48"):
        ExportStageConfig(modes=["int4"], int4_block_size=48).validate()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ai_edge_quantizer" else real(name, *a))
    with pytest.raises(ConfigError, match=r"\['int4'\], made by the LiteRT quantizer.*requirements-integer.txt"):
        ExportStageConfig(modes=["dynamic", "int4"]).validate()


def test_a_model_past_the_quantizers_external_buffers_gets_metadata_and_the_same_logits(tmp_path, tiny_vocab_dir):
    """Past 256 KB of weights the LiteRT quantizer stores them after the flatbuffer, by offset; MediaPipe's
    metadata writer re-serializes the model and lost them. The written file holds them and gives the
    exported file's logits, bit for bit."""
    from ai_edge_litert import schema_py_generated

    from conftest import import_mediapipe
    from tfcompress.export import metadata

    import_mediapipe()
    model = seeded_weights(build_tiny_model("sequence", vocab_size=20000), seed=7)  # a 320 KB int4 table
    exported, released = tmp_path / "int4.tflite", tmp_path / "model.tflite"
    int4.to_int4_tflite(model, SEQ_LENGTH, block_size=32, output_path=exported)
    root = schema_py_generated.Model.GetRootAs(exported.read_bytes(), 0)
    assert any(root.Buffers(index).Offset() > 1 for index in range(root.BuffersLength()))  # the case
    inputs = runtime.TFLiteModel(exported).input_details
    metadata.write_metadata(exported, released, tiny_vocab_dir / "vocab.txt", ["negative", "positive"],
                            {role: inputs[name]["name"] for role, name in metadata.BERT_INPUTS.items()},
                            "tiny int4", "test", "1")
    assert metadata.check_same_outputs(exported, released, 20000) > 0
