"""Release bundles that drop into MediaPipe Tasks: the metadata is read back by MediaPipe's own reader,
and MediaPipe's TextClassifier (the client apps use) runs the released file and agrees with LiteRT.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import SST_ROWS, build_tiny_model, import_mediapipe
from test_export import SEQ_LENGTH, _features, _model_with_spread, _rows

import_mediapipe()
from tfcompress import release  # noqa: E402
from tfcompress.config import constants  # noqa: E402
from tfcompress.export import metadata as tflite_metadata  # noqa: E402
from tfcompress.export import metadata_version  # noqa: E402
from tfcompress.export import tflite  # noqa: E402

LABELS = ["negative", "positive"]
# ASCII text, upper case and BERT's ASCII punctuation included: MediaPipe's WordPiece gives the
# Hugging Face tokenizer's ids on these (accents and control characters it does not normalise).
SENTENCES = [text for text, _ in SST_ROWS] + ["John visited Berlin!", "Loved it, wonderful.", "A GOOD MOVIE",
                                              "it was $5 !", "`` a good movie ''", "<great> fun|boring"]


def _balanced_model(tokenizer):
    """The tiny model of test_export with its head's bias moved so that SENTENCES split between the two
    labels (a random tiny model tends to put every sentence in one class)."""
    model = _model_with_spread()
    encoded = tokenizer(SENTENCES, padding="max_length", truncation=True, max_length=SEQ_LENGTH, return_tensors="np")
    logits = model({name: encoded[name] for name in ("input_ids", "attention_mask", "token_type_ids")},
                   training=False).logits.numpy()
    kernel, bias = model.classifier.get_weights()
    shift = float(np.median(logits[:, 1] - logits[:, 0])) / 2
    model.classifier.set_weights([kernel, bias + np.array([shift, -shift], np.float32)])
    return model


@pytest.fixture(scope="module")
def balanced_model(tiny_tokenizer):
    return _balanced_model(tiny_tokenizer)


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory, balanced_model):
    path = tmp_path_factory.mktemp("mediapipe") / "fp32.tflite"
    tflite.to_tflite(balanced_model, "fp32", seq_length=SEQ_LENGTH, output_path=path)
    return path


def _litert_logits(path, tokenizer, texts):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(constants.SIGNATURE_KEY)
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=SEQ_LENGTH, return_tensors="np")
    return np.concatenate([runner(**{name: encoded[name][i: i + 1].astype(np.int32)
                                     for name in ("input_ids", "attention_mask", "token_type_ids")})["logits"]
                           for i in range(len(texts))])


def test_released_model_carries_metadata_that_mediapipe_reads_back(tmp_path, fp32_artifact, tiny_tokenizer):
    info = {"name": "sst2 fp32", "description": "tiny test classifier", "version": "tfcompress 0.1.0, release config x"}
    bundle = release.release_bundle(fp32_artifact, tmp_path / "release" / "fp32", tiny_tokenizer, LABELS,
                                    record={"name": "fp32", "passed": True}, model_info=info)
    assert sorted(p.name for p in bundle.iterdir()) == [  # the side files stay, for other runtimes
        "labels.txt", "manifest.json", "model.tflite", "tokenizer.json", "vocab.txt"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["tflite_metadata"]["written"] is True
    assert manifest["size_bytes"] == (bundle / "model.tflite").stat().st_size  # the file that ships

    # MediaPipe's own reader (its compiled flatbuffer-to-JSON parser).
    from mediapipe.tasks.python.metadata import metadata as mp_metadata

    displayer = mp_metadata.MetadataDisplayer.with_model_file(str(bundle / "model.tflite"))
    read = json.loads(displayer.get_metadata_json())
    assert (read["name"], read["description"], read["version"]) == (info["name"], info["description"], info["version"])
    # What MediaPipe's golden bert_text_classifier_with_bert_tokenizer.json (written with the compiled
    # helper) records for the same kind of model.
    assert read["min_parser_version"] == "1.1.0" == manifest["tflite_metadata"]["min_parser_version"]
    (subgraph,) = read["subgraph_metadata"]
    (unit,) = subgraph["input_process_units"]
    assert unit["options_type"] == "BertTokenizerOptions"
    assert [(f["name"], f["type"]) for f in unit["options"]["vocab_file"]] == [("vocab.txt", "VOCABULARY")]
    (output,) = subgraph["output_tensor_metadata"]
    assert [(f["name"], f["type"]) for f in output["associated_files"]] == [("labels.txt", "TENSOR_AXIS_LABELS")]
    # Each input's metadata name sits on the model input it describes (MediaPipe finds ids/mask/segment by name).
    from ai_edge_litert.interpreter import Interpreter

    tensor_names = [d["name"] for d in Interpreter(model_path=str(bundle / "model.tflite")).get_input_details()]
    roles = [t["name"] for t in subgraph["input_tensor_metadata"]]
    assert sorted(roles) == ["ids", "mask", "segment_ids"]
    for role, tensor in zip(roles, tensor_names):
        assert tflite_metadata.BERT_INPUTS[role] in tensor, (role, tensor)
    # The packed files are the bundle's side files.
    assert sorted(displayer.get_packed_associated_file_list()) == ["labels.txt", "vocab.txt"]
    assert displayer.get_associated_file_buffer("vocab.txt") == (bundle / "vocab.txt").read_bytes()
    assert displayer.get_associated_file_buffer("labels.txt").decode().split() == LABELS
    # mediapipe 1.2.2 lacks the compiled version helper: the populator ran tfcompress's.
    helper = sys.modules[tflite_metadata.VERSION_HELPER_MODULE]
    if manifest["tflite_metadata"]["writer"].endswith("(min parser version helper: tfcompress)"):
        assert helper.GetMinimumMetadataParserVersion is metadata_version.GetMinimumMetadataParserVersion


@pytest.mark.parametrize("mode", ["fp32", "int8"])
def test_mediapipe_text_classifier_agrees_with_litert_on_the_released_file(mode, tmp_path, fp32_artifact,
                                                                           balanced_model, tiny_tokenizer):
    """Raw text into MediaPipe's TextClassifier vs the Hugging Face tokenizer's ids into LiteRT, same bytes."""
    from mediapipe.tasks.python.text import text_classifier

    artifact = fp32_artifact
    if mode == "int8":  # the pipeline's default int8: float logits out, LayerNorm/attention ops in float
        artifact = tmp_path / "int8.tflite"
        tflite.to_tflite(balanced_model, "int8", seq_length=SEQ_LENGTH, representative=_rows(_features(16)),
                         denylisted_ops=constants.DEFAULT_INT8_FLOAT_OPS, output_path=artifact)
    bundle = release.release_bundle(artifact, tmp_path / "release" / mode, tiny_tokenizer, LABELS,
                                    record={"name": mode, "passed": True}, check_texts=SENTENCES,
                                    check_labels=[label for _, label in SST_ROWS] + [1, 1, 1, 0, 1, 1])
    model_path = bundle / "model.tflite"
    with text_classifier.TextClassifier.create_from_model_path(str(model_path)) as classifier:
        results = [classifier.classify(text).classifications[0].categories for text in SENTENCES]
    assert all(sorted(c.category_name for c in categories) == LABELS for categories in results)
    assert all(categories[0].score == max(c.score for c in categories) for categories in results)  # best first
    top = [categories[0].category_name for categories in results]
    scores = np.array([[c.score for c in sorted(categories, key=lambda c: c.index)] for categories in results])
    logits = _litert_logits(model_path, tiny_tokenizer, SENTENCES)
    assert top == [LABELS[i] for i in logits.argmax(-1)]
    np.testing.assert_allclose(scores, logits, atol=1e-4)  # same ids, same file: the same logits
    margin = np.abs(logits[:, 1] - logits[:, 0])
    assert (margin > 0.05).sum() >= len(SENTENCES) // 2, margin  # not a set of near-ties
    assert min(top.count(label) for label in LABELS) >= 3, top  # both classes occur
    recorded = json.loads((bundle / "manifest.json").read_text())["clients"]["mediapipe"]
    assert recorded["sentences"] == len(SENTENCES) and recorded["agreement"] == 1.0
    assert recorded["equal_scores"] == len(SENTENCES)
    assert recorded["accuracy"] == recorded["accuracy_litert"]  # same labels: same accuracy


def _artifact(case, path):
    if case == "two inputs":  # BERT without segment embeddings exports input_ids and attention_mask only
        tflite.to_tflite(build_tiny_model("sequence", type_vocab_size=1), "fp32", seq_length=SEQ_LENGTH, output_path=path)
    elif case == "int8 logits":
        tflite.to_tflite(_model_with_spread(), "int8", seq_length=SEQ_LENGTH, io_type="int8",
                         representative=_rows(_features(16)), denylisted_ops=constants.LAYER_NORM_OPS, output_path=path)
    else:
        tflite.to_tflite(build_tiny_model("token", num_labels=2), "fp32", seq_length=SEQ_LENGTH, output_path=path)
    return path


@pytest.mark.parametrize("case, reason", [("two inputs", "exactly three int32 inputs"),
                                          ("int8 logits", "MediaPipe reads float32"),
                                          ("token", "no token-classification task")])
def test_an_artifact_mediapipe_cannot_run_gets_no_metadata_and_the_manifest_says_why(case, reason, tmp_path,
                                                                                    tiny_tokenizer):
    artifact = _artifact(case, tmp_path / "artifact.tflite")
    with pytest.raises(tflite_metadata.MetadataError, match=reason):
        release.release_bundle(artifact, tmp_path / "release" / "x", tiny_tokenizer, LABELS, metadata="required")
    assert not (tmp_path / "release").exists() or not any((tmp_path / "release").iterdir())  # nothing half-written
    bundle = release.release_bundle(artifact, tmp_path / "release" / "x", tiny_tokenizer, LABELS)
    record = json.loads((bundle / "manifest.json").read_text())["tflite_metadata"]
    assert record["written"] is False and reason in record["reason"]
    assert (bundle / "model.tflite").read_bytes() == artifact.read_bytes()  # shipped as checked


def test_a_model_reading_case_segments_gets_no_metadata(tmp_path, fp32_artifact, tiny_tokenizer):
    """MediaPipe's preprocessor lower-cases the text and feeds segment 0: a case-segment model would read no case."""
    record = {"name": "fp32", "passed": True, "case_segments": True}
    with pytest.raises(tflite_metadata.MetadataError, match="data.case_segments"):
        release.release_bundle(fp32_artifact, tmp_path / "required", tiny_tokenizer, LABELS, record=record,
                               metadata="required")
    bundle = release.release_bundle(fp32_artifact, tmp_path / "auto", tiny_tokenizer, LABELS, record=record)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["case_segments"] is True and manifest["tflite_metadata"]["written"] is False
    assert "segment 0" in manifest["tflite_metadata"]["reason"]


def test_missing_mediapipe_names_the_install_command(tmp_path, fp32_artifact, tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # `import mediapipe` now fails as if not installed
    with pytest.raises(tflite_metadata.MediaPipeMissingError, match="pip install --no-deps -r requirements-mediapipe"):
        release.release_bundle(fp32_artifact, tmp_path / "required", tiny_tokenizer, LABELS, metadata="required")
    assert not (tmp_path / "required").exists()
    bundle = release.release_bundle(fp32_artifact, tmp_path / "auto", tiny_tokenizer, LABELS)
    record = json.loads((bundle / "manifest.json").read_text())["tflite_metadata"]
    assert record["written"] is False and "requirements-mediapipe.txt" in record["reason"]
    off = release.release_bundle(fp32_artifact, tmp_path / "off", tiny_tokenizer, LABELS, metadata="off")
    assert json.loads((off / "manifest.json").read_text())["tflite_metadata"]["written"] is False


def test_label_names_and_required_metadata_are_checked_before_training(tmp_path, tiny_tokenizer, capsys, monkeypatch):
    from tfcompress.cli import commands as cli
    from tfcompress.models.loading import save_model
    from tfcompress.recipes import sst2

    assert sst2.DEFAULTS.release.label_names == ["negative", "positive"]  # SST-2's labels are 0 and 1
    save_model(build_tiny_model("sequence"), tiny_tokenizer, tmp_path / "model")
    integer = "text,label\n" + "".join(f"{s},{label}\n" for s, label in SST_ROWS)
    named = "text,label\n" + "".join(f"{s},{'pos' if label else 'neg'}\n" for s, label in SST_ROWS)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cases = [(integer, ["--label-names", "bad,good,neutral"], ["release.label_names", "has labels ['0', '1']"]),
             (named, ["--label-names", "bad,good"], ["release.label_names", "has labels ['neg', 'pos']"]),
             (integer, ["--set", "release.tflite_metadata=required"], ["tflite_metadata='required'",
                                                                        "requirements-mediapipe.txt"])]
    for train, options, expected in cases:
        (tmp_path / "train.csv").write_text(train)
        if "--set" in options:
            monkeypatch.setitem(sys.modules, "mediapipe", None)  # as if not installed
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["run", "custom_csv", "--smoke", "--model", str(tmp_path / "model"), "--train-file",
                      str(tmp_path / "train.csv"), "--output-dir", str(tmp_path / "out"), *options])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and all(part in line for part in expected), line
        assert not (tmp_path / "out" / "finetune").exists()
