"""Readers, bad-input errors, label alignment, batching and tf.data for tfcompress.data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CONLL_LABELS, SST_ROWS
from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.data.encoding import EncodedData, encode
from tfcompress.data.readers import (DataError, TextClassificationExamples, TokenClassificationExamples, iob1_to_iob2,
                                     read_conll, read_lines, read_text_classification, with_document_context)


# ----------------------------------------------------------------------------- readers


def test_reads_sst_tsv_with_integer_labels(sst_tsv):
    examples = read_text_classification(sst_tsv)
    assert examples.texts[0] == "a good movie"
    assert examples.labels == [label for _, label in SST_ROWS]
    assert examples.label_names == ["0", "1"]
    assert examples.source == str(sst_tsv)


def test_tsv_keeps_quote_characters_literally(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('sentence\tlabel\n"a good" movie\t1\nit \'s "bad\t0\n')
    examples = read_text_classification(path)
    assert examples.texts == ['"a good" movie', 'it \'s "bad']
    assert examples.labels == [1, 0]


def test_reads_csv_with_quoted_commas_and_custom_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,review,sentiment\n1,"good, really",pos\n2,bad,neg\n3,fine,pos\n')
    examples = read_text_classification(path, text_column="review", label_column="sentiment")
    assert examples.texts == ["good, really", "bad", "fine"]
    assert examples.label_names == ["neg", "pos"]  # strings sorted
    assert examples.labels == [1, 0, 1]


def test_reads_jsonl_with_string_labels_and_given_names(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "good", "y": "positive"}, {"text": "bad", "y": "negative"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    examples = read_text_classification(path, text_column="text", label_column="y",
                                        label_names=["positive", "negative"])
    assert examples.labels == [0, 1]
    assert examples.label_names == ["positive", "negative"]


def test_integer_labels_inferred_sorted_numerically(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"s{i}", "label": v}) + "\n" for i, v in enumerate([10, 2, 2])))
    examples = read_text_classification(path)
    assert examples.label_names == ["2", "10"]  # numeric order, not "10" < "2"
    assert examples.labels == [1, 0, 0]


def test_integer_labels_are_matched_as_names_never_taken_as_indices(sst_tsv, tmp_path):
    """Training labels {0, 2}: a test file's "1" is not class "2" (index 1), it is unknown."""
    message = _error(lambda: read_text_classification(sst_tsv, label_names=["negative", "positive"]))
    assert message.startswith(f"{sst_tsv}:2: unknown label")
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\ngood\t02\nbad\t0\n")
    assert read_text_classification(path, label_names=["0", "2"]).labels == [1, 0]  # "02" is 2
    path.write_text("sentence\tlabel\ngood\t1\n")
    message = _error(lambda: read_text_classification(path, label_names=["0", "2"]))
    assert message == f"{path}:2: unknown label '1'; expected one of the training file's labels ['0', '2']"


def test_conll_skips_docstart_and_reads_first_and_last_columns(conll_file):
    examples = read_conll(conll_file, label_names=CONLL_LABELS)
    assert len(examples) == 3
    assert examples.words[0] == ["john", "smith", "visited", "london", "."]
    assert examples.tags[0] == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    assert all("-DOCSTART-" not in words for words in examples.words)
    assert examples.label_names == CONLL_LABELS


def test_conll_infers_label_names_o_first_then_types(conll_file):
    assert read_conll(conll_file).label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_conll_converts_iob1_to_iob2(tmp_path):
    path = tmp_path / "iob1.txt"
    # IOB1: entities start with I-; B- only separates two adjacent entities of one type
    path.write_text("John I-PER\nSmith I-PER\nmet O\nAnn I-PER\nBob B-PER\nin O\nNew I-LOC\nYork I-LOC\n"
                    "Ltd I-ORG\n")
    examples = read_conll(path)
    assert examples.tags[0] == ["B-PER", "I-PER", "O", "B-PER", "B-PER", "O", "B-LOC", "I-LOC", "B-ORG"]


def test_iob2_tags_unchanged_by_conversion():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "B-ORG"]
    assert iob1_to_iob2(tags) == tags


def test_conll_tab_separated_and_no_trailing_blank_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a\tx\tO\nparis\tx\tB-LOC\n\n\n\nb\tO")
    examples = read_conll(path)
    assert examples.words == [["a", "paris"], ["b"]]
    assert examples.tags == [["O", "B-LOC"], ["O"]]


def test_conll_docstart_lines_number_the_documents(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("a O\n\nb O\n\n-DOCSTART- -X- O\n\nc O\nd O\n-DOCSTART- -X- O\ne O\n\n"
                    "-DOCSTART- -X- O\n\n-DOCSTART- -X- O\n\nf O\n")
    examples = read_conll(path)
    assert examples.words == [["a"], ["b"], ["c", "d"], ["e"], ["f"]]
    assert examples.documents == [0, 0, 1, 2, 3]


def test_document_context_takes_nearest_words_of_the_same_document_only(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("a O\nb O\n\nc B-LOC\n\nd O\ne O\nf O\n\n-DOCSTART- -X- O\n\ng O\n")
    examples = with_document_context(read_conll(path), 2)
    assert examples.left == [[], ["a", "b"], ["b", "c"], []]
    assert with_document_context(read_conll(path), 5).left[2] == ["a", "b", "c"]  # all there is, when fewer
    assert examples.right == [["c", "d"], ["d", "e"], [], []]
    assert examples.words_in_context()[1] == ["a", "b", "c", "d", "e"]
    assert examples.left_counts() == [0, 2, 2, 0]
    assert examples.tags[1] == ["B-LOC"]  # the sentence's own tags only
    assert with_document_context(read_conll(path), 0).words_in_context() == read_conll(path).words


def test_document_context_words_are_read_but_never_labelled(tiny_tokenizer, conll_file):
    plain = encode(tiny_tokenizer, read_conll(conll_file, label_names=CONLL_LABELS), max_length=64)
    wide = encode(tiny_tokenizer, with_document_context(read_conll(conll_file, label_names=CONLL_LABELS), 3),
                  max_length=64)
    assert all(len(a) > len(b) for a, b in zip(wide.features["input_ids"], plain.features["input_ids"]))
    for narrow, context in zip(plain.labels, wide.labels):  # the same tags, in order, and nothing else
        assert context[context != IGNORE_INDEX].tolist() == narrow[narrow != IGNORE_INDEX].tolist()
    middle = tiny_tokenizer.convert_ids_to_tokens(wide.features["input_ids"][1].tolist())
    assert middle[:5] == ["[CLS]", "visited", "london", ".", "the"]  # the last 3 words of sentence 0 first
    assert wide.words == plain.words and wide.num_words_dropped == 0


def test_document_context_never_pushes_a_sentence_word_out(tiny_tokenizer, conll_file):
    """At a max_length that fits a sentence but not its context, the farthest context words go first,
    and every word of the sentence keeps its label."""
    from tfcompress.data.encoding import fit_context

    examples = with_document_context(read_conll(conll_file, label_names=CONLL_LABELS), 6)
    assert examples.left[1] == ["john", "smith", "visited", "london", "."] and examples.right[1][:2] == ["mary", "told"]
    fitted = fit_context(tiny_tokenizer, examples, 12)  # 2 specials + 6 sentence tokens + 4 of context
    assert fitted.left[1] == ["london", "."] and fitted.right[1] == ["mary", "told"]  # nearest first, both sides
    data = encode(tiny_tokenizer, examples, max_length=12)
    assert data.num_words_dropped == 0 and not data.truncated.any()
    plain = encode(tiny_tokenizer, read_conll(conll_file, label_names=CONLL_LABELS), max_length=12)
    for narrow, context in zip(plain.labels, data.labels):
        assert context[context != IGNORE_INDEX].tolist() == narrow[narrow != IGNORE_INDEX].tolist()
    assert fit_context(tiny_tokenizer, examples, 7).left[1] == []  # the sentence alone fills it: no context


# ----------------------------------------------------------------------------- bad input


def _error(call) -> str:
    with pytest.raises(DataError) as info:
        call()
    return str(info.value)


def test_empty_file_names_file_and_line(tmp_path):
    for name in ("e.tsv", "e.csv", "e.jsonl"):
        path = tmp_path / name
        path.write_text("")
        message = _error(lambda: read_text_classification(path))
        assert message.startswith(f"{path}:1: empty file; expected")
    path = tmp_path / "e.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\n")
    assert _error(lambda: read_conll(path)).startswith(f"{path}:1: empty file")


def test_header_only_file_is_an_error(tmp_path):
    path = tmp_path / "h.tsv"
    path.write_text("sentence\tlabel\n")
    assert _error(lambda: read_text_classification(path)).startswith(f"{path}:2: no examples")


def test_missing_column_names_header_line_and_columns(tmp_path):
    path = tmp_path / "m.tsv"
    path.write_text("text\tlabel\ngood\t1\n")
    message = _error(lambda: read_text_classification(path))
    assert message.startswith(f"{path}:1: no column 'sentence'")
    assert "expected a header with columns 'sentence' and 'label'" in message


def test_missing_key_in_jsonl_names_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"sentence": "a", "label": 1}\n{"sentence": "b"}\n')
    assert _error(lambda: read_text_classification(path)).startswith(f"{path}:2: no key 'label'")


def test_malformed_tsv_row_names_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood\t1\na\ttab\tinside\t0\nbad\t0\n")
    message = _error(lambda: read_text_classification(path))
    assert message.startswith(f"{path}:3: row has 4 fields; expected 2 tab-separated fields")


def test_malformed_json_line_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"sentence": "a", "label": 1}\n\n{"sentence": "b", label: 0}\n')
    assert _error(lambda: read_text_classification(path)).startswith(f"{path}:3: invalid JSON")


def test_unknown_label_names_line_and_allowed_labels(tmp_path):
    path = tmp_path / "u.tsv"
    path.write_text("sentence\tlabel\ngood\tpositive\nmeh\tneutral\n")
    message = _error(lambda: read_text_classification(path, label_names=["negative", "positive"]))
    assert message == (f"{path}:3: unknown label 'neutral'; expected one of the training file's labels "
                       "['negative', 'positive']")


def test_integer_label_out_of_range_is_unknown(sst_tsv):
    message = _error(lambda: read_text_classification(sst_tsv, label_names=["only"]))
    assert message.startswith(f"{sst_tsv}:2: unknown label '1'")


def test_empty_label_names_line(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("sentence,label\ngood,1\nbad,\n")
    assert _error(lambda: read_text_classification(path)).startswith(f"{path}:3: empty label")


def test_unknown_extension_is_a_data_error(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_text("x")
    assert "expected one of .tsv, .csv, .jsonl" in _error(lambda: read_text_classification(path))


def test_non_utf8_bytes_name_line(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff\t0\n")
    assert _error(lambda: read_text_classification(path)).startswith(f"{path}:3: bytes that are not UTF-8")


def test_conll_invalid_tag_names_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("-DOCSTART- O\n\njohn B-PER\nsmith PER\n")
    message = _error(lambda: read_conll(path))
    assert message.startswith(f"{path}:4: invalid tag 'PER'; expected O, B-TYPE or I-TYPE")


def test_conll_one_column_line_names_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("john B-PER\n\nsmith\n")
    assert _error(lambda: read_conll(path)).startswith(f"{path}:3: line has 1 column")


def test_conll_unknown_tag_names_line(conll_file):
    message = _error(lambda: read_conll(conll_file, label_names=["O", "B-PER", "I-PER", "B-LOC"]))
    # "the eu said": B-ORG on line 10 of the fixture (line 1 is -DOCSTART-)
    assert message.startswith(f"{conll_file}:10: unknown tag 'B-ORG'")


# ----------------------------------------------------------------------------- encoding


def test_token_labels_only_on_first_sub_token(tiny_tokenizer):
    # "visiting" -> visit ##ing ; "xyz" -> x ##y ##z (letters)
    examples = TokenClassificationExamples(
        words=[["john", "visiting", "xyz"]], tags=[["B-PER", "O", "B-LOC"]],
        label_names=CONLL_LABELS, source="mem")
    data = encode(tiny_tokenizer, examples, max_length=32)
    tokens = tiny_tokenizer.convert_ids_to_tokens(data.features["input_ids"][0].tolist())
    assert tokens == ["[CLS]", "john", "visit", "##ing", "x", "##y", "##z", "[SEP]"]
    B_PER, O, B_LOC = (CONLL_LABELS.index(t) for t in ("B-PER", "O", "B-LOC"))
    assert data.labels[0].tolist() == [IGNORE_INDEX, B_PER, O, IGNORE_INDEX, B_LOC, IGNORE_INDEX,
                                       IGNORE_INDEX, IGNORE_INDEX]
    assert data.labels[0].dtype == np.int32
    assert data.words == [["john", "visiting", "xyz"]]
    assert data.num_words_dropped == 0


def test_sequence_encoding_keeps_labels_and_int32_features(tiny_tokenizer, sst_tsv):
    data = encode(tiny_tokenizer, read_text_classification(sst_tsv), max_length=16)
    assert len(data) == len(SST_ROWS)
    assert data.labels.tolist() == [label for _, label in SST_ROWS]
    assert set(data.features) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(a.dtype == np.int32 for a in data.features["input_ids"])
    assert data.lengths()[0] == 5  # [CLS] a good movie [SEP]
    assert data.num_truncated == 0


def test_input_names_drop_token_type_ids(tiny_tokenizer, sst_tsv):
    data = encode(tiny_tokenizer, read_text_classification(sst_tsv), input_names=["input_ids", "attention_mask"])
    assert list(data.features) == ["input_ids", "attention_mask"]


def test_truncation_counted_and_cut_to_max_length(tiny_tokenizer):
    texts = ["a good movie", "the film was very very very good and fun", "bad"]
    examples = TextClassificationExamples(texts=texts, labels=[1, 1, 0], label_names=["0", "1"], source="mem")
    data = encode(tiny_tokenizer, examples, max_length=6)
    assert data.num_truncated == 1
    assert data.truncated.tolist() == [False, True, False]
    assert data.lengths().tolist() == [5, 6, 3]
    ids = data.features["input_ids"][1].tolist()
    assert ids[-1] == tiny_tokenizer.sep_token_id
    assert encode(tiny_tokenizer, examples, max_length=64).num_truncated == 0
    assert data.select([1, 2]).num_truncated == 1


def test_truncated_token_example_loses_tail_words(tiny_tokenizer, conll_file):
    data = encode(tiny_tokenizer, read_conll(conll_file, label_names=CONLL_LABELS), max_length=4)
    assert data.num_truncated == 3
    assert all(len(labels) == 4 for labels in data.labels)
    assert data.num_words_dropped == (5 - 2) + (6 - 2) + (6 - 2)


def test_slow_tokenizer_is_refused(tiny_vocab_dir, sst_tsv):
    from transformers import BertTokenizer

    slow = BertTokenizer(vocab_file=str(tiny_vocab_dir / "vocab.txt"))
    with pytest.raises(TypeError, match="not a fast tokenizer"):
        encode(slow, read_text_classification(sst_tsv))


# ----------------------------------------------------------------------------- batching


def _synthetic(lengths, task="sequence", pad_token_id=0) -> EncodedData:
    ids = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]
    features = {"input_ids": ids, "attention_mask": [np.ones(n, np.int32) for n in lengths]}
    if task == "sequence":
        labels = np.arange(len(lengths), dtype=np.int32) % 2
    else:
        labels = [np.where(np.arange(n) % 2 == 0, 1, IGNORE_INDEX).astype(np.int32) for n in lengths]
    return EncodedData(task=task, features=features, labels=labels, label_names=["0", "1"],
                       pad_token_id=pad_token_id)


def test_padded_batch_pads_to_longest_in_batch():
    data = _synthetic([3, 7, 5], task="token", pad_token_id=1)
    features, labels = data.padded_batch([0, 2])
    assert features["input_ids"].shape == (2, 5)
    assert features["input_ids"].dtype == np.int32
    assert features["input_ids"][0].tolist() == [1, 2, 3, 1, 1]  # RoBERTa-style pad id 1
    assert features["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    assert labels[0].tolist() == [1, IGNORE_INDEX, 1, IGNORE_INDEX, IGNORE_INDEX]
    features, _ = data.padded_batch([0, 1, 2], pad_to=8)
    assert features["input_ids"].shape == (3, 8)


def test_padded_batch_refuses_longer_than_pad_to_unless_truncate():
    data = _synthetic([3, 7])
    with pytest.raises(ValueError, match="7 tokens, more than pad_to=4"):
        data.padded_batch([0, 1], pad_to=4)
    features, _ = data.padded_batch([0, 1], pad_to=4, truncate=True)
    assert features["input_ids"][1].tolist() == [1, 2, 3, 7]  # last (closing special) token kept


def test_bucketed_batches_cover_all_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 200, size=1000)
    data = _synthetic(lengths)
    batches = data.batches(8, shuffle=True, seed=1, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    widths = [int(lengths[b].max()) for b in batches]
    assert len(set(widths)) > 10  # widths vary per batch
    wasted_bucketed = sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)
    plain = data.batches(8, shuffle=True, seed=1, epoch=0, bucket=False)
    wasted_plain = sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in plain)
    assert wasted_bucketed < wasted_plain / 5
    for batch, width in zip(batches[:5], widths):
        features, _ = data.padded_batch(batch)
        assert features["input_ids"].shape[1] == width


def test_shuffle_is_determined_by_seed_and_epoch():
    data = _synthetic(np.random.default_rng(0).integers(2, 50, size=300))

    def order(**kw):
        return [b.tolist() for b in data.batches(16, shuffle=True, **kw)]

    assert order(seed=3, epoch=2) == order(seed=3, epoch=2)
    assert order(seed=3, epoch=2) != order(seed=3, epoch=1)
    assert order(seed=3, epoch=2) != order(seed=4, epoch=2)
    assert order(seed=1, epoch=0) != order(seed=0, epoch=1)  # not just seed + epoch


def test_unshuffled_batches_sorted_by_length_or_consecutive():
    data = _synthetic([5, 2, 9, 3])
    assert [b.tolist() for b in data.batches(2)] == [[1, 3], [0, 2]]
    assert [b.tolist() for b in data.batches(2, bucket=False)] == [[0, 1], [2, 3]]
    assert len(data.batches(3, drop_remainder=True)) == 1


def test_tf_dataset_yields_int32_batches_padded_per_batch():
    lengths = [3, 9, 4, 8, 2, 7]
    data = _synthetic(lengths, task="token")
    dataset = data.tf_dataset(batch_size=2, shuffle=True, seed=0)
    spec = dataset.element_spec
    assert spec[0]["input_ids"].shape.as_list() == [None, None]
    assert spec[1].shape.as_list() == [None, None]
    seen = []
    for features, labels in dataset:
        ids = features["input_ids"].numpy()
        assert ids.dtype == np.int32 and labels.dtype.name == "int32"
        assert ids.shape[1] == max(int((row > 0).sum()) for row in ids)
        seen.append(ids.shape)
    assert len(seen) == 3
    sequence = _synthetic(lengths).tf_dataset(batch_size=4)
    assert sequence.element_spec[1].shape.as_list() == [None]


def test_skip_batches_equals_dropping_first_batches():
    data = _synthetic(np.random.default_rng(1).integers(2, 30, size=50))

    def collect(dataset):
        return [(f["input_ids"].numpy().tolist(), l.numpy().tolist()) for f, l in dataset]

    full = collect(data.tf_dataset(batch_size=4, shuffle=True, seed=7, epoch=3))
    resumed = collect(data.tf_dataset(batch_size=4, shuffle=True, seed=7, epoch=3, skip_batches=5))
    assert len(full) == 13
    assert resumed == full[5:]
    with pytest.raises(ValueError, match="skip_batches"):
        data.tf_dataset(batch_size=4, skip_batches=-1)


def test_select_and_percentile_length():
    data = _synthetic(list(range(1, 101)), task="token")
    # lengths 1..100: the 99th percentile falls between 99 and 100 and rounds up to a real length
    assert data.percentile_length(99) == 100
    assert data.percentile_length(50) == 51
    assert data.percentile_length(0) == 1
    subset = data.select([4, 0])
    assert subset.lengths().tolist() == [5, 1]
    assert len(subset.labels) == 2 and subset.task == "token"


def test_encoded_data_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="must all be equal"):
        EncodedData(task="sequence", features={"input_ids": [np.ones(2, np.int32)]}, labels=np.array([0, 1]),
                    label_names=["0", "1"])


def test_concatenate_keeps_order_labels_and_truncation_counts(tiny_tokenizer):
    from tfcompress.data.encoding import concatenate

    first = encode(tiny_tokenizer, TextClassificationExamples(["a good movie", "bad"], [1, 0], ["neg", "pos"], "a"),
                   max_length=3)
    second = encode(tiny_tokenizer, TextClassificationExamples(["good"], [IGNORE_INDEX], ["neg", "pos"], "b"),
                    max_length=3)
    both = concatenate([first, second])
    assert len(both) == 3 and list(both.labels) == [1, 0, IGNORE_INDEX]
    assert [list(a) for a in both.features["input_ids"]] == [
        list(a) for a in first.features["input_ids"] + second.features["input_ids"]]
    assert both.num_truncated == first.num_truncated + second.num_truncated == 1
    other = TextClassificationExamples(["good"], [0], ["x", "y"], "c")
    with pytest.raises(ValueError, match="label_names"):
        concatenate([first, encode(tiny_tokenizer, other, max_length=3)])


def test_a_failed_atomic_write_leaves_no_temporary_file_and_the_old_content(tmp_path, monkeypatch):
    """Disk full during the write: the error propagates, the old file stays whole, nothing is left behind
    (a leftover .tmp would keep the disk full for the rerun); a dead writer's leftover goes first."""
    import errno
    import os

    from tfcompress import utils

    path = tmp_path / "model.tflite"
    path.write_bytes(b"old")
    dead = tmp_path / ".model.tflite.tmp-999999"  # no process has this pid here
    dead.write_bytes(b"x" * 1000)

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        utils.atomic_write_bytes(path, b"new" * 1000)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


def test_read_lines_keeps_the_non_empty_lines_and_names_the_bad_line(tmp_path):
    good = tmp_path / "transfer.txt"
    good.write_text("\ufeffBerlin is big .\n\n  EU talks  \n")
    assert read_lines(good) == ["Berlin is big .", "EU talks"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    with pytest.raises(DataError, match=r"bad.txt:2: bytes that are not UTF-8"):
        read_lines(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt: no text"):
        read_lines(empty)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_lines(tmp_path / "missing.txt")
