"""Shared fixtures: a tiny WordPiece vocabulary and tiny BERT-family models built from configs.

Nothing is downloaded: every model here is randomly initialised from a config small enough
(2 layers, hidden 32) that a training step takes milliseconds on 2 CPU cores.
"""
from __future__ import annotations

import string
from pathlib import Path

import pytest

import tfcompress._compat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before transformers imports TF)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an movie film story it is was not very and of to in on with good great fun loved "
    "wonderful bad terrible boring hated awful john smith mary london paris germany berlin eu "
    "reuters said told visit visited team won lost cup . , ! ?"
).split()
SUFFIXES = ["##s", "##ing", "##ed", "##ly", "##er"]
LETTERS = list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase] + list(string.digits)
VOCAB = list(dict.fromkeys(SPECIAL_TOKENS + WORDS + SUFFIXES + LETTERS))  # no duplicate entries


@pytest.fixture(autouse=True)
def float32_policy():
    """Every test starts under the float32 Keras policy, so one that trains in bfloat16 cannot
    change the numbers of the tests that run after it; a test that leaves another policy fails."""
    from tfcompress._compat import keras

    keras.mixed_precision.set_global_policy("float32")
    yield
    left = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    assert left == "float32", f"the test left the global Keras dtype policy at {left!r}"


@pytest.fixture(scope="session")
def tiny_vocab_dir(tmp_path_factory) -> Path:
    """A directory holding vocab.txt and a BertTokenizerFast saved next to it (lower-casing)."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_vocab_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_vocab_dir))


def tiny_config(model_type: str = "bert", **overrides):
    """A 2-layer, hidden-32 config of the given family with dropout off (deterministic steps)."""
    from transformers import AutoConfig

    common = dict(vocab_size=len(VOCAB), pad_token_id=0)
    if model_type == "distilbert":
        kwargs = dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=512,
                      dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    else:
        kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=512, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, type_vocab_size=2)
        if model_type == "roberta":
            kwargs["max_position_embeddings"] = 514  # RoBERTa offsets positions by padding_idx + 1
            common["pad_token_id"] = 1
        if model_type == "electra":
            kwargs["embedding_size"] = 16
    kwargs.update(common)
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def build_tiny_model(task: str = "sequence", model_type: str = "bert", num_labels: int = 2, **overrides):
    """Build (and call once) a tiny TF model for ``task`` in {"sequence", "token"}."""
    from tfcompress._compat import tf
    from transformers import TFAutoModelForSequenceClassification, TFAutoModelForTokenClassification

    tf.random.set_seed(0)
    config = tiny_config(model_type, num_labels=num_labels, **overrides)
    cls = TFAutoModelForSequenceClassification if task == "sequence" else TFAutoModelForTokenClassification
    model = cls.from_config(config)
    model(model.dummy_inputs, training=False)
    return model


def seeded_weights(model, seed: int = 0):
    """Re-draw every weight from a NumPy seed (BERT-style N(0, 0.02); LayerNorm gamma 1, biases 0).

    tf_keras initializers ignore ``tf.random.set_seed`` across processes, so a test whose outcome
    depends on the starting point (e.g. "loss falls by half in 40 steps") uses this to start from
    the same weights on every machine.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        name = weight.name
        if "gamma" in name:
            values.append(np.ones(weight.shape, np.float32))
        elif "beta" in name or "bias" in name:
            values.append(np.zeros(weight.shape, np.float32))
        else:
            values.append(rng.normal(0.0, 0.02, size=weight.shape).astype(np.float32))
    model.set_weights(values)
    return model


def _save_tiny_mpnet(folder: Path, task: str, num_labels: int, labels=None) -> Path:
    from transformers import MPNetTokenizerFast, TFAutoModelForSequenceClassification, TFAutoModelForTokenClassification

    from tfcompress._compat import tf
    from tfcompress.models.loading import save_model

    words = [w for w in VOCAB if w not in SPECIAL_TOKENS]
    (folder / "vocab.txt").write_text("\n".join(["<s>", "<pad>", "</s>", "<unk>", "[UNK]"] + words + ["extra", "words", "<mask>"]))
    tokenizer = MPNetTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tf.random.set_seed(0)
    extra = {"id2label": dict(enumerate(labels)), "label2id": {l: i for i, l in enumerate(labels)}} if labels else {}
    config = tiny_config("mpnet", vocab_size=len(tokenizer), pad_token_id=1, max_position_embeddings=514,
                         num_labels=num_labels, **extra)
    cls = TFAutoModelForSequenceClassification if task == "sequence" else TFAutoModelForTokenClassification
    model = cls.from_config(config)
    model(model.dummy_inputs, training=False)
    save_model(seeded_weights(model, seed=3), tokenizer, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_mpnet_token_dir(tmp_path_factory) -> Path:
    """A saved tiny MPNet token classifier (CoNLL's 9 tags) with its own vocabulary (see tiny_mpnet_dir)."""
    return _save_tiny_mpnet(tmp_path_factory.mktemp("tiny_mpnet_token"), "token", 9, CONLL_LABELS)


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory) -> Path:
    """A saved tiny MPNet sequence classifier with its own WordPiece vocabulary: MPNet's special tokens
    (<s>, </s>, <pad>, <mask>...), two extra words, so a vocabulary size and token ids that differ from
    the tiny BERT's: a teacher of another architecture and tokenizer."""
    return _save_tiny_mpnet(tmp_path_factory.mktemp("tiny_mpnet"), "sequence", 2)


@pytest.fixture
def tiny_bert():
    """Tiny BERT sequence classifier (2 labels)."""
    return build_tiny_model("sequence", "bert")


@pytest.fixture
def tiny_bert_token():
    """Tiny BERT token classifier with the 9 CoNLL IOB2 labels."""
    return build_tiny_model("token", "bert", num_labels=9)


CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]

SST_ROWS = [
    ("a good movie", 1), ("a great film", 1), ("it was fun", 1), ("loved it", 1),
    ("a wonderful story", 1), ("very good", 1), ("a bad movie", 0), ("a terrible film", 0),
    ("it was boring", 0), ("hated it", 0), ("an awful story", 0), ("very bad", 0),
]

CONLL_TEXT = """-DOCSTART- -X- -X- O

john NNP B-NP B-PER
smith NNP I-NP I-PER
visited VBD B-VP O
london NNP B-NP B-LOC
. . O O

the DT B-NP O
eu NNP I-NP B-ORG
said VBD B-VP O
it PRP B-NP O
won VBD B-VP O
. . O O

mary NNP B-NP B-PER
told VBD B-VP O
reuters NNP B-NP B-ORG
in IN B-PP O
berlin NNP B-NP B-LOC
. . O O
"""


@pytest.fixture
def sst_tsv(tmp_path) -> Path:
    """A tiny SST-2-format TSV (header ``sentence<TAB>label``), 12 rows, both labels."""
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in SST_ROWS))
    return path


@pytest.fixture
def conll_file(tmp_path) -> Path:
    """A tiny CoNLL-2003-format file (3 sentences, IOB2, with a -DOCSTART- line)."""
    path = tmp_path / "train.txt"
    path.write_text(CONLL_TEXT)
    return path


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def import_mediapipe():
    """mediapipe (requirements-mediapipe.txt); skip without it, except in CI, whose test command installs it."""
    import importlib
    import os

    if os.environ.get("CI"):
        return importlib.import_module("mediapipe")
    return pytest.importorskip("mediapipe", reason="mediapipe not installed: pip install --no-deps -r "
                                                   "requirements-mediapipe.txt")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` for the slow tier; skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def app_tokenize(text, vocab, settings):
    """BERT WordPiece as an app would write it from ``tokenizer.json`` alone: each step as its rule
    says, with the CJK and ASCII-punctuation ranges read from the file."""
    import unicodedata

    def in_ranges(char, ranges):
        return any(low <= ord(char) <= high for low, high in ranges)

    if settings["clean_text"]:
        kept = []
        for char in text:
            if ord(char) in (0, 0xFFFD) or (unicodedata.category(char) in ("Cc", "Cf", "Co") and char not in "\t\n\r"):
                continue
            kept.append(" " if char in "\t\n\r" or unicodedata.category(char) in ("Zs", "Zl", "Zp") else char)
        text = "".join(kept)
    if settings["chinese_chars"]:
        text = "".join(f" {c} " if in_ranges(c, settings["cjk_ranges"]) else c for c in text)
    if settings["strip_accents"]:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    if settings["lowercase"]:
        text = text.lower()
    words = []
    for chunk in text.split():
        word = ""
        for char in chunk:
            if in_ranges(char, settings["ascii_punctuation_ranges"]) or unicodedata.category(char).startswith("P"):
                words += [word, char] if word else [char]
                word = ""
            else:
                word += char
        if word:
            words.append(word)
    special = settings["special_tokens"]
    ids = [special["cls_token"]["id"]]
    for word in words:
        start, pieces = 0, []
        if len(word) > settings["max_input_chars_per_word"]:
            pieces, start = [special["unk_token"]["id"]], len(word)
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else settings["continuing_subword_prefix"] + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    break
                end -= 1
            if end == start:
                pieces = [special["unk_token"]["id"]]
                break
            start = end
        ids += pieces
    length = settings["max_length"]
    ids = ids[: length - 1] + [special["sep_token"]["id"]]
    mask = [1] * len(ids) + [0] * (length - len(ids))
    ids = ids + [special["pad_token"]["id"]] * (length - len(ids))
    return ids, mask
