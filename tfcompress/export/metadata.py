"""TFLite metadata that MediaPipe Tasks' TextClassifier reads, written by MediaPipe's own writers.

An app hands MediaPipe's ``TextClassifier`` (Android, iOS, web, Python) a string; MediaPipe tokenizes
it with its own C++ WordPiece, reading the vocabulary from the metadata packed into the ``.tflite``
file, runs the model and names the top scores with the packed label file. This module writes that
metadata with ``mediapipe.tasks.python.metadata.metadata_writers.text_classifier.MetadataWriter.
create_for_bert_model`` (mediapipe 1.2.2) and checks the result in MediaPipe itself.

What MediaPipe's BERT text path takes (``text_model_utils.cc``, ``bert_preprocessor_calculator.cc``),
and so what :func:`unfit_reason` checks: exactly three int32 ``[1, L]`` inputs (ids, mask, segment
ids: a model without segment ids, such as DistilBERT or a BERT with ``type_vocab_size`` 1, exports two
and gets no metadata); one float32 (or uint8) classification output; a WordPiece vocabulary with
``[CLS]``, ``[SEP]``, ``[UNK]`` and the padding token at id 0; lower-case text, since MediaPipe
lower-cases ASCII letters before tokenizing. It neither strips accents nor drops control characters,
so text with those can tokenize differently from the Hugging Face tokenizer (measured in the
release manifest: ``clients.mediapipe``). Scores are the model's logits, not probabilities (the writer
also stamps stats min 0 / max 1 on every float32 classification output; the TextClassifier does not
read them, and the description written here says the scores are logits).

mediapipe 1.2.x wheels lack one compiled helper the writers import,
``GetMinimumMetadataParserVersion``; :func:`provide_version_helper` supplies the Python one in
:mod:`tfcompress.export.metadata_version` (the only change to MediaPipe's code path). mediapipe is
optional: it is imported on first use, and its absence is :class:`MediaPipeMissingError`.
"""
from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path
from typing import Sequence

import numpy as np

from tfcompress.errors import ArtifactError, TfcompressError
from tfcompress.evaluate.runtime import TFLiteModel
from tfcompress.export import metadata_version
from tfcompress.utils import atomic_write_bytes

MEDIAPIPE_VERSION = "1.2.2"
# mediapipe 1.2.2 declares absl-py~=2.3, which tensorflow-model-optimization 0.8.1 (absl-py~=1.2) rules
# out, so pip refuses it as a dependency of tfcompress; installed with --no-deps it runs (absl is only
# used by its metadata command-line tool). `import mediapipe` needs cv2: the headless OpenCV wheel.
INSTALL_COMMAND = ("pip install --no-deps -r requirements-mediapipe.txt  (mediapipe==1.2.2 "
                   "opencv-python-headless==5.0.0.93)")
BERT_INPUTS = {"ids": "input_ids", "mask": "attention_mask", "segment_ids": "token_type_ids"}
VERSION_HELPER_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
CLIENT_CHECK_SENTENCES = 1000  # test sentences the release step classifies with MediaPipe (SST-2's 872 fit)
SAME_OUTPUT_INPUTS = 16  # random token rows on which the released file must match the checked one exactly


class MetadataError(TfcompressError, ValueError):
    """An artifact cannot carry MediaPipe metadata (inputs, output, tokenizer) where it was required."""


class MediaPipeMissingError(TfcompressError, ImportError):
    """mediapipe is not installed (or does not import) and metadata was required."""


def provide_version_helper() -> str:
    """Make ``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`` importable.

    The one place tfcompress adds to MediaPipe: when the compiled helper is missing (mediapipe 1.2.x),
    a module object holding :func:`metadata_version.GetMinimumMetadataParserVersion` is registered
    under that name (with empty packages for the missing parents) before the writers are imported.
    Returns ``"compiled"`` when mediapipe ships the helper (then it is used), else ``"tfcompress"``.
    """
    existing = sys.modules.get(VERSION_HELPER_MODULE)
    if existing is not None:
        return "tfcompress" if getattr(existing, "PROVIDED_BY_TFCOMPRESS", False) else "compiled"
    try:
        importlib.import_module(VERSION_HELPER_MODULE)
        return "compiled"
    except ImportError:
        pass
    names = VERSION_HELPER_MODULE.split(".")
    parent = sys.modules["mediapipe.tasks"]
    for depth in range(3, len(names)):
        name = ".".join(names[:depth + 1])
        module = sys.modules.get(name)
        if module is None:
            try:
                module = importlib.import_module(name)
            except ImportError:
                module = types.ModuleType(name, "Stand-in package for a compiled helper mediapipe does not ship.")
                if depth < len(names) - 1:
                    module.__path__ = []
                else:
                    module.__doc__ = "GetMinimumMetadataParserVersion in Python (tfcompress.export.metadata_version)."
                    module.GetMinimumMetadataParserVersion = metadata_version.GetMinimumMetadataParserVersion
                    module.PROVIDED_BY_TFCOMPRESS = True
                sys.modules[name] = module
        setattr(parent, names[depth], module)
        parent = module
    return "tfcompress"


def load_mediapipe() -> types.SimpleNamespace:
    """mediapipe's version, writers, reader and TextClassifier, with the version helper provided.

    Raises:
        MediaPipeMissingError: mediapipe is not installed or does not import (the message says how to
            install it).
    """
    try:
        import mediapipe
        from mediapipe.tasks.python.text import text_classifier as classifier
        from mediapipe.tasks.python.core import base_options
    except ImportError as error:
        raise MediaPipeMissingError(f"TFLite metadata for MediaPipe needs mediapipe {MEDIAPIPE_VERSION} ({error}); "
                                    f"install it with: {INSTALL_COMMAND}") from None
    helper = provide_version_helper()
    from mediapipe.tasks.python.metadata import metadata as reader
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer, text_classifier
    return types.SimpleNamespace(version=mediapipe.__version__, helper=helper, reader=reader, writer=metadata_writer,
                                 info=metadata_info, text_writer=text_classifier, classifier=classifier,
                                 base_options=base_options)


def mediapipe_missing_reason() -> str | None:
    """None when mediapipe imports, else one line saying why and how to install it."""
    try:
        load_mediapipe()
    except MediaPipeMissingError as error:
        return str(error)
    return None


def unfit_reason(artifact: TFLiteModel, tokenizer, label_names: Sequence[str]) -> str | None:
    """Why MediaPipe's BERT text classifier cannot run ``artifact`` with ``tokenizer``'s vocabulary (None: it can)."""
    logits = artifact.output_details["logits"]
    if len(logits["shape"]) != 2:
        return ("token classification: MediaPipe Tasks has no token-classification task (its TextClassifier "
                "reads one score per class); use the side files with LiteRT")
    if int(logits["shape"][1]) != len(label_names):
        return f"the logits output has {int(logits['shape'][1])} classes but there are {len(label_names)} labels"
    if np.dtype(logits["dtype"]) not in (np.float32, np.uint8):
        return (f"the logits output is {np.dtype(logits['dtype']).name}; MediaPipe reads float32 (or uint8) "
                "scores: export with io_type float (the default)")
    names = sorted(artifact.input_names)
    if names != sorted(BERT_INPUTS.values()):
        return (f"the artifact takes {len(names)} inputs ({', '.join(names)}); MediaPipe's BERT text path takes "
                "exactly three int32 inputs (ids, mask, segment ids), so a model without segment ids "
                "(DistilBERT, type_vocab_size 1) cannot carry its metadata")
    for name in names:
        detail = artifact.input_details[name]
        if np.dtype(detail["dtype"]) != np.int32 or len(detail["shape"]) != 2 or int(detail["shape"][0]) != 1:
            return f"input {name} is {np.dtype(detail['dtype']).name} {list(detail['shape'])}; MediaPipe needs int32 [1, L]"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model_type = json.loads(backend.to_str()).get("model", {}).get("type") if backend is not None else None
    if model_type != "WordPiece":
        return f"the tokenizer is {model_type or type(tokenizer).__name__}, not WordPiece (MediaPipe's BertTokenizer)"
    vocab = tokenizer.get_vocab()
    missing = [token for token in ("[CLS]", "[SEP]", "[UNK]") if token not in vocab]
    if missing:
        return f"the vocabulary lacks {missing}; MediaPipe's BERT preprocessor adds [CLS]/[SEP] and maps unknowns to [UNK]"
    if tokenizer.pad_token_id != 0:
        return f"the padding token has id {tokenizer.pad_token_id}; MediaPipe pads with id 0"
    if not getattr(tokenizer, "do_lower_case", False):
        return "the tokenizer is cased; MediaPipe lower-cases the text before WordPiece"
    return None


def inline_buffers(content: bytes) -> bytes:
    """The same model with every constant inside the flatbuffer (what MediaPipe's metadata writer needs).

    Above 256 KB of weights the LiteRT quantizer (``integer``, ``int4``) appends them after the flatbuffer
    and points at them by offset. LiteRT reads that, but the metadata writer re-serializes the model
    without them and wrote a file LiteRT refused ("Constant buffer 28 specified an out of range offset", a
    4-layer SST-2 model in int4). LiteRT's own ``flatbuffer_utils`` reads the offsets back into the buffers.
    """
    from ai_edge_litert import schema_py_generated
    from ai_edge_litert.tools import flatbuffer_utils

    root = schema_py_generated.Model.GetRootAs(content, 0)
    if not any(root.Buffers(index).Offset() > 1 for index in range(root.BuffersLength())):
        return content
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flatbuffer_utils.read_model_from_bytearray(
        bytearray(content))))


def write_metadata(model_path, output_path, vocab_path, label_names: Sequence[str], input_tensors: dict[str, str],
                   name: str, description: str, version: str) -> dict:
    """Write ``model_path`` with MediaPipe text-classifier metadata to ``output_path`` (atomically).

    Args:
        model_path: the ``.tflite`` without metadata.
        output_path: where the file with metadata goes (may be ``model_path``).
        vocab_path: the WordPiece ``vocab.txt`` packed as the BertTokenizer's vocabulary.
        label_names: class names in logit order, packed as ``labels.txt``.
        input_tensors: TFLite tensor names of ``ids``, ``mask`` and ``segment_ids``.
        name / description / version: the model's general metadata.

    Returns:
        The metadata as MediaPipe's displayer prints it (parsed JSON).
    """
    mp = load_mediapipe()
    writer = mp.text_writer.MetadataWriter.create_for_bert_model(
        bytearray(inline_buffers(Path(model_path).read_bytes())), mp.writer.BertTokenizer(str(vocab_path)),
        mp.writer.Labels().add(list(label_names)), ids_name=input_tensors["ids"],
        mask_name=input_tensors["mask"], segment_name=input_tensors["segment_ids"])
    # create_for_bert_model names the model "TextClassifier"; its add_general_info takes no version,
    # which GeneralMd (what add_general_info stores) has: set the whole general record.
    writer.writer._general_md = mp.info.GeneralMd(name=name, version=version, description=description)  # noqa: SLF001
    content, metadata_json = writer.populate()
    atomic_write_bytes(output_path, bytes(content))
    return json.loads(metadata_json)


def read_metadata(model_path) -> tuple[dict, list[str]]:
    """The metadata JSON and the packed file names, as MediaPipe's ``MetadataDisplayer`` reads them."""
    displayer = load_mediapipe().reader.MetadataDisplayer.with_model_file(str(model_path))
    return json.loads(displayer.get_metadata_json()), list(displayer.get_packed_associated_file_list())


def check_same_outputs(checked_path, released_path, vocab_size: int, count: int = SAME_OUTPUT_INPUTS) -> int:
    """Run both files with LiteRT on ``count`` seeded token rows of varied length; every logit must be equal.

    Raises:
        ArtifactError: an output differs (the released file is not the one the gate measured).
    """
    checked, released = TFLiteModel(checked_path), TFLiteModel(released_path)
    rng = np.random.default_rng(0)
    length = checked.seq_length
    for row in range(count):
        used = int(rng.integers(2, length + 1))
        features = {"input_ids": np.zeros((1, length), np.int32), "attention_mask": np.zeros((1, length), np.int32),
                    "token_type_ids": np.zeros((1, length), np.int32)}
        features["input_ids"][0, :used] = rng.integers(0, vocab_size, size=used)
        features["attention_mask"][0, :used] = 1
        features = {name: features[name] for name in checked.input_names}
        if not np.array_equal(checked.predict(features), released.predict(features)):
            raise ArtifactError(f"{released_path}: logits differ from {checked_path} on test row {row} after "
                                "writing metadata; not released")
    return count


def mediapipe_scores(model_path, texts: Sequence[str]) -> np.ndarray:
    """``[len(texts), num_classes]`` scores from MediaPipe's TextClassifier (CPU) on the raw texts."""
    mp = load_mediapipe()
    options = mp.classifier.TextClassifierOptions(
        base_options=mp.base_options.BaseOptions(model_asset_path=str(model_path)))
    rows = []
    with mp.classifier.TextClassifier.create_from_options(options) as classifier:
        for text in texts:
            categories = classifier.classify(text).classifications[0].categories
            row = np.full(len(categories), np.nan, np.float32)
            for category in categories:
                row[category.index] = category.score
            rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def check_with_mediapipe(model_path, texts: Sequence[str], tokenizer, labels: Sequence[int] | None = None) -> dict:
    """MediaPipe's TextClassifier on the raw texts vs LiteRT on the Hugging Face tokenizer's ids, same file.

    Args:
        labels: the texts' class ids; adds ``accuracy`` (MediaPipe's) and ``accuracy_litert``.

    Returns:
        ``client``, ``how``, ``sentences``, ``agreement`` (share of equal top classes),
        ``disagreements`` (up to five texts), ``equal_scores`` (sentences whose logits match within 1e-4:
        MediaPipe's WordPiece gave the Hugging Face ids) and ``max_score_difference`` (largest logit gap).
    """
    mp = load_mediapipe()
    artifact = TFLiteModel(model_path)
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=artifact.seq_length,
                        return_tensors="np")
    litert = artifact.predict({name: encoded[name] for name in artifact.input_names})
    scores = mediapipe_scores(model_path, texts)
    equal = scores.argmax(-1) == litert.argmax(-1)
    gaps = np.abs(scores - litert).max(-1) if len(texts) else np.zeros(0)
    return {
        "client": f"MediaPipe Tasks {mp.version} TextClassifier (Python, CPU)",
        "how": "raw text in, MediaPipe's WordPiece from the packed vocabulary; top class compared with LiteRT "
               "on the same file fed the Hugging Face tokenizer's ids",
        "sentences": len(texts),
        "agreement": round(float(equal.mean()), 6) if len(texts) else None,
        "disagreements": [text for text, same in zip(texts, equal) if not same][:5],
        "equal_scores": int((gaps < 1e-4).sum()),
        "max_score_difference": round(float(gaps.max()), 6) if len(texts) else None,
        **({"accuracy": round(float((scores.argmax(-1) == np.asarray(labels)).mean()), 6),
            "accuracy_litert": round(float((litert.argmax(-1) == np.asarray(labels)).mean()), 6)}
           if labels is not None and len(texts) else {}),
    }
