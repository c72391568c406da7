"""Cross-tokenizer distillation: per-text teacher logits on disk, and the Distiller that learns from them."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SST_ROWS, build_tiny_model

TEXTS = [text for text, _ in SST_ROWS]


@pytest.fixture
def teacher(tiny_mpnet_dir):
    from tfcompress.models import loading

    return loading.load_model(str(tiny_mpnet_dir), labels=["negative", "positive"])


@pytest.fixture
def teacher_data(tiny_mpnet_dir, teacher):
    from tfcompress.data import encoding, readers
    from tfcompress.models import loading
    from tfcompress.models.facts import model_input_names

    examples = readers.TextClassificationExamples(texts=TEXTS, labels=[-100] * len(TEXTS),
                                                  label_names=["negative", "positive"], source="test")
    return encoding.encode(loading.load_tokenizer(str(tiny_mpnet_dir)), examples, max_length=16,
                           input_names=model_input_names(teacher))


def _fields(tiny_mpnet_dir, texts=TEXTS, augmentation=None):
    from tfcompress.compress import teacher_logits

    return teacher_logits.cache_fields(tiny_mpnet_dir, ["negative", "positive"], texts, 16, augmentation)


def test_logits_are_the_teachers_own_on_its_own_tokens(tiny_mpnet_dir, teacher, teacher_data):
    from tfcompress.compress import teacher_logits
    from tfcompress.models import loading

    logits = teacher_logits.compute_logits(teacher, teacher_data, batch_size=5)
    tokenizer = loading.load_tokenizer(str(tiny_mpnet_dir))
    one = teacher(dict(tokenizer([TEXTS[3]], return_tensors="tf", return_token_type_ids=False)), training=False)
    np.testing.assert_allclose(logits[3], one.logits.numpy()[0], atol=1e-5)
    assert logits.shape == (len(TEXTS), 2) and not np.isnan(logits).any()


def test_cache_is_computed_once_then_reused_by_a_later_run(tmp_path, tiny_mpnet_dir, teacher, teacher_data, monkeypatch):
    from tfcompress.compress import teacher_logits

    cache = teacher_logits.TeacherLogitCache(tmp_path / "cache")
    fields = _fields(tiny_mpnet_dir)
    first, info = cache.load_or_compute(fields, teacher, teacher_data, batch_size=4)
    assert not info["reused"] and info["computed"] == len(TEXTS)
    assert cache.path_for(fields).is_file() and not list((tmp_path / "cache").glob("*.partial.npz"))

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its logits were cached")

    monkeypatch.setattr(teacher_logits, "compute_logits", no_teacher)
    again, info = teacher_logits.TeacherLogitCache(tmp_path / "cache").load_or_compute(fields, teacher, teacher_data)
    assert info["reused"]
    np.testing.assert_array_equal(first, again)


def test_another_teacher_data_or_augmentation_gets_another_file_and_the_log_names_the_field(
        tmp_path, tiny_mpnet_dir, teacher, teacher_data, caplog):
    import logging
    import shutil

    from tfcompress.compress import teacher_logits

    cache = teacher_logits.TeacherLogitCache(tmp_path / "cache")
    base = _fields(tiny_mpnet_dir)
    cache.load_or_compute(base, teacher, teacher_data)
    augmented = _fields(tiny_mpnet_dir, augmentation={"copies": 1, "seed": 42})
    other_texts = _fields(tiny_mpnet_dir, texts=list(reversed(TEXTS)))
    retrained = tmp_path / tiny_mpnet_dir.name
    shutil.copytree(tiny_mpnet_dir, retrained)
    with open(retrained / "tf_model.h5", "ab") as handle:  # other weights bytes: another teacher
        handle.write(b"\0")
    other_teacher = teacher_logits.cache_fields(retrained, ["negative", "positive"], TEXTS, 16, None)
    assert other_teacher["teacher_weights_sha256"] != base["teacher_weights_sha256"]
    paths = {cache.path_for(f) for f in (base, augmented, other_texts, other_teacher)}
    assert len(paths) == 4
    caplog.set_level(logging.INFO, logger="tfcompress")
    logger = logging.getLogger("tfcompress")
    logger.addHandler(caplog.handler)
    try:
        cache.load_or_compute(augmented, teacher, teacher_data)
    finally:
        logger.removeHandler(caplog.handler)
    assert any("differs in augmentation" in m for m in caplog.messages), caplog.messages


def test_a_file_made_for_other_fields_is_refused_naming_the_field(tmp_path, tiny_mpnet_dir, teacher, teacher_data):
    from tfcompress.compress import teacher_logits
    from tfcompress.errors import TfcompressError

    cache = teacher_logits.TeacherLogitCache(tmp_path)
    fields = _fields(tiny_mpnet_dir)
    other = dict(fields, teacher_labels=["positive", "negative"])
    cache._write(cache.path_for(fields), other, np.zeros((len(TEXTS), 2), np.float32))  # copied in by hand
    with pytest.raises(teacher_logits.TeacherCacheError, match="field 'teacher_labels'") as error:
        cache.load_or_compute(fields, teacher, teacher_data)
    assert isinstance(error.value, TfcompressError) and str(cache.path_for(fields)) in str(error.value)
    cache.path_for(fields).write_bytes(b"not a numpy archive")
    with pytest.raises(teacher_logits.TeacherCacheError, match="not a readable teacher-logits cache"):
        cache.load(fields)


def test_an_interrupted_computation_continues_from_its_partial_file(tmp_path, tiny_mpnet_dir, teacher, teacher_data):
    from tfcompress.compress import teacher_logits

    full = teacher_logits.compute_logits(teacher, teacher_data, batch_size=4)
    cache = teacher_logits.TeacherLogitCache(tmp_path)
    fields = _fields(tiny_mpnet_dir)
    half = full.copy()
    half[::2] = np.nan  # what a killed run saved: every other row done
    final = cache.path_for(fields)
    cache._write(final.with_name(final.name[:-4] + ".partial.npz"), fields, half)
    logits, info = cache.load_or_compute(fields, teacher, teacher_data, batch_size=4)
    assert info["computed"] == (len(TEXTS) + 1) // 2
    np.testing.assert_allclose(logits, full, atol=1e-5)
    assert final.is_file() and not final.with_name(final.name[:-4] + ".partial.npz").exists()


def test_distiller_across_tokenizers_learns_from_per_text_logits_only(teacher):
    from tfcompress.compress import distill
    from tfcompress.config.training import DistillConfig
    from tfcompress.errors import ConfigError

    student = build_tiny_model("sequence")
    assert teacher.config.vocab_size != student.config.vocab_size
    with pytest.raises(ValueError, match="vocab_size"):
        distill.Distiller(teacher, student, DistillConfig())
    with pytest.raises(ConfigError, match="DistillConfig.hidden_loss_weight=1.0: .*cannot be mapped"):
        distill.Distiller(teacher, student, DistillConfig(hidden_loss_weight=1.0), same_tokenizer=False)

    distiller = distill.Distiller(teacher, student, DistillConfig(alpha=0.0, temperature=1.0), task="sequence",
                                  same_tokenizer=False)
    targets = np.array([[2.0, -2.0], [-1.0, 1.0], [0.5, 0.0]], np.float32)
    distiller.use_teacher_logits(targets)
    features = {"input_ids": np.array([[2, 6, 3, 0], [2, 7, 8, 3]], np.int32),
                "attention_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32),
                "token_type_ids": np.zeros((2, 4), np.int32)}
    loss, logits, terms = distiller.loss_fn(distiller, {**features, "example_index": np.array([2, 0], np.int32)},
                                            np.array([1, 0], np.int32), training=False)
    expected = distill.kd_loss(logits, targets[[2, 0]], 1.0)
    np.testing.assert_allclose(terms["distill/kd_loss"].numpy(), expected.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="cannot run on the student's batch"):
        distiller.loss_fn(distiller, features, np.array([1, 0], np.int32), training=False)


# ---------------------------------------------------------------------------------- per-word targets
WORDS = [["john", "visited", "extra", "words", "!"], ["mary", "told", "reuters", "in", "berlin", "."],
         ["the", "eu", "said", "it", "won"]]


@pytest.fixture
def word_setup(tiny_mpnet_token_dir, tiny_tokenizer):
    from conftest import CONLL_LABELS
    from tfcompress.compress import teacher_logits
    from tfcompress.data import encoding, readers
    from tfcompress.models import loading
    from tfcompress.models.facts import model_input_names

    teacher = loading.load_model(str(tiny_mpnet_token_dir), task="token", labels=CONLL_LABELS)
    teacher_tokenizer = loading.load_tokenizer(str(tiny_mpnet_token_dir))
    examples = readers.TokenClassificationExamples(WORDS, [["O"] * len(w) for w in WORDS], CONLL_LABELS, "words")

    def targets(teacher_length=32):
        data = encoding.encode(teacher_tokenizer, examples, max_length=teacher_length,
                               input_names=model_input_names(teacher))
        positions = teacher_logits.word_positions(teacher_tokenizer, WORDS, teacher_length)
        return positions, teacher_logits.compute_word_logits(teacher, data, positions, batch_size=2)

    student = encoding.encode(tiny_tokenizer, examples, max_length=32)
    return teacher, teacher_tokenizer, targets, student


def test_per_word_targets_are_the_teachers_first_sub_token_logits_at_the_students_first_sub_tokens(
        word_setup, tiny_tokenizer):
    from tfcompress.compress import teacher_logits

    teacher, teacher_tokenizer, targets, student = word_setup
    teacher_positions, word_logits = targets()
    student_positions = teacher_logits.word_positions(tiny_tokenizer, WORDS, 32)
    assert [list(p) for p in teacher_positions] != [list(p) for p in student_positions]  # two tokenizations
    values, mask, masked = teacher_logits.align_to_student(word_logits, student_positions, student.lengths())
    assert masked == 0 and mask.sum() == sum(len(w) for w in WORDS)
    offset, word = 0, 0
    for sentence, t_pos, s_pos, length in zip(WORDS, teacher_positions, student_positions, student.lengths()):
        alone = teacher_tokenizer([sentence], is_split_into_words=True, return_tensors="tf", return_token_type_ids=False)
        logits = teacher(dict(alone), training=False).logits.numpy()[0]
        for w in range(len(sentence)):  # the same word: the teacher's own logits, at the student's position
            np.testing.assert_allclose(values[offset + s_pos[w]], logits[t_pos[w]], atol=1e-5)
            assert mask[offset + s_pos[w]] == 1.0
            word += 1
        offset += length
    # the labels the student trains on sit exactly where the targets are
    assert np.array_equal(np.concatenate(student.labels) != -100, mask == 1.0)


def test_words_the_teacher_truncated_are_masked_and_counted(word_setup, tiny_tokenizer):
    from tfcompress.compress import teacher_logits

    _, _, targets, student = word_setup
    _, word_logits = targets(teacher_length=5)  # <s> + 3 tokens + </s>: later words unseen
    assert np.isnan(word_logits).any(axis=1).sum() > 0
    student_positions = teacher_logits.word_positions(tiny_tokenizer, WORDS, 32)
    values, mask, masked = teacher_logits.align_to_student(word_logits, student_positions, student.lengths())
    assert masked == int(np.isnan(word_logits).any(axis=1).sum()) and not np.isnan(values).any()
    assert mask.sum() == sum(len(w) for w in WORDS) - masked


def test_word_targets_of_other_sentences_are_refused_naming_the_file(tmp_path, word_setup, tiny_mpnet_token_dir,
                                                                      tiny_tokenizer):
    from conftest import CONLL_LABELS
    from tfcompress.compress import teacher_logits

    teacher, teacher_tokenizer, targets, student = word_setup
    positions, word_logits = targets()
    student_positions = teacher_logits.word_positions(tiny_tokenizer, WORDS, 32)
    with pytest.raises(teacher_logits.TeacherCacheError, match="other sentences"):
        teacher_logits.align_to_student(word_logits[:-1], student_positions, student.lengths())
    cache = teacher_logits.TeacherLogitCache(tmp_path)
    fields = teacher_logits.cache_fields(tiny_mpnet_token_dir, CONLL_LABELS, WORDS, 32)
    fields["num_rows"] = sum(len(w) for w in WORDS)
    other = teacher_logits.cache_fields(tiny_mpnet_token_dir, CONLL_LABELS, WORDS[::-1], 32)  # another file
    cache._write(cache.path_for(fields), dict(other, num_rows=fields["num_rows"]), word_logits)
    with pytest.raises(teacher_logits.TeacherCacheError, match="field 'texts_sha256'") as error:
        cache.load_or_compute_words(fields, teacher, None, positions)
    assert str(cache.path_for(fields)) in str(error.value)


def test_the_cache_key_follows_the_teacher_files_and_dtype_not_the_folder(tmp_path, tiny_mpnet_dir):
    import shutil

    from tfcompress.compress import teacher_logits

    cache = teacher_logits.TeacherLogitCache(tmp_path / "cache")
    base = _fields(tiny_mpnet_dir)
    moved = tmp_path / "elsewhere" / "teacher"
    shutil.copytree(tiny_mpnet_dir, moved)
    same = teacher_logits.cache_fields(moved, ["negative", "positive"], TEXTS, 16)
    assert cache.path_for(same).name.split("-")[-1] == cache.path_for(base).name.split("-")[-1]  # same key
    (moved / "vocab.txt").write_text((moved / "vocab.txt").read_text() + "\nnewword")  # another tokenizer
    assert teacher_logits.cache_fields(moved, ["negative", "positive"], TEXTS, 16)["teacher_weights_sha256"] \
        != base["teacher_weights_sha256"]
    half = teacher_logits.cache_fields(tiny_mpnet_dir, ["negative", "positive"], TEXTS, 16, dtype="mixed_float16")
    assert cache.path_for(half) != cache.path_for(base)
    with pytest.raises(teacher_logits.TeacherCacheError, match="not a model folder"):
        teacher_logits.cache_fields(tmp_path / "missing", ["negative", "positive"], TEXTS, 16)


def test_non_finite_teacher_logits_are_never_cached(tmp_path, tiny_mpnet_dir, teacher, teacher_data, monkeypatch):
    from tfcompress.compress import teacher_logits

    real = teacher_logits.compute_logits

    def overflowing(*args, **kwargs):
        logits = real(*args, **kwargs)
        logits[2] = np.nan
        return logits

    monkeypatch.setattr(teacher_logits, "compute_logits", overflowing)
    cache = teacher_logits.TeacherLogitCache(tmp_path)
    fields = _fields(tiny_mpnet_dir)
    with pytest.raises(teacher_logits.TeacherCacheError, match="non-finite logits for 1 texts"):
        cache.load_or_compute(fields, teacher, teacher_data)
    assert not cache.path_for(fields).exists()
    cut = cache.path_for(fields)
    cut.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(teacher_logits.TeacherCacheError, match="not a readable teacher-logits cache"):
        cache.load(fields)


def test_word_level_hidden_states_across_tokenizers_compare_each_words_first_sub_tokens(word_setup, tiny_tokenizer,
                                                                                        tmp_path, tiny_mpnet_token_dir):
    from conftest import CONLL_LABELS
    from tfcompress.compress import distill, teacher_logits
    from tfcompress.config.training import DistillConfig
    from tfcompress.data import encoding, readers
    from tfcompress.errors import ConfigError
    from tfcompress.models.facts import model_input_names

    teacher, teacher_tokenizer, _, student_data = word_setup
    examples = readers.TokenClassificationExamples(WORDS, [["O"] * len(w) for w in WORDS], CONLL_LABELS, "words")
    data = encoding.encode(teacher_tokenizer, examples, max_length=6, input_names=model_input_names(teacher))
    positions = teacher_logits.word_positions(teacher_tokenizer, WORDS, 6)  # max length 6: later words unseen
    cache = teacher_logits.TeacherLogitCache(tmp_path)
    fields = dict(teacher_logits.cache_fields(tiny_mpnet_token_dir, CONLL_LABELS, WORDS, 6),
                  num_rows=sum(len(w) for w in WORDS), hidden_layers=[0, 2])
    word_logits, hidden, info = cache.load_or_compute_words(fields, teacher, data, positions, batch_size=2)
    assert hidden.shape == (fields["num_rows"], 2, 32) and hidden.dtype == np.float16 and not info["reused"]
    again, reread, info = cache.load_or_compute_words(fields, teacher, data, positions, batch_size=2)
    assert info["reused"] and np.array_equal(reread, hidden) and np.array_equal(again, word_logits, equal_nan=True)
    logits_only = {k: v for k, v in fields.items() if k != "hidden_layers"}
    assert cache.path_for(logits_only) != cache.path_for(fields)
    word = 0
    for sentence, t_pos in zip(WORDS, positions):  # the teacher's own hidden states of the sentence alone
        alone = teacher_tokenizer([sentence], is_split_into_words=True, truncation=True, max_length=6,
                                  return_tensors="tf", return_token_type_ids=False)
        states = teacher(dict(alone), training=False, output_hidden_states=True).hidden_states
        for w, position in enumerate(t_pos):
            for k, layer in enumerate((0, 2)):
                expected = states[layer].numpy()[0, position] if position >= 0 else np.zeros(32)
                np.testing.assert_allclose(hidden[word, k], expected, atol=2e-2, rtol=1e-2)
            word += 1

    student_positions = teacher_logits.word_positions(tiny_tokenizer, WORDS, 32)
    flat = teacher_logits.student_word_positions(word_logits, student_positions)
    unseen = np.isnan(word_logits).any(axis=1)
    assert unseen.any() and (flat[unseen] == -1).all() and (flat[~unseen] >= 0).all()
    student = build_tiny_model("token", num_labels=9, hidden_size=16)  # narrower: a learned projection
    config = DistillConfig(alpha=0.5, temperature=1.0, hidden_loss_weight=1.0, layer_map=((0, 0), (2, 2)))
    with pytest.raises(ConfigError, match="attention_loss_weight"):
        distill.Distiller(teacher, student, DistillConfig(attention_loss_weight=1.0), task="token",
                          same_tokenizer=False)
    distiller = distill.Distiller(teacher, student, config, task="token", same_tokenizer=False)
    values, mask, _ = teacher_logits.align_to_student(word_logits, student_positions, student_data.lengths())
    with pytest.raises(ConfigError, match="hidden_loss_weight=1.0: pass the teacher's per-word hidden states"):
        distiller.use_teacher_token_logits(values, mask, student_data.lengths())
    distiller.use_teacher_token_logits(values, mask, student_data.lengths(), word_hidden=hidden, word_positions=flat,
                                       words_per_example=[len(w) for w in WORDS])
    rows = np.array([1, 0])
    features, labels = student_data.padded_batch(rows)
    _, _, terms = distiller.loss_fn(distiller, {**features, "example_index": rows.astype(np.int32)}, labels,
                                    training=False)
    states = student(features, training=False, output_hidden_states=True).hidden_states
    starts = np.concatenate([[0], np.cumsum([len(w) for w in WORDS])])
    per_layer = []
    for k, (_, s) in enumerate(config.layer_map):  # the reference: word by word, in numpy
        errors = []
        for row, example in enumerate(rows):
            for w in range(starts[example], starts[example + 1]):
                if flat[w] >= 0:
                    projected = distiller.hidden_projections[k](states[s][row:row + 1, flat[w]][None]).numpy()
                    errors.append(np.mean((projected[0, 0] - hidden[w, k].astype(np.float32)) ** 2))
        per_layer.append(np.mean(errors))
    np.testing.assert_allclose(terms["distill/hidden_loss"].numpy(), np.mean(per_layer), rtol=1e-5)


def test_per_word_targets_land_on_the_sentence_words_of_a_student_reading_document_context(word_setup, tiny_tokenizer):
    """The teacher reads each sentence alone; a student that reads the neighbouring sentences too
    (data.document_context) gets each target at its first sub-token of the sentence's own word: exactly the
    positions its labels score, none on the context words."""
    from conftest import CONLL_LABELS
    from tfcompress.compress import teacher_logits
    from tfcompress.config.constants import IGNORE_INDEX
    from tfcompress.data import encoding, readers

    _, _, targets, alone = word_setup
    _, word_logits = targets()
    examples = readers.with_document_context(
        readers.TokenClassificationExamples(WORDS, [["O"] * len(w) for w in WORDS], CONLL_LABELS, "words"), 3)
    assert any(examples.left) and any(examples.right)
    student = encoding.encode(tiny_tokenizer, examples, max_length=32)
    spans = [(left, len(sentence)) for left, sentence in zip(examples.left_counts(), WORDS)]
    positions = teacher_logits.word_positions(tiny_tokenizer, examples.words_in_context(), 32, spans)
    values, mask, masked = teacher_logits.align_to_student(word_logits, positions, student.lengths())
    labelled = np.concatenate([labels != IGNORE_INDEX for labels in student.labels])
    assert masked == 0 and mask.astype(bool).tolist() == labelled.tolist()
    plain_values, plain_mask, _ = teacher_logits.align_to_student(
        word_logits, teacher_logits.word_positions(tiny_tokenizer, WORDS, 32), alone.lengths())
    np.testing.assert_array_equal(values[mask == 1], plain_values[plain_mask == 1])  # the same targets, in order
