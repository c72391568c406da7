"""Metrics on hand-computed cases, the shared predict path, agreement."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import CONLL_LABELS, build_tiny_model
from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.data.encoding import EncodedData, encode
from tfcompress.data.readers import read_conll, read_text_classification
from tfcompress.evaluate.metrics import agreement, compute_metrics, evaluate, predict_logits, primary_metric

X = IGNORE_INDEX
ID = {tag: i for i, tag in enumerate(CONLL_LABELS)}


def _one_hot(ids, num_classes):
    ids = np.asarray(ids)
    out = np.zeros(ids.shape + (num_classes,), np.float32)
    np.put_along_axis(out, np.clip(ids, 0, None)[..., None], 1.0, axis=-1)
    return out


def test_primary_metric_per_task():
    assert primary_metric("sequence") == "accuracy"
    assert primary_metric("token") == "f1"
    with pytest.raises(ValueError, match="task='ner'"):
        primary_metric("ner")


def test_sequence_accuracy_macro_f1_and_per_class_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 0, 2])
    metrics = compute_metrics("sequence", _one_hot(preds, 3), labels, ["neg", "pos", "neutral"])
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # neg: P 2/3 R 2/3 F1 2/3 ; pos: P 1/2 R 1/2 F1 1/2 ; neutral: 1 -> macro (2/3 + 1/2 + 1) / 3
    assert metrics["f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert metrics["per_class"]["neg"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert metrics["per_class"]["pos"]["support"] == 2
    assert metrics["num_examples"] == 6


def test_sequence_accepts_predicted_ids_and_drops_negative_labels():
    metrics = compute_metrics("sequence", [1, 0, 1], np.array([1, -1, 0]), ["0", "1"])
    assert metrics["accuracy"] == 0.5
    assert metrics["num_examples"] == 2


def test_entity_f1_differs_from_token_level():
    # gold: [B-PER I-PER] O [B-LOC]     pred: [B-PER O] O [B-LOC]
    # token level: 3 of 4 right (75%); entity level strict: PER span wrong -> P = R = 1/2
    gold = [[ID["B-PER"], ID["I-PER"], ID["O"], ID["B-LOC"]]]
    pred = [[ID["B-PER"], ID["O"], ID["O"], ID["B-LOC"]]]
    metrics = compute_metrics("token", pred, gold, CONLL_LABELS)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["precision"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.5)
    assert metrics["f1"] == pytest.approx(0.5)
    assert metrics["per_entity"]["PER"]["f1"] == 0.0
    assert metrics["per_entity"]["LOC"] == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1})


def test_strict_mode_does_not_count_entity_started_by_i_tag():
    # pred starts the entity with I-PER: lenient (conlleval) matching would count it, strict IOB2 does not
    gold = [[ID["B-PER"], ID["I-PER"], ID["O"]]]
    pred = [[ID["I-PER"], ID["I-PER"], ID["O"]]]
    metrics = compute_metrics("token", pred, gold, CONLL_LABELS)
    assert metrics["f1"] == 0.0
    assert metrics["recall"] == 0.0


def test_token_metrics_drop_ignored_positions_and_padding():
    # sub-token positions (-100) hold wrong predictions: they must not count
    labels = [np.array([X, ID["B-ORG"], X, ID["O"], X]), np.array([X, ID["B-PER"], X])]
    logits = np.zeros((2, 6, len(CONLL_LABELS)), np.float32)  # padded to 6, beyond labels
    for example, positions in enumerate(([ID["I-LOC"], ID["B-ORG"], ID["I-LOC"], ID["O"], ID["I-LOC"], 0],
                                          [ID["B-LOC"], ID["B-PER"], ID["B-LOC"], 3, 3, 3])):
        logits[example, np.arange(6), positions] = 1.0
    metrics = compute_metrics("token", logits, labels, CONLL_LABELS)
    assert metrics["f1"] == 1.0 and metrics["accuracy"] == 1.0
    per_example = [logits[0, :5], logits[1, :3]]
    assert compute_metrics("token", per_example, labels, CONLL_LABELS)["f1"] == 1.0


def test_token_metrics_refuse_missing_predictions_for_labelled_positions():
    with pytest.raises(ValueError, match="2 predictions for 3 label positions"):
        compute_metrics("token", [np.array([0, 0])], [np.array([X, 0, 0])], CONLL_LABELS)


def test_agreement_counts_only_scored_positions():
    a = _one_hot([0, 1, 1, 0], 2)
    b = _one_hot([0, 1, 0, 1], 2)
    assert agreement(a, b, np.array([0, 1, 1, 0]), "sequence") == 0.5
    assert agreement(a, b, np.array([0, 1, -1, -1]), "sequence") == 1.0
    labels = [np.array([X, 1, X, 2])]
    ta = [_one_hot([5, 1, 5, 2], 9)]
    tb = [_one_hot([6, 1, 7, 3], 9)]
    assert agreement(ta, tb, labels, "token") == 0.5


def _sequence_data(tiny_tokenizer, sst_tsv) -> EncodedData:
    return encode(tiny_tokenizer, read_text_classification(sst_tsv), max_length=16)


def test_predict_logits_returns_results_in_example_order(tiny_tokenizer, sst_tsv):
    data = _sequence_data(tiny_tokenizer, sst_tsv)
    seen_widths = []

    def predict_fn(features):
        # logit 0 = the example's token count: lets us check the order of the results
        seen_widths.append(features["input_ids"].shape[1])
        counts = features["attention_mask"].sum(axis=1).astype(np.float32)
        return np.stack([counts, -counts], axis=1)

    logits = predict_logits(predict_fn, data, batch_size=4, progress=False)
    assert logits.shape == (len(data), 2)
    assert logits[:, 0].tolist() == data.lengths().tolist()
    assert sorted(seen_widths) == [4, 5, 5]  # 4 two-word sentences share a batch: padded per batch

    fixed = []
    predict_logits(lambda f: fixed.append(f["input_ids"].shape[1]) or np.zeros((len(f["input_ids"]), 2)),
                   data, batch_size=5, pad_to=16, progress=False)
    assert fixed == [16, 16, 16]


def test_pad_to_shorter_than_an_example_raises_unless_truncate(tiny_tokenizer, sst_tsv):
    data = _sequence_data(tiny_tokenizer, sst_tsv)
    zeros = lambda f: np.zeros((len(f["input_ids"]), 2))  # noqa: E731
    with pytest.raises(ValueError, match="longer than pad_to=4"):
        predict_logits(zeros, data, pad_to=4, progress=False)
    assert predict_logits(zeros, data, pad_to=4, truncate=True, progress=False).shape == (len(data), 2)


def test_evaluate_scores_a_keras_model_and_a_perfect_oracle(tiny_tokenizer, conll_file):
    data = encode(tiny_tokenizer, read_conll(conll_file, label_names=CONLL_LABELS), max_length=32)
    model = build_tiny_model("token", "bert", num_labels=len(CONLL_LABELS))
    metrics = evaluate(lambda f: model(f, training=False), data, batch_size=2, progress=False)
    assert set(metrics) >= {"f1", "precision", "recall", "accuracy", "per_entity", "num_truncated"}
    assert 0.0 <= metrics["f1"] <= 1.0

    gold_by_ids = {tuple(ids.tolist()): labels for ids, labels in zip(data.features["input_ids"], data.labels)}

    def oracle(features):
        out = np.zeros(features["input_ids"].shape + (len(CONLL_LABELS),), np.float32)
        for row, (ids, mask) in enumerate(zip(features["input_ids"], features["attention_mask"])):
            gold = gold_by_ids[tuple(ids[mask == 1].tolist())]
            out[row, np.arange(len(gold)), np.clip(gold, 0, None)] = 1.0
        return out

    perfect = evaluate(oracle, data, batch_size=2, progress=False)
    assert perfect["f1"] == 1.0 and perfect["per_entity"]["ORG"]["support"] == 2
    padded = evaluate(oracle, data, batch_size=2, pad_to=32, progress=False)
    assert padded["f1"] == 1.0


def test_logit_error_is_measured_over_scored_rows_only():
    import numpy as np

    from tfcompress.evaluate.gate import logit_error

    ours = np.array([[1.0, 2.0], [0.0, 0.5]])
    keras = np.array([[1.5, 2.0], [0.0, 0.0]])
    assert logit_error(ours, keras, [0, 1], "sequence") == {"mean": 0.25, "max": 0.5}
    tokens_ours = [np.array([[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]])]
    tokens_keras = [np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])]
    labels = [np.array([0, -100, 1])]  # the middle position is a sub-token: not scored
    assert logit_error(tokens_ours, tokens_keras, labels, "token") == {"mean": 0.25, "max": 1.0}


def test_the_gate_needs_agreement_as_well_as_the_metric():
    from tfcompress.config import EvaluateStageConfig

    assert EvaluateStageConfig().agreement_floor("sequence") == 0.98
    assert EvaluateStageConfig().agreement_floor("token") == 0.99
    assert EvaluateStageConfig(min_agreement=0.5).agreement_floor("token") == 0.5
    with pytest.raises(ValueError, match="evaluate.min_agreement=1.5"):
        EvaluateStageConfig(min_agreement=1.5).validate()
