"""Release bundles: an artifact that passed the gate, with its vocabulary, labels and manifest, for apps.
"""
from __future__ import annotations

import json

from pathlib import Path
from typing import Sequence

from tfcompress.config.constants import SIGNATURE_KEY, TFLITE_METADATA_MODES
from tfcompress.evaluate.runtime import TFLiteModel, sizes
from tfcompress.utils import atomic_dir, atomic_write_json, atomic_write_text, get_logger
from tfcompress.errors import ConfigError, TfcompressError
from tfcompress.export import metadata as tflite_metadata

log = get_logger("export")

# --------------------------------------------------------------------------------------------
# Release bundle for mobile apps


class RegressedArtifactError(TfcompressError, RuntimeError):
    """The artifact failed the parity gate and ``allow_regression`` was not given."""

# BERT's BasicTokenizer rules, as Hugging Face's fast BertNormalizer / BertPreTokenizer (the Rust
# `tokenizers` library) apply them; its CJK table starts the sixth range at 0x2B920 (Python BERT: 0x2B820).
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
ASCII_PUNCTUATION_RANGES = ((33, 47), (58, 64), (91, 96), (123, 126))
# What the parity gate measured, copied from the artifact record into the manifest (how it passed:
# on which split and how many examples it agreed, how far its logits moved, the budget it met).
RECORD_FIELDS = ("name", "quantization", "seq_length", "sparsity", "metrics", "primary_metric", "reference_metric",
                 "accuracy_budget", "agreement", "min_agreement", "agreement_split", "agreement_examples",
                 "agreement_test", "logit_error", "latency_ms", "float_ops", "integer_only", "integer_check",
                 "passed", "document_context", "case_segments", "weights", "int4_block_size")


def tokenizer_settings(tokenizer, seq_length: int) -> dict:
    """Every rule an app needs to reproduce the tokenizer's ids from text, in the order to apply them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    lowercase = bool(getattr(tokenizer, "do_lower_case", False))
    strip_accents, clean_text, chinese, wordpiece = None, True, True, {}
    if backend is not None:
        state = json.loads(backend.to_str())
        normalizer, wordpiece = state.get("normalizer") or {}, state.get("model") or {}
        lowercase = bool(normalizer.get("lowercase", lowercase))
        strip_accents = normalizer.get("strip_accents")
        clean_text = bool(normalizer.get("clean_text", True))
        chinese = bool(normalizer.get("handle_chinese_chars", True))
    special = {}
    for name in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token"):
        token = getattr(tokenizer, name, None)
        if token is not None:
            special[name] = {"token": token, "id": int(tokenizer.convert_tokens_to_ids(token))}
    return {
        "type": "wordpiece",
        "steps": ["clean_text", "chinese_chars", "strip_accents", "lowercase", "split", "wordpiece",
                  "add_special_tokens", "truncate_and_pad"],
        "clean_text": clean_text,
        "clean_text_rule": "drop U+0000, U+FFFD and every character of Unicode category Cc, Cf or Co (private "
                           "use) except tab, newline and carriage return; turn tab, newline, carriage return and "
                           "every character of category Zs, Zl or Zp into a space",
        "chinese_chars": chinese,
        "chinese_chars_rule": "put a space before and after every code point in cjk_ranges (inclusive)",
        "cjk_ranges": [[low, high] for low, high in CJK_RANGES],
        # BERT's normalizer strips accents when lower-casing unless told otherwise.
        "strip_accents": lowercase if strip_accents is None else bool(strip_accents),
        "strip_accents_rule": "Unicode NFD, then drop every character of category Mn",
        "lowercase": lowercase,
        "split_rule": "split on whitespace (space, tab, newline, carriage return, category Zs, Zl, Zp); then every "
                      "punctuation character is a word of its own: the ASCII code points in "
                      "ascii_punctuation_ranges (so $ ` ^ + < = > | ~ count, though Unicode calls them "
                      "symbols) and every character of a Unicode category starting with P",
        "ascii_punctuation_ranges": [[low, high] for low, high in ASCII_PUNCTUATION_RANGES],
        "wordpiece_rule": "per word, greedy longest match first from the start; pieces after the first carry "
                          "continuing_subword_prefix; a word longer than max_input_chars_per_word characters, "
                          "or with a part no vocabulary entry matches, becomes unk_token as a whole",
        "continuing_subword_prefix": wordpiece.get("continuing_subword_prefix", "##"),
        "max_input_chars_per_word": int(wordpiece.get("max_input_chars_per_word", 100)),
        "max_length": int(seq_length),
        "special_tokens_rule": "cls_token, the pieces (cut to max_length - 2), sep_token",
        "padding": "right, to max_length, with pad_token id and attention_mask 0",
        "special_tokens": special,
    }


def release_bundle(artifact_path, release_dir, tokenizer, label_names: Sequence[str], record: dict | None = None,
                   allow_regression: bool = False, metadata: str = "auto", check_texts: Sequence[str] = (),
                   check_labels: Sequence[int] | None = None, model_info: dict | None = None) -> Path:
    """Write ``release_dir`` (e.g. ``OUTPUT/release/int8``) for a mobile app, atomically.

    Contents: ``model.tflite`` (for a sequence classifier MediaPipe can run, with TFLite metadata:
    :mod:`tfcompress.export.metadata`), ``vocab.txt``, ``tokenizer.json`` (every tokenizer rule, for
    apps that tokenize themselves), ``labels.txt`` (one per line, index order) and ``manifest.json``
    (input/output names, dtypes, shapes, int8 scale/zero point of quantized I/O, metrics from
    ``record``, ``tflite_metadata``: written or why not, ``clients``: how each runtime was checked).

    Args:
        artifact_path: the ``.tflite`` file the parity gate measured.
        release_dir: the bundle directory (replaced as a whole).
        tokenizer: the model's (WordPiece) tokenizer; its vocabulary is written in id order.
        label_names: class names in logit order.
        record: the artifact record from :func:`tfcompress.runtime.artifact_record` (optional).
        allow_regression: release even if ``record["passed"]`` is False.
        metadata: ``"auto"``: MediaPipe metadata where the artifact fits and mediapipe is installed,
            else the manifest says why not; ``"required"``: an error instead; ``"off"``: none.
        check_texts: texts MediaPipe's TextClassifier classifies from the released file, compared with
            LiteRT on the same file (recorded in ``manifest["clients"]["mediapipe"]``).
        check_labels: their class ids, for the accuracy of both on them (optional).
        model_info: ``name``, ``description``, ``version`` for the metadata (defaults from ``record``).

    Raises:
        RegressedArtifactError: the record failed the parity gate and ``allow_regression`` is False.
        MetadataError / MediaPipeMissingError: ``metadata="required"`` and the artifact does not fit
            or mediapipe is missing.
        ArtifactError: the file with metadata does not give the checked file's logits.
    """
    import shutil

    if metadata not in TFLITE_METADATA_MODES:
        raise ConfigError(f"release.tflite_metadata={metadata!r}: must be one of {TFLITE_METADATA_MODES}")
    if any("\n" in name or not name.strip() for name in label_names):
        raise ConfigError(f"labels {list(label_names)!r}: a label name must be non-empty and one line (labels.txt)")
    if record is not None and not record.get("passed", True) and not allow_regression:
        raise RegressedArtifactError(
            f"{record.get('name')}: metric {record.get('metrics', {}).get(record.get('primary_metric', ''), '?')} "
            f"is more than {record.get('accuracy_budget', '?')} pt below the Keras model's "
            f"{record.get('reference_metric', '?')}; not released (pass allow_regression to override)")
    artifact = TFLiteModel(artifact_path)
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    if [vocab[token] for token in tokens] != list(range(len(tokens))):
        raise ValueError("tokenizer vocabulary ids are not contiguous from 0; cannot write vocab.txt")
    settings = tokenizer_settings(tokenizer, artifact.seq_length)
    manifest = {
        "format": "tflite",
        "signature": SIGNATURE_KEY,
        "task": "token" if len(artifact.output_details["logits"]["shape"]) == 3 else "sequence",
        **artifact.io_details(),
        "labels": list(label_names),
        "tokenizer": "tokenizer.json",
        "vocab": "vocab.txt",
    }
    if record is not None:
        for key in RECORD_FIELDS:
            if key in record:
                manifest[key] = record[key]
    manifest["clients"] = {"litert": {
        "client": "LiteRT interpreter (ai_edge_litert), the Hugging Face tokenizer's ids",
        "how": "metrics, agreement and latency above were measured on the exported file by the parity gate"
               if record is not None else "no artifact record given: not measured by the release step"}}
    with atomic_dir(release_dir) as tmp:
        model_path = Path(tmp) / "model.tflite"
        shutil.copyfile(artifact_path, model_path)
        atomic_write_text(Path(tmp) / "vocab.txt", "\n".join(tokens) + "\n")
        atomic_write_text(Path(tmp) / "labels.txt", "\n".join(label_names) + "\n")
        atomic_write_json(Path(tmp) / "tokenizer.json", settings)
        manifest["tflite_metadata"] = _add_metadata(artifact, artifact_path, Path(tmp), tokenizer, label_names,
                                                    metadata, (check_texts, check_labels), model_info, record, manifest)
        manifest.update(sizes(model_path))  # what the app downloads: the file with its metadata
        atomic_write_json(Path(tmp) / "manifest.json", manifest)
    log.info("release bundle %s", release_dir)
    return Path(release_dir)


def _add_metadata(artifact, artifact_path, folder: Path, tokenizer, label_names, mode: str, check: tuple,
                  model_info: dict | None, record: dict | None, manifest: dict) -> dict:
    """Pack MediaPipe metadata into ``folder/model.tflite`` when ``mode`` and the artifact allow; re-verify
    the file; return the manifest's ``tflite_metadata`` record (``written`` and what, or ``reason``)."""
    if mode == "off":
        return {"written": False, "reason": "release.tflite_metadata is 'off'"}
    reason = tflite_metadata.unfit_reason(artifact, tokenizer, label_names)
    if reason is None and (record or {}).get("case_segments"):
        reason = ("the model reads capitalisation in its segment ids (data.case_segments); MediaPipe's BERT "
                  "preprocessor lower-cases the text and feeds segment 0")
    if reason is None:
        reason = tflite_metadata.mediapipe_missing_reason()
        if reason is not None and mode == "required":
            raise tflite_metadata.MediaPipeMissingError(reason)
    elif mode == "required":
        raise tflite_metadata.MetadataError(f"{artifact_path}: cannot carry MediaPipe metadata: {reason}")
    if reason is not None:
        log.warning("release %s: no TFLite metadata: %s", folder.name, reason)
        return {"written": False, "reason": reason}
    artifact_name = (record or {}).get("name", Path(artifact_path).stem)
    info = {"name": f"tfcompress {artifact_name} text classifier",
            "description": f"Text classifier with {len(label_names)} classes ({', '.join(label_names[:8])}), "
                           f"{(record or {}).get('quantization', artifact_name)} TFLite; scores are logits",
            "version": artifact_name, **(model_info or {})}
    model_path = folder / "model.tflite"
    input_tensors = {role: artifact.input_details[name]["name"] for role, name in tflite_metadata.BERT_INPUTS.items()}
    written = tflite_metadata.write_metadata(artifact_path, model_path, folder / "vocab.txt", label_names,
                                             input_tensors, info["name"], info["description"], info["version"])
    rows = tflite_metadata.check_same_outputs(artifact_path, model_path, len(tokenizer.get_vocab()))
    manifest["clients"]["litert"]["how"] += (f"; the released file (with metadata) gave the same logits, bit for "
                                             f"bit, on {rows} token rows")
    texts, labels = check
    if texts:
        manifest["clients"]["mediapipe"] = tflite_metadata.check_with_mediapipe(model_path, texts, tokenizer, labels)
    mp = tflite_metadata.load_mediapipe()
    return {"written": True, "reader": "MediaPipe Tasks TextClassifier (Android, iOS, web, Python)",
            "writer": f"mediapipe {mp.version} metadata_writers.text_classifier.MetadataWriter.create_for_bert_model "
                      f"(min parser version helper: {mp.helper})",
            **{key: info[key] for key in ("name", "description", "version")},
            "min_parser_version": written.get("min_parser_version"),
            "input_tensors": dict(tflite_metadata.BERT_INPUTS), "tokenizer": "BertTokenizer (vocab.txt packed)",
            "labels": "labels.txt packed", "scores": "logits (argmax is the prediction; softmax for probabilities)"}
