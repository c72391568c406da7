"""Task data: readers, tokenisation with label alignment, length-bucketed batches and ``tf.data``.

Data flows one way::

    read_text_classification(path) / read_conll(path)   -> *Examples   (words and label names)
    encode(tokenizer, examples, max_length)             -> EncodedData (unpadded int32 arrays)
    EncodedData.tf_dataset(batch_size, shuffle, seed, epoch, skip_batches)   -> batches padded per batch

Readers fail on bad input with :class:`DataError`, whose message starts with ``path:line:`` and
says what was expected, so a user can open the file at the right line.

Example::

    from tfcompress.data.encoding import encode
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
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tfcompress.utils import get_logger
from tfcompress.errors import TfcompressError

_log = get_logger("data")


class DataError(TfcompressError, ValueError):
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
        documents: per sentence, the index of its document (``-DOCSTART-`` lines start one); None: unknown.
        left / right: per sentence, words of its document read before / after it as context (not tagged,
            not scored; :func:`with_document_context`); None: the sentence alone.
    """

    words: list[list[str]]
    tags: list[list[str]]
    label_names: list[str]
    source: str
    documents: list[int] | None = None
    left: list[list[str]] | None = None
    right: list[list[str]] | None = None

    task = "token"

    def __len__(self) -> int:
        return len(self.words)

    def words_in_context(self) -> list[list[str]]:
        """Per sentence, the words a model reads: left context, the sentence, right context."""
        if self.left is None:
            return [list(sentence) for sentence in self.words]
        return [list(left) + list(sentence) + list(right) for left, sentence, right in
                zip(self.left, self.words, self.right)]

    def left_counts(self) -> list[int]:
        """Per sentence, how many context words precede it in :meth:`words_in_context`."""
        return [0] * len(self.words) if self.left is None else [len(left) for left in self.left]


def with_document_context(examples: TokenClassificationExamples, words: int) -> TokenClassificationExamples:
    """The examples with up to ``words`` words of context on each side of every sentence: the nearest words
    of the preceding and following sentences of the same document (document-level context, as BERT's
    CoNLL-2003 results and FLERT use). The context is read by the model but not tagged or scored; a
    sentence at a document's start or end gets less. Examples without ``documents`` count as one document.
    """
    if words < 0:
        raise ValueError(f"words={words}: must be >= 0")
    documents = examples.documents if examples.documents is not None else [0] * len(examples)
    left, right = [], []
    for index, document in enumerate(documents):
        before, after = [], []
        previous = index - 1
        while len(before) < words and previous >= 0 and documents[previous] == document:
            before = list(examples.words[previous]) + before
            previous -= 1
        following = index + 1
        while len(after) < words and following < len(documents) and documents[following] == document:
            after = after + list(examples.words[following])
            following += 1
        left.append(before[max(0, len(before) - words):])
        right.append(after[:words])
    return dataclasses.replace(examples, documents=list(documents), left=left, right=right)


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


def read_lines(path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, stripped: one unlabelled text (or whitespace-separated
    sentence) per line, e.g. a transfer set for distillation. DataError (file and line) for bytes that are
    not UTF-8 or a file with no text; FileNotFoundError for a missing one."""
    path = Path(path)
    lines = [line.strip() for line in _read_text(path).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(path, None, "no text (every line is empty)", "one text per line")
    return lines


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
                                "(other names: --text-column / --label-column)")
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
                                "(other names: --text-column / --label-column)")
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
        label_names: the classes, in label-id order (the training file's). Every label must be one
            of these names (integer labels compare as integers: ``01`` is ``1``); any other label
            raises DataError naming the line, never a silent index. When None, the names are inferred
            from this file: integer labels
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
        if label is None and _is_int(raw):
            label = index.get(str(int(raw)))  # "01" -> "1"
        if label is None:
            where = "the training file's labels" if label_names is not None else "this file's labels"
            raise DataError(path, line, f"unknown label {raw!r}", f"one of {where} {names}")
        if not sentence.strip():
            raise DataError(path, line, f"empty text in column {text_column!r}", "a non-empty text")
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
    documents: list[int] = []
    words, tags, lines = [], [], []
    document = 0
    for line, content in enumerate(text.split("\n"), start=1):
        columns = content.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags, lines))
                documents.append(document)
                words, tags, lines = [], [], []
            if columns and sentences:  # -DOCSTART- after some sentences: the next ones are another document
                document = documents[-1] + 1
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
        documents.append(document)
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
    return TokenClassificationExamples(words=all_words, tags=all_tags, label_names=names, source=str(path),
                                       documents=documents)
