"""Slow tier: the real packaged model on the real data in ../shared/data (``pytest -m slow``).

Minutes each on 2 CPU cores; the full acceptance runs are the recipes themselves (README).
"""
from __future__ import annotations

import pytest

from tfcompress import data as data_module
from tfcompress import metrics, models
from tfcompress.train import TrainConfig, Trainer

pytestmark = pytest.mark.slow


def test_minilm_learns_sst2_from_2000_sentences(tmp_path, shared_data):
    tokenizer = models.load_tokenizer()
    train = data_module.read_text_classification(shared_data / "sst2" / "train.tsv")
    test = data_module.read_text_classification(shared_data / "sst2" / "test.tsv", label_names=train.label_names)
    subset = data_module.TextClassificationExamples(train.texts[:2000], train.labels[:2000], train.label_names, "head")
    model = models.load_model(labels=train.label_names)
    trainer = Trainer(model, "sequence", TrainConfig(epochs=1, learning_rate=1e-4), tmp_path / "finetune")
    trainer.fit(data_module.encode(tokenizer, subset, max_length=64))
    result = metrics.evaluate(trainer.predict_fn(), data_module.encode(tokenizer, test, max_length=64))
    assert result["accuracy"] > 0.80


def test_minilm_token_classifier_finds_conll_entities(tmp_path, shared_data):
    tokenizer = models.load_tokenizer()
    train = data_module.read_conll(shared_data / "conll2003" / "train.txt")
    dev = data_module.read_conll(shared_data / "conll2003" / "dev.txt", label_names=train.label_names)
    subset = data_module.TokenClassificationExamples(train.words[:2000], train.tags[:2000], train.label_names, "head")
    model = models.load_model(task="token", labels=train.label_names)
    trainer = Trainer(model, "token", TrainConfig(epochs=1, learning_rate=1e-4), tmp_path / "finetune")
    trainer.fit(data_module.encode(tokenizer, subset, max_length=128))
    dev_subset = data_module.TokenClassificationExamples(dev.words[:500], dev.tags[:500], dev.label_names, "head")
    result = metrics.evaluate(trainer.predict_fn(), data_module.encode(tokenizer, dev_subset, max_length=128))
    assert result["f1"] > 0.5
