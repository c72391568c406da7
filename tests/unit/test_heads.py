"""The mean-pooling sequence head (tfcompress.heads) on tiny BERT models: padding, save/load, refusals,
training, pruning and TFLite export."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import build_tiny_model
from test_models import write_pytorch_dir
from tfcompress.compress import prune
from tfcompress.config import training
from tfcompress.evaluate import runtime
from tfcompress.export import tflite
from tfcompress.models import heads
from tfcompress.models import loading
from tfcompress.models.student import make_student

IDS = np.array([[2, 5, 9, 14, 21, 3], [2, 30, 31, 3, 0, 0]], dtype=np.int32)
MASK = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=np.int32)


def _inputs(pad_to: int) -> dict:
    extra = pad_to - IDS.shape[1]
    return {"input_ids": np.pad(IDS, ((0, 0), (0, extra))), "attention_mask": np.pad(MASK, ((0, 0), (0, extra)))}


def _logits(model, inputs) -> np.ndarray:
    return model(dict(inputs), training=False).logits.numpy()


@pytest.fixture
def base_dir(tmp_path):
    """A bare-encoder PyTorch-format checkpoint (no head, like the packaged MiniLM)."""
    return write_pytorch_dir(build_tiny_model("sequence", "bert"), tmp_path / "base", drop_head=True)


def test_mean_head_equals_masked_mean_of_last_hidden_states(base_dir):
    model = loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="mean")
    assert type(model).__name__ == "TFBertMeanPoolingForSequenceClassification"
    assert not any("pooler" in w.name for w in model.weights)
    hidden = model.bert(input_ids=IDS, attention_mask=MASK, training=False).last_hidden_state.numpy()
    # by hand: the second row averages its 4 real tokens only
    means = np.stack([hidden[0].mean(0), hidden[1, :4].mean(0)])
    kernel, bias = (w.numpy() for w in model.classifier.weights)
    np.testing.assert_allclose(_logits(model, _inputs(6)), means @ kernel + bias, atol=1e-5)


def test_mean_head_logits_do_not_depend_on_padding_length(base_dir):
    model = loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="mean")
    np.testing.assert_allclose(_logits(model, _inputs(6)), _logits(model, _inputs(16)), atol=1e-5)


def test_mean_head_saves_and_reloads_as_the_same_head(base_dir, tmp_path, tiny_tokenizer):
    model = loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="mean")
    loading.save_model(model, tiny_tokenizer, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["classifier_pooling"] == "mean"
    again = loading.load_model(str(tmp_path / "saved"))  # pooling=None: what the config says
    assert type(again) is type(model)
    np.testing.assert_allclose(_logits(again, _inputs(8)), _logits(model, _inputs(8)), atol=1e-6)
    with pytest.raises(loading.LabelMismatchError, match="'mean' pooling head"):
        loading.load_model(str(tmp_path / "saved"), pooling="cls")


def test_default_pooling_is_the_architecture_cls_head(base_dir):
    model = loading.load_model(str(base_dir), labels=["neg", "pos"])
    assert type(model).__name__ == "TFBertForSequenceClassification"
    assert heads.pooling_of(model.config) == "cls"


def test_mean_pooling_is_refused_where_it_does_not_apply(base_dir, tmp_path):
    with pytest.raises(ValueError, match="token tasks"):
        loading.load_model(str(base_dir), task="token", labels=["O", "B-PER"], pooling="mean")
    with pytest.raises(ValueError, match="pooling='max'"):
        loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="max")
    roberta = write_pytorch_dir(build_tiny_model("sequence", "roberta"), tmp_path / "roberta", drop_head=True)
    with pytest.raises(ValueError, match="'roberta'"):
        loading.load_model(str(roberta), labels=["neg", "pos"], pooling="mean")


def test_mean_head_trains_prunes_and_makes_students(base_dir):
    from tfcompress._compat import keras, tf

    model = loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="mean")
    optimizer = keras.optimizers.Adam(1e-2)
    labels = np.array([1, 0])
    losses = []
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, model(_inputs(6), training=True).logits, from_logits=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        assert all(g is not None for g in gradients), "a weight of the mean head gets no gradient"
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]

    prune.apply(model, training.PruneConfig(final_sparsity=0.5), total_steps=10)
    assert len(prune.pruned_layers(model)) == 12  # 6 Dense kernels x 2 blocks; no pooler to select
    stripped = prune.strip(model)
    student = make_student(stripped, num_layers=1)
    assert type(student) is type(model) and student.config.num_hidden_layers == 1


def test_mean_head_tflite_matches_keras(base_dir, tmp_path):
    model = loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="mean")
    path = tmp_path / "fp32.tflite"
    tflite.to_tflite(model, "fp32", seq_length=16, output_path=path)
    artifact = runtime.TFLiteModel(path)
    inputs = _inputs(6)
    inputs["token_type_ids"] = np.zeros_like(inputs["input_ids"])
    np.testing.assert_allclose(artifact.predict(inputs), _logits(model, inputs), atol=1e-5)


def _sentence_transformers_layout(folder, mode: str):
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": mode == "cls",
         "pooling_mode_mean_tokens": mode == "mean", "pooling_mode_max_tokens": mode == "max"}))


@pytest.mark.parametrize("mode, expected", [("mean", "mean"), ("cls", "cls"), ("max", "cls"), (None, "cls")])
def test_auto_pooling_follows_the_sentence_transformers_checkpoint(base_dir, mode, expected):
    if mode:
        _sentence_transformers_layout(base_dir, mode)
    assert heads.checkpoint_pooling(base_dir) == (None if mode in (None, "max") else mode)
    assert loading.resolve_pooling("auto", str(base_dir)) == expected
    model = loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="auto")
    assert heads.pooling_of(model.config) == expected
    assert loading.resolve_pooling("auto", str(base_dir), task="token") == "cls"


def test_auto_pooling_refuses_to_switch_a_mean_trained_checkpoint_without_a_mean_head(tmp_path):
    from tfcompress.errors import ConfigError

    roberta = write_pytorch_dir(build_tiny_model("sequence", "roberta"), tmp_path / "roberta", drop_head=True)
    _sentence_transformers_layout(roberta, "mean")
    with pytest.raises(ConfigError, match="trained with mean pooling.*'roberta'.*--pooling cls"):
        loading.resolve_pooling("auto", str(roberta))
    assert loading.resolve_pooling("cls", str(roberta)) == "cls"
    assert loading.resolve_pooling("auto", str(tmp_path / "missing")) == "cls"


def test_int8_mean_head_quantizes_a_mean_not_a_sum(base_dir, tmp_path):
    """Full-integer export: the int8 SUM that pools the tokens feeds the classifier directly (it sums
    vectors pre-scaled by 1/count, so its int8 range is a mean's), with no int8 DIV after a long sum."""
    from ai_edge_litert.interpreter import Interpreter

    model = loading.load_model(str(base_dir), labels=["neg", "pos"], pooling="mean")
    rng = np.random.default_rng(0)
    rows = [{"input_ids": rng.integers(5, 60, size=(1, 16)).astype(np.int32),
             "attention_mask": np.ones((1, 16), np.int32), "token_type_ids": np.zeros((1, 16), np.int32)}
            for _ in range(16)]
    path = tmp_path / "int8.tflite"
    tflite.to_tflite(model, "int8", seq_length=16, representative=rows, output_path=path)
    ops = Interpreter(model_path=str(path))._get_ops_details()  # noqa: SLF001
    pooled = [op for op in ops if op["op_name"] == "SUM"][-1]
    classifier = ops[-1] if ops[-1]["op_name"] == "FULLY_CONNECTED" else ops[-2]
    assert classifier["op_name"] == "FULLY_CONNECTED" and pooled["outputs"][0] == classifier["inputs"][0]
