"""Distillation: the teacher stays frozen, the loss is the reference formula, students copy the teacher."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tfcompress._compat import tf
from tfcompress.compress import distill
from tfcompress.models import student
from tfcompress.models import surgery
from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.data.encoding import EncodedData
from tfcompress.compress.distill import Distiller
from tfcompress.config.training import DistillConfig
from tfcompress.models.student import make_student

from conftest import VOCAB, build_tiny_model, seeded_weights


def _encoded(task: str, lengths, num_labels: int, seed: int = 0, token_type_ids: bool = True) -> EncodedData:
    """Random unpadded examples: [CLS] ids... [SEP]; token labels with -100 on specials and every 3rd."""
    rng = np.random.default_rng(seed)
    features = {"input_ids": [], "attention_mask": []}
    if token_type_ids:
        features["token_type_ids"] = []
    labels = []
    for length in lengths:
        ids = np.concatenate([[2], rng.integers(5, len(VOCAB), length - 2), [3]]).astype(np.int32)
        features["input_ids"].append(ids)
        features["attention_mask"].append(np.ones(length, np.int32))
        if token_type_ids:
            features["token_type_ids"].append(np.zeros(length, np.int32))
        if task == "token":
            tags = rng.integers(0, num_labels, length).astype(np.int32)
            tags[0] = tags[-1] = IGNORE_INDEX
            tags[2::3] = IGNORE_INDEX  # non-first sub-tokens
            labels.append(tags)
        else:
            labels.append(int(rng.integers(0, num_labels)))
    return EncodedData(task=task, features=features, labels=labels,
                       label_names=[f"L{i}" for i in range(num_labels)])


def _tensors(features: dict) -> dict:
    return {name: tf.constant(value) for name, value in features.items()}


def _loss(distiller, features, labels, training=False):
    loss, logits, terms = distiller.loss_fn(distiller, _tensors(features), tf.constant(labels), training)
    return float(loss), {name: float(value) for name, value in terms.items()}


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------------- configuration

def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match=r"DistillConfig\.alpha=1\.5"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match=r"DistillConfig\.temperature=0"):
        DistillConfig(temperature=0)
    with pytest.raises(ValueError, match=r"final_temperature.*linear"):
        DistillConfig(temperature_schedule="linear")
    with pytest.raises(ValueError, match=r"temperature_schedule='cosine'"):
        DistillConfig(temperature_schedule="cosine")
    with pytest.raises(ValueError, match=r"hidden_loss_weight=-1"):
        DistillConfig(hidden_loss_weight=-1)
    with pytest.raises(ValueError, match=r"layer_map='2-1'"):
        DistillConfig(layer_map="2-1")
    assert DistillConfig(layer_map="2:1, 4:2").layer_map == ((2, 1), (4, 2))
    assert DistillConfig(layer_map=[[6, 3]]).layer_map == ((6, 3),)


def test_uniform_layer_map_and_indices_follow_distilbert():
    assert distill.uniform_layer_map(6, 3) == ((2, 1), (4, 2), (6, 3))
    assert distill.uniform_layer_map(12, 4) == ((3, 1), (6, 2), (9, 3), (12, 4))
    assert student.uniform_layer_indices(12, 6) == [0, 2, 4, 7, 9, 11]
    assert student.uniform_layer_indices(6, 3) == [0, 2, 5]
    assert student.uniform_layer_indices(2, 1) == [0]


def test_linear_temperature_schedule_is_set_by_the_hook():
    teacher = build_tiny_model("sequence")
    distiller = Distiller(teacher, make_student(teacher, num_layers=1),
                          DistillConfig(temperature=4.0, temperature_schedule="linear", final_temperature=1.0))

    class FakeTrainer:
        total_steps = 4
        global_step = 0

    (hook,) = distill.hooks(distiller)
    seen = []
    for step in range(4):
        hook.on_step_begin(FakeTrainer(), step)
        seen.append(float(distiller.temperature.numpy()))
    np.testing.assert_allclose(seen, [4.0, 3.0, 2.0, 1.0])
    assert hook.summaries(FakeTrainer(), 3) == {"distill/temperature": 1.0}


# ----------------------------------------------------------------------------------- the loss

def test_kd_loss_matches_reference_formula():
    # Hand-computed: teacher [2, 0], student [0, 0], T = 2 -> p_t = softmax([1, 0]) = [0.731059, 0.268941],
    # p_s = [0.5, 0.5]; KL = 0.731059 ln(1.462117) + 0.268941 ln(0.537883) = 0.277731 - 0.166787
    # = 0.110944; times T^2 = 4: 0.443776.
    value = distill.kd_loss(tf.constant([[0.0, 0.0]]), tf.constant([[2.0, 0.0]]), 2.0)
    assert float(value) == pytest.approx(0.443776, abs=1e-5)

    # The Distiller's loss on a 2-example batch equals alpha * CE + (1 - alpha) * T^2 * KL in numpy.
    # Fixed weights (tf_keras initialisers are not reproducible across processes): the tolerances
    # below and the KL floor hold for this starting point on every machine, whatever ran before.
    teacher = seeded_weights(build_tiny_model("sequence", num_labels=3, num_hidden_layers=2), seed=0)
    student = seeded_weights(make_student(teacher, config_overrides={"hidden_size": 16, "intermediate_size": 32},
                                          num_layers=1), seed=1)
    # Freshly initialised heads give logits ~1e-2 (KL ~1e-6, float32 noise): widen them to O(1).
    rng = np.random.default_rng(0)
    for model in (teacher, student):
        model.classifier.kernel.assign(rng.normal(scale=3.0, size=model.classifier.kernel.shape))
    alpha, temperature = 0.3, 2.5
    distiller = Distiller(teacher, student, DistillConfig(temperature=temperature, alpha=alpha))
    data = _encoded("sequence", [7, 5], num_labels=3)
    features, labels = data.padded_batch([0, 1])
    loss, terms = _loss(distiller, features, labels)

    inputs = _tensors(features)
    s = student(inputs, training=False).logits.numpy().astype(np.float64)
    t = teacher(inputs, training=False).logits.numpy().astype(np.float64)
    ce = -_log_softmax(s)[np.arange(2), labels].mean()
    log_pt, log_ps = _log_softmax(t / temperature), _log_softmax(s / temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1).mean()
    expected = alpha * ce + (1 - alpha) * temperature ** 2 * kl
    assert terms["distill/task_loss"] == pytest.approx(ce, rel=1e-5)
    assert terms["distill/kd_loss"] == pytest.approx(temperature ** 2 * kl, rel=1e-4)
    assert loss == pytest.approx(expected, rel=1e-5)
    assert kl > 1e-2  # the two models disagree, so the KL term is really exercised


def test_per_word_targets_teach_unlabelled_words_too():
    """With a teacher mask (per-word targets), the KL term counts every word that has a target,
    labelled or not (an augmented sentence has no hard label), and nothing else."""
    rng = np.random.default_rng(2)
    student_logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
    teacher_logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], np.float32)
    teacher_mask = np.array([[0, 1, 0, 1, 0], [0, 1, 1, 0, 0]], np.float32)  # first sub-tokens with a target
    labels = np.array([[-100, 1, -100, 3, -100], [-100, -100, -100, -100, -100]], np.int32)  # 2nd: augmented
    _, terms = distill.logit_losses(tf.constant(student_logits), tf.constant(teacher_logits), tf.constant(labels),
                                    tf.constant(padding), "token", 0.5, 1.0, teacher_mask=tf.constant(teacher_mask))
    p_t = np.exp(teacher_logits) / np.exp(teacher_logits).sum(-1, keepdims=True)
    log_p_s = student_logits - np.log(np.exp(student_logits).sum(-1, keepdims=True))
    kl = (p_t * (np.log(p_t) - log_p_s)).sum(-1)
    assert float(terms["distill/kd_loss"]) == pytest.approx(kl[teacher_mask == 1].mean(), rel=1e-5)
    labelled_only = kl[(teacher_mask == 1) & (labels != IGNORE_INDEX)].mean()
    assert float(terms["distill/kd_loss"]) != pytest.approx(labelled_only, rel=1e-3)


def test_token_task_masks_padding():
    rng = np.random.default_rng(1)
    batch, length, classes = 2, 6, 5
    student_logits = rng.normal(size=(batch, length, classes)).astype(np.float32)
    teacher_logits = rng.normal(size=(batch, length, classes)).astype(np.float32)
    padding = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], np.float32)
    labels = np.array([[-100, 1, -100, 3, 0, -100], [-100, 2, 4, -100, -100, -100]], np.int32)
    # position (1, 4) is padding although a stray label sits there: it must not count either
    labels[1, 4] = 2

    def loss(s, t, y=labels):
        total, terms = distill.logit_losses(tf.constant(s), tf.constant(t), tf.constant(y),
                                            tf.constant(padding), "token", 0.4, 2.0)
        return float(total), {k: float(v) for k, v in terms.items()}

    base, base_terms = loss(student_logits, teacher_logits)
    ignored = (labels == IGNORE_INDEX) | (padding == 0)
    noisy_s, noisy_t = student_logits.copy(), teacher_logits.copy()
    noisy_s[ignored] += rng.normal(scale=10.0, size=(ignored.sum(), classes))
    noisy_t[ignored] -= rng.normal(scale=10.0, size=(ignored.sum(), classes))
    changed, changed_terms = loss(noisy_s, noisy_t)
    assert changed == pytest.approx(base, rel=1e-6)
    assert changed_terms == pytest.approx(base_terms, rel=1e-6)
    # ...while a change at a counted position does move the loss (the check can fail).
    noisy_s[0, 1, 0] += 3.0  # one class (a shift of every class is softmax-invariant)
    assert loss(noisy_s, noisy_t)[0] != pytest.approx(base, rel=1e-3)

    # End to end through the models: padding token ids change nothing in any term.
    teacher = build_tiny_model("token", num_labels=5)
    student = make_student(teacher, num_layers=1)
    distiller = Distiller(teacher, student, DistillConfig(alpha=0.5, hidden_loss_weight=1.0,
                                                          attention_loss_weight=1.0))
    data = _encoded("token", [9, 5], num_labels=5)
    features, labels = data.padded_batch([0, 1])
    base, base_terms = _loss(distiller, features, labels)
    assert set(base_terms) == {"distill/task_loss", "distill/kd_loss", "distill/hidden_loss",
                               "distill/attention_loss"}
    features["input_ids"][1, 5:] = 17  # padding positions of the shorter example
    features["token_type_ids"][1, 5:] = 1
    padded, padded_terms = _loss(distiller, features, labels)
    assert padded == pytest.approx(base, rel=1e-5)
    assert padded_terms == pytest.approx(base_terms, rel=1e-5)


# ----------------------------------------------------------------------------------- training

def _train_steps(distiller, data, steps=3, learning_rate=1e-2):
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    features, labels = data.padded_batch(np.arange(len(data)))
    features, labels = _tensors(features), tf.constant(labels)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss, _, _ = distiller.loss_fn(distiller, features, labels, True)
        variables = distiller.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return float(loss)


def test_distiller_updates_student_not_teacher(tmp_path):
    from tfcompress.config.training import TrainConfig
    from tfcompress.train.trainer import Trainer

    teacher = build_tiny_model("sequence")
    student = make_student(teacher, num_layers=1)
    distiller = Distiller(teacher, student, DistillConfig(temperature=2.0, alpha=0.5, hidden_loss_weight=1.0,
                                                          attention_loss_weight=1.0))
    teacher_ids = {id(v) for v in teacher.weights}
    assert not teacher_ids & {id(v) for v in distiller.trainable_variables}
    assert {id(v) for v in student.trainable_variables} <= {id(v) for v in distiller.trainable_variables}
    teacher_before = [v.numpy().copy() for v in teacher.weights]
    student_before = [v.numpy().copy() for v in student.trainable_variables]

    data = _encoded("sequence", [6, 8, 5, 7, 9, 6, 4, 8], num_labels=2)
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, max_steps=3,
                         log_every=1, checkpoint_every=100, histograms=False)
    trainer = Trainer(distiller, "sequence", config, tmp_path / "distill", hooks=distill.hooks(distiller),
                      loss_fn=distiller.loss_fn, label_names=data.label_names, stage="distill")
    trainer.fit(data)

    for before, variable in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=f"teacher changed: {variable.name}")
    unchanged = [v.name for before, v in zip(student_before, student.trainable_variables)
                 if np.array_equal(before, v.numpy())]
    assert not unchanged, f"student weights not trained: {unchanged}"


def test_batches_without_hard_labels_still_train_the_student(tmp_path):
    """Augmented and transfer examples carry only the teacher's label: the Trainer weighs each replica's
    loss by what it averages over, and a batch of such examples must not get weight 0 (it did: a
    CoNLL-2003 student reading document context skipped every batch of transfer sentences)."""
    from tfcompress.config.training import TrainConfig
    from tfcompress.train.trainer import Trainer

    teacher = seeded_weights(build_tiny_model("sequence"), seed=0)
    student = seeded_weights(make_student(teacher, num_layers=1), seed=1)
    distiller = Distiller(teacher, student, DistillConfig(alpha=0.5))
    data = _encoded("sequence", [6, 8, 5, 7], num_labels=2)
    data = dataclasses.replace(data, labels=[IGNORE_INDEX] * 4)
    before = [v.numpy().copy() for v in student.trainable_variables]
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, max_steps=1, log_every=1,
                         checkpoint_every=100, histograms=False)
    Trainer(distiller, "sequence", config, tmp_path / "distill", hooks=distill.hooks(distiller),
            loss_fn=distiller.loss_fn, label_names=data.label_names, stage="distill").fit(data)
    logged = [json.loads(line) for line in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    step = next(row for row in logged if "train/loss" in row)
    assert step["train/loss"] > 0 and step["train/grad_norm"] > 0
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, student.trainable_variables))


def test_loss_count_counts_labels_and_each_example_without_one():
    teacher = build_tiny_model("token", num_labels=3)
    student = make_student(teacher, num_layers=1)
    ignore = IGNORE_INDEX
    token_labels = tf.constant([[ignore, 1, 2, ignore], [ignore] * 4, [ignore, 0, ignore, ignore]])
    assert float(Distiller(teacher, student, DistillConfig(alpha=0.5)).loss_count(token_labels)) == 3 + 1
    assert float(Distiller(teacher, student, DistillConfig(alpha=1.0)).loss_count(token_labels)) == 3
    sequence_labels = tf.constant([1, ignore, 0, ignore])
    assert float(Distiller(teacher, student, DistillConfig(alpha=0.5)).loss_count(sequence_labels)) == 4


def test_hidden_projection_when_widths_differ():
    teacher = build_tiny_model("sequence")  # hidden 32
    narrow = make_student(teacher, num_layers=1, config_overrides={"hidden_size": 16,
                                                                   "intermediate_size": 32})
    config = DistillConfig(hidden_loss_weight=1.0, layer_map=((0, 0), (2, 1)))
    distiller = Distiller(teacher, narrow, config)
    assert [tuple(p.kernel.shape) for p in distiller.hidden_projections] == [(16, 32), (16, 32)]
    projection_ids = {id(w) for p in distiller.hidden_projections for w in p.weights}
    assert projection_ids <= {id(v) for v in distiller.trainable_variables}
    assert not projection_ids & {id(v) for v in narrow.weights}  # not saved with the student

    data = _encoded("sequence", [6, 8, 5], num_labels=2)
    before = [p.kernel.numpy().copy() for p in distiller.hidden_projections]
    _train_steps(distiller, data, steps=2)
    for kernel_before, projection in zip(before, distiller.hidden_projections):
        assert not np.allclose(kernel_before, projection.kernel.numpy())

    same_width = Distiller(teacher, make_student(teacher, num_layers=1), config)
    assert len(same_width.hidden_projections) == 0
    with pytest.raises(ValueError, match="layer_map"):
        Distiller(teacher, narrow, DistillConfig(hidden_loss_weight=1.0, layer_map=((3, 1),)))


# ----------------------------------------------------------------------------------- students

def _block_weights(model):
    prefix = getattr(model, model.base_model_prefix)
    blocks = prefix.transformer.layer if hasattr(prefix, "transformer") else prefix.encoder.layer
    return [[w.numpy() for w in block.weights] for block in blocks]


def _non_block_weights(model):
    return {surgery.relative_weight_name(w): w.numpy() for w in model.weights if "layer_._" not in w.name}


@pytest.mark.parametrize("model_type,task,kwargs,expected", [
    ("bert", "sequence", dict(num_layers=2), [0, 3]),
    ("distilbert", "token", dict(layer_indices=[1, 2]), [1, 2]),
])
def test_layer_subset_student_copies_teacher_weights(model_type, task, kwargs, expected):
    overrides = {"n_layers": 4} if model_type == "distilbert" else {"num_hidden_layers": 4}
    teacher = build_tiny_model(task, model_type, num_labels=3, **overrides)
    student = make_student(teacher, **kwargs)
    assert student.config.num_hidden_layers == len(expected)
    assert student.config.id2label == teacher.config.id2label
    teacher_blocks, student_blocks = _block_weights(teacher), _block_weights(student)
    assert len(student_blocks) == len(expected)
    for j, i in enumerate(expected):
        for s, t in zip(student_blocks[j], teacher_blocks[i]):
            np.testing.assert_array_equal(s, t)
    # block 1 of the student is teacher block expected[1], not teacher block 1
    assert not all(np.array_equal(s, t) for s, t in zip(student_blocks[1], teacher_blocks[1]))
    teacher_rest, student_rest = _non_block_weights(teacher), _non_block_weights(student)
    assert set(student_rest) == set(teacher_rest)  # embeddings, pooler, classifier
    for name, value in student_rest.items():
        np.testing.assert_array_equal(value, teacher_rest[name], err_msg=name)
    # the student owns copies, not the teacher's variables
    assert not {id(v) for v in student.weights} & {id(v) for v in teacher.weights}


def test_student_keeping_every_layer_reproduces_the_teacher():
    teacher = build_tiny_model("sequence", num_labels=3)
    copy = make_student(teacher, layer_indices=[0, 1])
    inputs = teacher.dummy_inputs
    np.testing.assert_allclose(copy(inputs).logits.numpy(), teacher(inputs).logits.numpy(), atol=1e-6)
    fresh = make_student(teacher, num_layers=1, config_overrides={"intermediate_size": 16})
    assert fresh.config.num_hidden_layers == 1 and fresh.config.intermediate_size == 16
    with pytest.raises(ValueError, match="no such field"):
        make_student(teacher, config_overrides={"hidden_sise": 16})
    with pytest.raises(ValueError, match="layer_indices"):
        make_student(teacher, layer_indices=[1, 0])


# ----------------------------------------------------------------------------------- caching

@pytest.mark.parametrize("task", ["sequence", "token"])
def test_cached_teacher_equals_live_teacher(task):
    teacher = build_tiny_model(task, num_labels=3)
    student = make_student(teacher, num_layers=1)
    distiller = Distiller(teacher, student, DistillConfig(alpha=0.5, hidden_loss_weight=1.0,
                                                          attention_loss_weight=1.0, cache_teacher=True))
    data = _encoded(task, [5, 9, 6, 12, 7], num_labels=3)
    summary = distiller.cache_teacher_outputs(data, batch_size=2)
    assert summary["examples"] == 5 and summary["tokens"] == 39
    assert distiller.needs_example_index
    assert not any("teacher_cache" in v.name for v in distiller.variables)  # not checkpointed

    indices = np.array([3, 0, 4])  # padded to 12: the cache pads shorter examples the same way
    features, labels = data.padded_batch(indices)
    live, live_terms = _loss(distiller, features, labels)
    cached_features = dict(features, example_index=indices.astype(np.int32))
    cached, cached_terms = _loss(distiller, cached_features, labels)
    assert cached == pytest.approx(live, rel=1e-5)
    assert cached_terms == pytest.approx(live_terms, rel=1e-5, abs=1e-7)

    # Inside a traced function too (how the Trainer calls it), and the cache really is what is read:
    # after the teacher changes, the cached loss stays and the live one moves.
    traced = tf.function(lambda f, y: distiller.loss_fn(distiller, f, y, False)[0])
    assert float(traced(_tensors(cached_features), tf.constant(labels))) == pytest.approx(live, rel=1e-5)
    for w in teacher.weights:
        w.assign(w * 0.5)
    assert _loss(distiller, cached_features, labels)[0] == pytest.approx(live, rel=1e-5)
    assert _loss(distiller, features, labels)[0] != pytest.approx(live, rel=1e-3)

    # Indices into another data set are caught by the length check.
    wrong = dict(features, example_index=np.array([0, 1, 2], np.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="cached teacher outputs"):
        _loss(distiller, wrong, labels)


def test_cache_refuses_more_than_its_memory_budget():
    teacher = build_tiny_model("sequence")
    distiller = Distiller(teacher, make_student(teacher, num_layers=1),
                          DistillConfig(hidden_loss_weight=1.0, cache_teacher=True, cache_max_megabytes=1))
    data = _encoded("sequence", [60] * 200, num_labels=2)  # 12,000 tokens x 32 x 1 layer x 4 B = 1.5 MB
    with pytest.raises(ValueError, match="cache_max_megabytes=1"):
        distiller.cache_teacher_outputs(data)


# ----------------------------------------------------------------------------------- combinations

def test_distill_with_pruning_reaches_sparsity(tmp_path):
    from tfcompress.compress import prune
    from tfcompress.config import training
    from tfcompress.config.training import TrainConfig
    from tfcompress.train.trainer import Trainer

    teacher = build_tiny_model("sequence")
    student = make_student(teacher, num_layers=1)
    prune_config = training.PruneConfig(final_sparsity=0.6, end_step=3, frequency=1)
    prune.apply(student, prune_config, total_steps=4)
    distiller = Distiller(teacher, student, DistillConfig(temperature=2.0, alpha=0.5, hidden_loss_weight=1.0))
    teacher_before = [v.numpy().copy() for v in teacher.weights]

    data = _encoded("sequence", [6, 8, 5, 7, 9, 6, 4, 8], num_labels=2)
    config = TrainConfig(max_steps=4, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0, log_every=1,
                         checkpoint_every=100, histograms=False)
    trainer = Trainer(distiller, "sequence", config, tmp_path / "distill", stage="distill",
                      hooks=distill.hooks(distiller) + prune.hooks(prune_config), loss_fn=distiller.loss_fn)
    trainer.fit(data)

    # only the student was wrapped and pruned; the teacher is untouched and dense
    assert not surgery.find_layers(teacher, kinds=(prune.PruneLowMagnitude,))
    for before, variable in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.name)
    prune.strip(student)
    report = prune.sparsity_report(student)
    assert len(report["pruned_layers"]) == 6  # q, k, v, attention output, intermediate, output
    assert report["pruned"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    # the stripped student still runs and its logits are what the distiller predicts
    inputs = _tensors(data.padded_batch([0, 1])[0])
    np.testing.assert_allclose(distiller(inputs).numpy(), student(inputs).logits.numpy(), atol=1e-6)


def test_sequence_kd_counts_unlabelled_examples_and_ce_skips_them():
    """Augmented texts carry IGNORE_INDEX: no cross-entropy, but the KL to the teacher still counts."""
    rng = np.random.default_rng(2)
    student = rng.normal(size=(4, 3)).astype(np.float32)
    teacher = rng.normal(size=(4, 3)).astype(np.float32)
    labels = np.array([0, 2, IGNORE_INDEX, IGNORE_INDEX], np.int32)
    padding = np.ones((4, 5), np.float32)

    def terms(y):
        _, out = distill.logit_losses(tf.constant(student), tf.constant(teacher), tf.constant(y),
                                      tf.constant(padding), "sequence", 0.5, 2.0)
        return {k: float(v) for k, v in out.items()}

    mixed = terms(labels)
    every_kd = float(distill.kd_loss(tf.constant(student), tf.constant(teacher), 2.0))
    labelled_ce = float(distill.task_loss(tf.constant(student[:2]), tf.constant(labels[:2]), tf.ones(2)))
    assert mixed["distill/kd_loss"] == pytest.approx(every_kd, rel=1e-6)
    assert mixed["distill/task_loss"] == pytest.approx(labelled_ce, rel=1e-6)
    only_unlabelled = terms(np.full(4, IGNORE_INDEX, np.int32))
    assert only_unlabelled["distill/task_loss"] == 0.0
    assert only_unlabelled["distill/kd_loss"] == pytest.approx(every_kd, rel=1e-6)


def test_augment_texts_masks_and_samples_ngrams_deterministically():
    from tfcompress.data.augment import augment_texts

    texts = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés", "bad"]
    new = augment_texts(texts, copies=3, mask_token="[MASK]", seed=7)
    assert new == augment_texts(texts, copies=3, mask_token="[MASK]", seed=7)
    assert new != augment_texts(texts, copies=3, mask_token="[MASK]", seed=8)
    assert len(new) == len(set(new)) and not set(new) & set(texts)
    assert 0 < len(new) <= 3 * len(texts)
    for text in new:
        words = text.split()
        # every augmented text is a window of some source text with words masked
        assert any(
            any(all(w == "[MASK]" or w == s for w, s in zip(words, source.split()[i:i + len(words)]))
                and len(words) <= len(source.split()) - i for i in range(len(source.split())))
            for source in texts), text
    masked = augment_texts(texts[:2], copies=5, mask_token="<mask>", mask_prob=1.0, ngram_prob=0.0)
    assert masked and all(set(t.split()) == {"<mask>"} for t in masked)
    windows = augment_texts(texts[:1], copies=5, mask_token="[MASK]", mask_prob=0.0, ngram_prob=1.0)
    assert windows and all(1 <= len(t.split()) <= 5 and t in texts[0] for t in windows)
    assert augment_texts(texts, copies=0, mask_token="[MASK]") == []
    with pytest.raises(ValueError, match="mask_prob"):
        augment_texts(texts, copies=1, mask_token="[MASK]", mask_prob=1.5)


def test_augment_sentences_keeps_whole_words_of_their_source():
    from tfcompress.data.augment import augment_sentences

    sentences = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."], ["Peter", "Blackburn"]]
    new = augment_sentences(sentences, copies=2, mask_token="[MASK]", mask_prob=0.3, ngram_prob=0.5, seed=1)
    assert new == augment_sentences(sentences, copies=2, mask_token="[MASK]", mask_prob=0.3, ngram_prob=0.5, seed=1)
    assert 0 < len(new) <= 4 and all(isinstance(words, list) for words in new)
    for words in new:
        assert any(any(all(w in ("[MASK]", s) for w, s in zip(words, source[i:i + len(words)]))
                       and i + len(words) <= len(source) for i in range(len(source))) for source in sentences), words
    with pytest.raises(ValueError, match=r"sentence 1: word 'New York'"):
        augment_sentences([["a"], ["New York"]], copies=1, mask_token="[MASK]")


def _toy_embeddings(tokenizer, near: dict) -> np.ndarray:
    """Random unit-ish rows, with each ``near`` word's row a small step from its partner's."""
    vocab = tokenizer.get_vocab()
    matrix = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    for word, partner in near.items():
        matrix[vocab[word]] = matrix[vocab[partner]] + 0.01 * matrix[vocab[word]]
    return matrix


def test_embedding_neighbours_are_nearest_whole_words(tiny_tokenizer):
    from tfcompress.data.augment import embedding_neighbours

    matrix = _toy_embeddings(tiny_tokenizer, {"great": "good", "wonderful": "good", "paris": "london"})
    found = embedding_neighbours(tiny_tokenizer, matrix, ["good", "London", "goods", ".", "42", "good"], k=3)
    assert set(found) == {"good", "London"}  # "goods" is two pieces, "." and "42" are not words
    assert set(found["good"][:2]) == {"great", "wonderful"} and len(found["good"]) == 3
    assert found["London"][0] == "paris"  # the uncased tokenizer reads "London" as "london"
    vocab = set(tiny_tokenizer.get_vocab())
    for word, near in found.items():
        assert word.lower() not in near and all(n.isalpha() and n in vocab for n in near)
    with pytest.raises(ValueError, match="embeddings of shape"):
        embedding_neighbours(tiny_tokenizer, matrix[:10], ["good"])


def test_a_cased_vocabulary_never_offers_the_word_in_another_case(tmp_path):
    from transformers import BertTokenizerFast

    from tfcompress.data.augment import embedding_neighbours

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "Good",
                                                  "great", "bad"]) + "\n")
    cased = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=False)
    matrix = _toy_embeddings(cased, {"Good": "good", "great": "good"})
    assert embedding_neighbours(cased, matrix, ["Good", "good"], k=1) == {"Good": ["great"], "good": ["great"]}


def test_augment_replaces_words_with_their_neighbours_in_the_source_case():
    from tfcompress.data.augment import augment_sentences, augment_texts

    neighbours = {"good": ["great", "fine"], "london": ["paris"], "London": ["paris"], "EU": ["un"]}
    texts = ["a good movie", "good good good"]
    swapped = augment_texts(texts, copies=2, mask_token="[MASK]", mask_prob=0.0, ngram_prob=0.0, seed=1,
                            replace_prob=1.0, neighbours=neighbours)
    assert swapped and all(w in ("a", "movie", "great", "fine") for text in swapped for w in text.split())
    # off: not one random draw more, so the texts (and the teacher caches keyed by them) stay as they were
    # (the lists below are what the code before word replacement made)
    assert augment_texts(texts, 2, "[MASK]", seed=4, neighbours=neighbours) == ["good", "good good [MASK]"]
    reviews = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés"]
    assert augment_texts(reviews, 2, "[MASK]", seed=4) == [
        "a gorgeous , [MASK] , seductive movie .", "a gorgeous , witty , seductive [MASK] .",
        "the [MASK] is nothing but boilerplate [MASK]", "the plot [MASK] nothing but boilerplate clichés"]
    cased = augment_sentences([["EU", "visit", "to", "London"]], copies=1, mask_token="[MASK]", mask_prob=0.0,
                              replace_prob=1.0, neighbours=neighbours)
    assert cased == [["UN", "visit", "to", "Paris"]]
    with pytest.raises(ValueError, match="replace_prob=0.5: needs neighbours"):
        augment_texts(texts, 1, "[MASK]", replace_prob=0.5)


def test_augmentation_config_is_checked():
    with pytest.raises(ValueError, match="augment_copies.*alpha < 1"):
        DistillConfig(alpha=1.0, augment_copies=1)
    with pytest.raises(ValueError, match="augment_copies"):
        DistillConfig(augment_copies=-1)
    with pytest.raises(ValueError, match="augment_ngram_prob"):
        DistillConfig(augment_copies=1, augment_ngram_prob=2.0)
    with pytest.raises(ValueError, match="augment_replace_prob"):
        DistillConfig(augment_copies=1, augment_replace_prob=-0.1)
    with pytest.raises(ValueError, match="augment_replace_prob=0.2: replaces words in augmented copies"):
        DistillConfig(augment_replace_prob=0.2)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="augment_neighbours"):
            DistillConfig(augment_neighbours=bad)
    with pytest.raises(ValueError, match="transfer_file.*alpha < 1"):
        DistillConfig(alpha=1.0, transfer_file="news.txt")
    with pytest.raises(ValueError, match="transfer_max"):
        DistillConfig(transfer_file="news.txt", transfer_max=-1)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="teacher_document_context"):
            DistillConfig(teacher_document_context=bad)
