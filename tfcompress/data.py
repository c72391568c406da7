"""Task data: readers, tokenisation with label alignment, length-bucketed batches and ``tf.data``.

Data flows one way::

    read_text_classification(path) / read_conll(path)   -> *Examples   (words and label names)
    encode(tokenizer, examples, max_length)             -> EncodedData (unpadded int32 arrays)
    EncodedData.tf_dataset(batch_size, shuffle, seed, epoch, skip_batches)   -> batches padded per batch

Readers fail on bad input with :class:`DataError`, whose message starts with ``path:line:`` and
says what was expected, so a user can open the file at the right line.

Example::

    from tfcompress.data import read_text_classification, encode
    train = read_text_classification("../shared/data/sst2/train.tsv")
    encoded = encode(tokenizer, train, max_length=128)
    dataset = encoded.tf_dataset(batch_size=32, shuffle=True, seed=42, epoch=0)

Caveats:
    * Padding is per batch (to the longest sequence in the batch), so batch widths vary; code that
      needs a fixed width (TFLite) passes ``pad_to``.
    * The token task keeps the tag only on the first sub-token of each word. Words cut off by
      ``max_length`` (counted in ``num_truncated``) and words the tokenizer maps to no sub-token at
      all (counted in ``num_words_dropped``) take no part in the loss or in metrics computed from
      ``labels``: entity F1 on truncated examples is computed over the words that were kept.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tfcompress import _compat  # noqa: F401  (sets TF_USE_LEGACY_KERAS before transformers/tf)
from tfcompress.utils import get_logger

IGNORE_INDEX = -100
TASKS = ("sequence", "token")
BUCKET_CHUNK_BATCHES = 50  # batches per length-sorting chunk: enough to group similar lengths,
# few enough that a batch still mixes examples from 1/50 of the shuffled data set.
_TOKENIZE_CHUNK = 1000  # examples per tokenizer call: the fast tokenizer batches in Rust

_log = get_logger("data")


class DataError(ValueError):
    """Bad input data. The message reads ``path:line: what was wrong; expected ...``."""

    def __init__(self, path, line: int | None, problem: str, expected: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.expected = expected
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}; expected {expected}")


# --------------------------------------------------------------------------------------------
# Examples and readers
# --------------------------------------------------------------------------------------------


@dataclass
class TextClassificationExamples:
    """Texts with one label each.

    Args:
        texts: the input texts.
        labels: label ids, indices into ``label_names``.
        label_names: names of the classes, index = label id.
        source: where the examples came from (a path).
    """

    texts: list[str]
    labels: list[int]
    label_names: list[str]
    source: str

    task = "sequence"

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TokenClassificationExamples:
    """Sentences of words with one IOB2 tag per word.

    Args:
        words: per sentence, its words.
        tags: per sentence, one IOB2 tag string per word (IOB1 input is converted on reading).
        label_names: tag vocabulary, index = label id.
        source: where the examples came from (a path).
    """

    words: list[list[str]]
    tags: list[list[str]]
    label_names: list[str]
    source: str

    task = "token"

    def __len__(self) -> int:
        return len(self.words)


def _read_text(path: Path) -> str:
    """The file's text (UTF-8, BOM dropped); undecodable bytes raise DataError at their line."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(path, line, f"bytes that are not UTF-8 ({error.reason})", "a UTF-8 text file") from None


def _text_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz"):
        if name.endswith(suffix):
            raise DataError(path, None, f"compressed file ({suffix})", "an uncompressed .tsv, .csv or .jsonl file")
    suffix = path.suffix.lower()
    formats = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
    if suffix not in formats:
        raise DataError(path, None, f"unknown extension {suffix!r}", "one of .tsv, .csv, .jsonl")
    return formats[suffix]


def _raw_label(value, path, line, column) -> str:
    """A label value as a string; JSON ints stay ints-as-strings, other JSON types are refused."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, list, dict)):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        raise DataError(path, line, f"label {value!r} in column {column!r} is not a string or integer",
                        "an integer or a string label")
    text = str(value).strip()
    if not text:
        raise DataError(path, line, f"empty label in column {column!r}", "an integer or a string label")
    return text


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _rows_delimited(path: Path, text: str, fmt: str, text_column: str, label_column: str):
    """Yield (line, text, raw_label) from a TSV/CSV with a header row."""
    if fmt == "tsv":
        # SST-2 sentences contain quote characters: a quote is just a character in a TSV.
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
        described = "tab-separated"
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=",")
        described = "comma-separated"
    try:
        header = None
        for row in reader:
            if row and any(cell.strip() for cell in row):
                header = [cell.strip() for cell in row]
                break
        if header is None:
            raise DataError(path, 1, "empty file", f"a {described} header naming columns "
                            f"{text_column!r} and {label_column!r}, then one row per example")
        header_line = reader.line_num
        for column in (text_column, label_column):
            if column not in header:
                raise DataError(path, header_line, f"no column {column!r} in header {header}",
                                f"a header with columns {text_column!r} and {label_column!r} "
                                "(set text_column=/label_column= for other names)")
        text_index, label_index = header.index(text_column), header.index(label_column)
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (often the last one)
            if len(row) != len(header):
                raise DataError(path, line, f"row has {len(row)} fields", f"{len(header)} {described} "
                                f"fields like the header {header}")
            yield line, row[text_index], _raw_label(row[label_index], path, line, label_column)
    except csv.Error as error:
        raise DataError(path, reader.line_num, f"malformed row ({error})", f"a {described} row") from None


def _rows_jsonl(path: Path, text: str, text_column: str, label_column: str):
    """Yield (line, text, raw_label) from JSON Lines: one object per line."""
    seen_any = False
    for line, content in enumerate(text.split("\n"), start=1):
        if not content.strip():
            continue
        seen_any = True
        try:
            record = json.loads(content)
        except json.JSONDecodeError as error:
            raise DataError(path, line, f"invalid JSON ({error.msg} at column {error.colno})",
                            "one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(path, line, f"a JSON {type(record).__name__}, not an object",
                            "one JSON object per line")
        for column in (text_column, label_column):
            if column not in record:
                raise DataError(path, line, f"no key {column!r} (keys: {sorted(record)})",
                                f"keys {text_column!r} and {label_column!r} "
                                "(set text_column=/label_column= for other names)")
        value = record[text_column]
        if not isinstance(value, str):
            raise DataError(path, line, f"{text_column!r} is a {type(value).__name__}", "a string")
        yield line, value, _raw_label(record[label_column], path, line, label_column)
    if not seen_any:
        raise DataError(path, 1, "empty file", f"one JSON object per line with keys {text_column!r} "
                        f"and {label_column!r}")


def _infer_label_names(raw_labels: Sequence[str]) -> list[str]:
    unique = set(raw_labels)
    if all(_is_int(value) for value in unique):
        return [str(value) for value in sorted({int(value) for value in unique})]
    return sorted(unique)


def read_text_classification(path, text_column: str = "sentence", label_column: str = "label",
                             label_names: Sequence[str] | None = None) -> TextClassificationExamples:
    """Read a text-classification file; the format comes from the extension.

    ``.tsv`` (tab-separated, header row, quotes are ordinary characters), ``.csv`` (comma-separated,
    header row, standard CSV quoting) or ``.jsonl`` (one JSON object per line). SST-2's
    ``sentence<TAB>label`` files work with the defaults.

    Args:
        path: the file.
        text_column: column (or JSON key) holding the text.
        label_column: column (or JSON key) holding the label, an integer or a string.
        label_names: the classes, in label-id order. A label equal to a name gets that name's index;
            otherwise an integer label ``0 <= k < len(label_names)`` is taken as the index. Any other
            label raises DataError. When None, the names are inferred from this file: integer labels
            sorted numerically (names are their strings: ``["0", "1"]``), otherwise strings sorted.
            Pass the training file's ``label_names`` when reading evaluation files, so that a class
            missing from a small file does not shift the ids.

    Returns:
        TextClassificationExamples.

    Raises:
        DataError: empty file, missing column, malformed row, empty label, unknown label.
    """
    path = Path(path)
    fmt = _text_format(path)
    text = _read_text(path)
    if fmt == "jsonl":
        rows = list(_rows_jsonl(path, text, text_column, label_column))
    else:
        rows = list(_rows_delimited(path, text, fmt, text_column, label_column))
    if not rows:
        raise DataError(path, 2, "no examples after the header", "at least one row")

    if label_names is None:
        names = _infer_label_names([raw for _, _, raw in rows])
    else:
        names = [str(name) for name in label_names]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"label_names={list(label_names)!r}: must be non-empty and without duplicates")
    index = {name: i for i, name in enumerate(names)}
    texts, labels = [], []
    for line, sentence, raw in rows:
        label = index.get(raw)
        if label is None and label_names is not None and _is_int(raw) and 0 <= int(raw) < len(names):
            label = int(raw)
        if label is None and label_names is None and _is_int(raw):
            label = index.get(str(int(raw)))  # "01" -> "1"
        if label is None:
            raise DataError(path, line, f"unknown label {raw!r}",
                            f"one of {names} or an integer index below {len(names)}")
        texts.append(sentence)
        labels.append(label)
    return TextClassificationExamples(texts=texts, labels=labels, label_names=names, source=str(path))


def _valid_tag(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[:2] in ("B-", "I-"))


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """Convert IOB1 tags to IOB2: an ``I-X`` that does not continue an ``X`` entity starts one (``B-X``).

    IOB2 input comes back unchanged, so this also normalises files of unknown scheme.
    """
    out, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def read_conll(path, label_names: Sequence[str] | None = None) -> TokenClassificationExamples:
    """Read a CoNLL file: one word per line, first column the word, last column its tag.

    Sentences are separated by blank lines; ``-DOCSTART-`` lines are skipped. Tags are ``O``,
    ``B-TYPE`` or ``I-TYPE``; IOB1 files (``I-`` starting an entity) are converted to IOB2.

    Args:
        path: the file.
        label_names: the tag vocabulary, in label-id order (after IOB2 conversion). Tags outside it
            raise DataError. When None: ``O`` first, then entity types sorted, each ``B-`` then ``I-``
            (for CoNLL-2003 ``O, B-LOC, I-LOC, B-MISC, I-MISC, B-ORG, I-ORG, B-PER, I-PER``). Pass the
            training file's names when reading evaluation files.

    Returns:
        TokenClassificationExamples with IOB2 tags.

    Raises:
        DataError: empty file, a line with fewer than 2 columns, an invalid or unknown tag.
    """
    path = Path(path)
    text = _read_text(path)
    sentences: list[tuple[list[str], list[str], list[int]]] = []
    words, tags, lines = [], [], []
    for line, content in enumerate(text.split("\n"), start=1):
        columns = content.split()
        if not columns:
            if words:
                sentences.append((words, tags, lines))
                words, tags, lines = [], [], []
            continue
        if columns[0] == "-DOCSTART-":
            continue
        if len(columns) < 2:
            raise DataError(path, line, f"line has 1 column ({content.strip()!r})",
                            "'word ... tag' with at least 2 whitespace-separated columns")
        tag = columns[-1]
        if not _valid_tag(tag):
            raise DataError(path, line, f"invalid tag {tag!r}", "O, B-TYPE or I-TYPE (IOB1 or IOB2) "
                            "in the last column")
        words.append(columns[0])
        tags.append(tag)
        lines.append(line)
    if words:
        sentences.append((words, tags, lines))
    if not sentences:
        raise DataError(path, 1, "empty file (no sentences)",
                        "one 'word ... tag' line per word, blank lines between sentences")

    converted = 0
    all_words, all_tags = [], []
    for words, tags, lines in sentences:
        iob2 = iob1_to_iob2(tags)
        converted += sum(a != b for a, b in zip(tags, iob2))
        all_words.append(words)
        all_tags.append(iob2)
    if converted:
        _log.info("%s: converted %d IOB1 tags to IOB2", path, converted)

    if label_names is None:
        types = sorted({tag[2:] for tags in all_tags for tag in tags if tag != "O"})
        names = ["O"] + [f"{prefix}-{kind}" for kind in types for prefix in ("B", "I")]
    else:
        names = [str(name) for name in label_names]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"label_names={list(label_names)!r}: must be non-empty and without duplicates")
        known = set(names)
        for (_, _, lines), tags in zip(sentences, all_tags):
            for line, tag in zip(lines, tags):
                if tag not in known:
                    raise DataError(path, line, f"unknown tag {tag!r} (after IOB2 conversion)",
                                    f"one of {names}")
    return TokenClassificationExamples(words=all_words, tags=all_tags, label_names=names, source=str(path))


# --------------------------------------------------------------------------------------------
# Encoded data: unpadded arrays, batching and tf.data
# --------------------------------------------------------------------------------------------


def _keep_positions(length: int, width: int) -> np.ndarray:
    """Positions kept when cutting a sequence of ``length`` to ``width``: the first ``width - 1``
    and the last one, so the closing special token (``[SEP]``, ``</s>``) survives."""
    if length <= width:
        return np.arange(length)
    return np.concatenate([np.arange(width - 1), [length - 1]])


@dataclass
class EncodedData:
    """Tokenised examples, unpadded: one int32 array per example and input name.

    Args:
        task: "sequence" or "token".
        features: input name -> per-example int32 arrays (keys are the model's input names).
        labels: sequence task: int32 array [N]; token task: per-example int32 arrays, with
            ``IGNORE_INDEX`` (-100) on special tokens and non-first sub-tokens.
        label_names: class or tag names, index = label id.
        num_truncated: how many examples ``max_length`` cut.
        words: token task: the original words of each example (None for the sequence task).
        pad_token_id: id used to pad ``input_ids`` (the tokenizer's; 1 for RoBERTa).
        truncated: per-example bool mask of truncated examples (so ``select`` keeps the count right).
        num_words_dropped: token task: words that got no first sub-token (cut by ``max_length`` or
            tokenised to nothing), i.e. words absent from loss and metrics.
    """

    task: str
    features: dict[str, list[np.ndarray]]
    labels: list[np.ndarray] | np.ndarray
    label_names: list[str]
    num_truncated: int = 0
    words: list[list[str]] | None = None
    pad_token_id: int = 0
    truncated: np.ndarray | None = None
    num_words_dropped: int = 0
    _lengths: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: must be one of {TASKS}")
        if not self.features:
            raise ValueError("features: empty; expected at least 'input_ids'")
        sizes = {name: len(values) for name, values in self.features.items()}
        if len(set(sizes.values())) != 1 or len(self.labels) != next(iter(sizes.values())):
            raise ValueError(f"features sizes {sizes} and labels size {len(self.labels)} must all be equal")
        if self.task == "sequence":
            self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)

    @property
    def input_names(self) -> list[str]:
        return list(self.features)

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        """Token count of each example (int64 [N])."""
        if self._lengths is None:
            first = next(iter(self.features.values()))
            self._lengths = np.fromiter((len(a) for a in first), dtype=np.int64, count=len(first))
        return self._lengths

    def percentile_length(self, q: float = 99) -> int:
        """The ``q``-th percentile of token lengths (an actual example length, rounded up)."""
        return int(np.percentile(self.lengths(), q, method="higher"))

    def select(self, indices) -> "EncodedData":
        """A new EncodedData with the examples at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        features = {name: [values[i] for i in indices] for name, values in self.features.items()}
        if self.task == "sequence":
            labels = self.labels[indices]
        else:
            labels = [self.labels[i] for i in indices]
        truncated = self.truncated[indices] if self.truncated is not None else None
        return EncodedData(
            task=self.task, features=features, labels=labels, label_names=list(self.label_names),
            num_truncated=int(truncated.sum()) if truncated is not None else 0,
            words=[self.words[i] for i in indices] if self.words is not None else None,
            pad_token_id=self.pad_token_id, truncated=truncated,
        )

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                bucket: bool = True, drop_remainder: bool = False) -> list[np.ndarray]:
        """Split the examples into batches of indices.

        With ``shuffle``: a permutation drawn from ``(seed, epoch)`` only (so a resumed run gets the
        same order), cut into chunks of ``50 * batch_size`` examples, each chunk sorted by length and
        cut into batches, then the order of all batches shuffled. Similar lengths share a batch, so
        padding to the batch's longest wastes little. Without ``shuffle``: sorted by length over the
        whole data set when ``bucket`` (fastest for evaluation; :func:`tfcompress.metrics.predict_logits`
        puts results back in example order), else consecutive.

        Args:
            batch_size: examples per batch (the last batch may be smaller unless ``drop_remainder``).
            shuffle: shuffle as above.
            seed: shuffling seed.
            epoch: epoch number, mixed into the seed so each epoch has its own order.
            bucket: group similar lengths (False: plain consecutive / shuffled order).
            drop_remainder: drop a final batch smaller than ``batch_size``.

        Returns:
            list of int64 index arrays.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        count = len(self)
        lengths = self.lengths()
        batches: list[np.ndarray] = []
        if shuffle:
            rng = np.random.default_rng([int(seed), int(epoch)])
            order = rng.permutation(count)
            if bucket:
                chunk = batch_size * BUCKET_CHUNK_BATCHES
                for start in range(0, count, chunk):
                    part = order[start:start + chunk]
                    part = part[np.argsort(lengths[part], kind="stable")]
                    batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
                batches = [batches[i] for i in rng.permutation(len(batches))]
            else:
                batches = [order[i:i + batch_size] for i in range(0, count, batch_size)]
        else:
            order = np.argsort(lengths, kind="stable") if bucket else np.arange(count)
            batches = [order[i:i + batch_size] for i in range(0, count, batch_size)]
        if drop_remainder:
            batches = [b for b in batches if len(b) == batch_size]
        return batches

    def padded_batch(self, indices, pad_to: int | None = None, truncate: bool = False
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Stack the examples at ``indices`` into padded int32 arrays.

        Args:
            indices: example indices.
            pad_to: fixed width (TFLite needs one); None pads to the longest example in the batch.
            truncate: with ``pad_to``, cut longer examples (keeping their last token, the closing
                special token) instead of raising. Prefer encoding with ``max_length=pad_to``.

        Returns:
            (features {name: int32 [B, T]}, labels int32 [B] or [B, T] padded with -100).

        Raises:
            ValueError: an example is longer than ``pad_to`` and ``truncate`` is False.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        lengths = self.lengths()[indices]
        longest = int(lengths.max()) if len(indices) else 0
        if pad_to is None:
            width = longest
        else:
            width = int(pad_to)
            if longest > width and not truncate:
                raise ValueError(f"an example has {longest} tokens, more than pad_to={width}; encode with "
                                 f"max_length={width} or pass truncate=True")
        features = {}
        for name, values in self.features.items():
            pad_value = self.pad_token_id if name == "input_ids" else 0
            out = np.full((len(indices), width), pad_value, dtype=np.int32)
            for row, i in enumerate(indices):
                seq = values[i]
                if len(seq) > width:
                    seq = seq[_keep_positions(len(seq), width)]
                out[row, :len(seq)] = seq
            features[name] = out
        if self.task == "sequence":
            labels = self.labels[indices].astype(np.int32)
        else:
            labels = np.full((len(indices), width), IGNORE_INDEX, dtype=np.int32)
            for row, i in enumerate(indices):
                seq = self.labels[i]
                if len(seq) > width:
                    seq = seq[_keep_positions(len(seq), width)]
                labels[row, :len(seq)] = seq
        return features, labels

    def tf_dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                   skip_batches: int = 0, pad_to: int | None = None, drop_remainder: bool = False):
        """One epoch as a ``tf.data.Dataset`` of ``(features, labels)`` padded per batch.

        Batch order is :meth:`batches` for ``(seed, epoch)``; ``skip_batches`` drops its first
        batches (to resume mid-epoch). Shapes are ``[None, None]`` int32 for features and
        ``[None]`` / ``[None, None]`` int32 for labels, so one traced step serves every width.
        Call once per epoch with that epoch's number.

        Args:
            batch_size: examples per batch.
            shuffle: shuffle (with length bucketing) from ``(seed, epoch)``.
            seed: shuffling seed.
            epoch: epoch number.
            skip_batches: batches to skip from the start of the epoch (>= 0).
            pad_to: fixed width instead of per-batch padding.
            drop_remainder: drop a final short batch.
        """
        from tfcompress._compat import tf

        if skip_batches < 0:
            raise ValueError(f"skip_batches={skip_batches}: must be >= 0")
        order = self.batches(batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                             drop_remainder=drop_remainder)[skip_batches:]

        def generate():
            for indices in order:
                yield self.padded_batch(indices, pad_to=pad_to)

        label_shape = [None] if self.task == "sequence" else [None, None]
        signature = (
            {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in self.features},
            tf.TensorSpec(label_shape, tf.int32, name="labels"),
        )
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return dataset.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------


def _align_labels(word_ids: Sequence[int | None], word_tags: Sequence[int]) -> np.ndarray:
    """First sub-token of each word carries the word's tag; other sub-tokens and specials -100."""
    labels = np.full(len(word_ids), IGNORE_INDEX, dtype=np.int32)
    previous = None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            labels[position] = word_tags[word]
        previous = word
    return labels


def encode(tokenizer, examples, max_length: int = 128, input_names: Sequence[str] | None = None,
           progress: bool = False) -> EncodedData:
    """Tokenise examples (batched, fast tokenizer) and align labels.

    Args:
        tokenizer: a ``PreTrainedTokenizerFast`` (the token task needs ``word_ids()``).
        examples: TextClassificationExamples or TokenClassificationExamples.
        max_length: longest sequence in tokens, special tokens included; longer ones are cut and
            counted in ``num_truncated``.
        input_names: features to keep (default ``tokenizer.model_input_names``). Pass the model's
            (``models.model_input_names(model)``) so e.g. DistilBERT gets no ``token_type_ids``.
        progress: show a tqdm bar.

    Returns:
        EncodedData. Token task: the first sub-token of each word carries its tag id, other
        sub-tokens and special tokens ``IGNORE_INDEX``.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; encode needs one "
                        "(PreTrainedTokenizerFast) for batched tokenisation and word_ids()")
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: must be >= 2 (room for the special tokens)")
    names = list(input_names) if input_names is not None else list(tokenizer.model_input_names)
    if isinstance(examples, TextClassificationExamples):
        task, inputs = "sequence", examples.texts
    elif isinstance(examples, TokenClassificationExamples):
        task, inputs = "token", examples.words
        tag_index = {name: i for i, name in enumerate(examples.label_names)}
    else:
        raise TypeError(f"examples: {type(examples).__name__}; expected TextClassificationExamples or "
                        "TokenClassificationExamples")
    if len(inputs) == 0:
        raise ValueError(f"{examples.source}: no examples to encode")

    features: dict[str, list[np.ndarray]] = {name: [] for name in names}
    labels: list = []
    truncated = np.zeros(len(inputs), dtype=bool)
    words_dropped = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(inputs), desc="tokenising", unit="ex", disable=not progress or not _is_tty())
    for start in range(0, len(inputs), _TOKENIZE_CHUNK):
        chunk = inputs[start:start + _TOKENIZE_CHUNK]
        batch = tokenizer(chunk, truncation=True, max_length=max_length, is_split_into_words=(task == "token"),
                          return_token_type_ids="token_type_ids" in names,
                          return_attention_mask="attention_mask" in names, verbose=False)
        missing = [name for name in names if name not in batch]
        if missing:
            raise ValueError(f"input_names {missing} are not produced by {type(tokenizer).__name__} "
                             f"(it gives {list(batch.keys())})")
        for name in names:
            features[name].extend(np.asarray(ids, dtype=np.int32) for ids in batch[name])
        for offset, encoding in enumerate(batch.encodings):
            truncated[start + offset] = bool(encoding.overflowing)
        if task == "sequence":
            labels.extend(examples.labels[start:start + len(chunk)])
        else:
            for offset in range(len(chunk)):
                index = start + offset
                word_ids = batch.word_ids(offset)
                tags = [tag_index[tag] for tag in examples.tags[index]]
                aligned = _align_labels(word_ids, tags)
                words_dropped += len(tags) - len({w for w in word_ids if w is not None})
                labels.append(aligned)
        bar.update(len(chunk))
    bar.close()
    data = EncodedData(
        task=task, features=features,
        labels=np.asarray(labels, dtype=np.int32) if task == "sequence" else labels,
        label_names=list(examples.label_names), num_truncated=int(truncated.sum()),
        words=[list(w) for w in examples.words] if task == "token" else None,
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        truncated=truncated, num_words_dropped=int(words_dropped),
    )
    if data.num_truncated:
        _log.info("%s: max_length=%d truncated %d of %d examples", examples.source, max_length,
                  data.num_truncated, len(data))
    return data


def concatenate(parts: Sequence[EncodedData]) -> EncodedData:
    """One EncodedData with the examples of ``parts`` in order (same task, labels, inputs and padding)."""
    if not parts:
        raise ValueError("concatenate: no parts")
    first = parts[0]
    for k, part in enumerate(parts[1:], start=1):
        for name in ("task", "input_names", "label_names", "pad_token_id"):
            if getattr(part, name) != getattr(first, name):
                raise ValueError(f"concatenate: part {k} has {name}={getattr(part, name)!r}, "
                                 f"part 0 has {getattr(first, name)!r}")
    features = {name: [a for part in parts for a in part.features[name]] for name in first.input_names}
    if first.task == "sequence":
        labels = np.concatenate([part.labels for part in parts])
    else:
        labels = [a for part in parts for a in part.labels]
    truncated = np.concatenate([part.truncated if part.truncated is not None else np.zeros(len(part), bool)
                                for part in parts])
    words = None if first.task == "sequence" else [w for part in parts for w in part.words]
    return EncodedData(task=first.task, features=features, labels=labels, label_names=list(first.label_names),
                       num_truncated=int(truncated.sum()), words=words, pad_token_id=first.pad_token_id,
                       truncated=truncated, num_words_dropped=sum(part.num_words_dropped for part in parts))


def _is_tty() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = [
    "IGNORE_INDEX", "DataError", "TextClassificationExamples", "TokenClassificationExamples",
    "read_text_classification", "read_conll", "iob1_to_iob2", "EncodedData", "encode",
]
