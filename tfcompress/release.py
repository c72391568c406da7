"""Release bundles: an artifact that passed the gate, with its vocabulary, labels and manifest, for apps.
"""
from __future__ import annotations

import json

from pathlib import Path
from typing import Sequence

from tfcompress.config.constants import SIGNATURE_KEY
from tfcompress.evaluate.runtime import TFLiteModel, sizes
from tfcompress.utils import atomic_dir, atomic_write_json, atomic_write_text, get_logger
from tfcompress.errors import TfcompressError

log = get_logger("export")

# --------------------------------------------------------------------------------------------
# Release bundle for mobile apps


class RegressedArtifactError(TfcompressError, RuntimeError):
    """The artifact failed the parity gate and ``allow_regression`` was not given."""

# BERT's BasicTokenizer rules, as Hugging Face's BertNormalizer / BertPreTokenizer apply them.
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
ASCII_PUNCTUATION_RANGES = ((33, 47), (58, 64), (91, 96), (123, 126))


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
        "clean_text_rule": "drop U+0000, U+FFFD and every character of Unicode category Cc or Cf except tab, "
                           "newline and carriage return; turn tab, newline, carriage return and category Zs into "
                           "a space",
        "chinese_chars": chinese,
        "chinese_chars_rule": "put a space before and after every code point in cjk_ranges (inclusive)",
        "cjk_ranges": [[low, high] for low, high in CJK_RANGES],
        # BERT's normalizer strips accents when lower-casing unless told otherwise.
        "strip_accents": lowercase if strip_accents is None else bool(strip_accents),
        "strip_accents_rule": "Unicode NFD, then drop every character of category Mn",
        "lowercase": lowercase,
        "split_rule": "split on whitespace (space, tab, newline, carriage return, category Zs); then every "
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
                   allow_regression: bool = False) -> Path:
    """Write ``release_dir`` (e.g. ``OUTPUT/release/int8``) for a mobile app, atomically.

    Contents: ``model.tflite``, ``vocab.txt``, ``tokenizer.json`` (tfcompress's own small settings
    file: lower-casing, max length, special-token ids), ``labels.txt`` (one per line, index order)
    and ``manifest.json`` (input/output names, dtypes, shapes, int8 scale/zero point of quantized
    I/O, metrics and sizes from ``record``).

    Args:
        artifact_path: the ``.tflite`` file.
        release_dir: the bundle directory (replaced as a whole).
        tokenizer: the model's (WordPiece) tokenizer; its vocabulary is written in id order.
        label_names: class names in logit order.
        record: the artifact record from :func:`tfcompress.runtime.artifact_record` (optional).
        allow_regression: release even if ``record["passed"]`` is False.

    Raises:
        RegressedArtifactError: the record failed the parity gate and ``allow_regression`` is False.
    """
    import shutil


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
        **sizes(artifact_path),
    }
    if record is not None:
        for key in ("name", "quantization", "seq_length", "sparsity", "metrics", "agreement",
                    "latency_ms", "float_ops", "passed"):
            if key in record:
                manifest[key] = record[key]
    with atomic_dir(release_dir) as tmp:
        shutil.copyfile(artifact_path, Path(tmp) / "model.tflite")
        atomic_write_text(Path(tmp) / "vocab.txt", "\n".join(tokens) + "\n")
        atomic_write_text(Path(tmp) / "labels.txt", "\n".join(label_names) + "\n")
        atomic_write_json(Path(tmp) / "tokenizer.json", settings)
        atomic_write_json(Path(tmp) / "manifest.json", manifest)
    log.info("release bundle %s", release_dir)
    return Path(release_dir)


