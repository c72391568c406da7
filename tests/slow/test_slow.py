"""Slow tier: the real packaged model on the real data in ../shared/data (``pytest -m slow``).

Minutes each on 2 CPU cores; the full acceptance runs are the recipes themselves (README).
"""
from __future__ import annotations

import pytest

from tfcompress.data import encoding
from tfcompress.data import readers
from tfcompress.evaluate import metrics
from tfcompress.models import loading
from tfcompress.config.training import TrainConfig
from tfcompress.train.trainer import Trainer

pytestmark = pytest.mark.slow


def test_minilm_learns_sst2_from_2000_sentences(tmp_path, shared_data):
    tokenizer = loading.load_tokenizer()
    train = readers.read_text_classification(shared_data / "sst2" / "train.tsv")
    test = readers.read_text_classification(shared_data / "sst2" / "test.tsv", label_names=train.label_names)
    subset = readers.TextClassificationExamples(train.texts[:2000], train.labels[:2000], train.label_names, "head")
    model = loading.load_model(labels=train.label_names)
    trainer = Trainer(model, "sequence", TrainConfig(epochs=1, learning_rate=1e-4), tmp_path / "finetune")
    trainer.fit(encoding.encode(tokenizer, subset, max_length=64))
    result = metrics.evaluate(trainer.predict_fn(), encoding.encode(tokenizer, test, max_length=64))
    assert result["accuracy"] > 0.80


def test_minilm_token_classifier_finds_conll_entities(tmp_path, shared_data):
    tokenizer = loading.load_tokenizer()
    train = readers.read_conll(shared_data / "conll2003" / "train.txt")
    dev = readers.read_conll(shared_data / "conll2003" / "dev.txt", label_names=train.label_names)
    subset = readers.TokenClassificationExamples(train.words[:2000], train.tags[:2000], train.label_names, "head")
    model = loading.load_model(task="token", labels=train.label_names)
    trainer = Trainer(model, "token", TrainConfig(epochs=1, learning_rate=1e-4), tmp_path / "finetune")
    trainer.fit(encoding.encode(tokenizer, subset, max_length=128))
    dev_subset = readers.TokenClassificationExamples(dev.words[:500], dev.tags[:500], dev.label_names, "head")
    result = metrics.evaluate(trainer.predict_fn(), encoding.encode(tokenizer, dev_subset, max_length=128))
    assert result["f1"] > 0.5


def test_the_readme_main_command_releases_an_artifact_of_at_least_0_87(tmp_path, shared_data, monkeypatch):
    """``tfcompress run sst2 --quick`` (about 12 minutes on 2 cores): the released dynamic-range or int8
    artifact keeps the accuracy the README promises on the 872-sentence test set."""
    import json
    import sys

    from tfcompress.cli import commands as cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    out = tmp_path / "quick"
    assert cli.main(["run", "sst2", "--quick", "--data-dir", str(shared_data / "sst2"), "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    released = next(s for s in report["stages"] if s["name"] == "release")["released"]
    scores = {a["name"]: a["metrics"]["accuracy"] for a in report["artifacts"] if a["name"] in released}
    assert scores and max(scores.values()) >= 0.87, scores


def test_tokenizer_json_rules_give_the_real_tokenizers_ids_on_every_sst2_sentence(shared_data):
    """The packaged MiniLM's tokenizer.json, applied as an app would, on both SST-2 test files and the
    validation file (backticks, `$5`, CJK, accents): the same ids as Hugging Face's tokenizer."""
    from conftest import app_tokenize

    from tfcompress import release

    tokenizer = loading.load_tokenizer()
    settings = release.tokenizer_settings(tokenizer, 64)
    vocab = tokenizer.get_vocab()
    for name in ("test.tsv", "test1821.tsv", "validation.tsv"):
        texts = readers.read_text_classification(shared_data / "sst2" / name).texts
        expected = tokenizer(list(texts), padding="max_length", truncation=True, max_length=64)["input_ids"]
        differ = [t for t, ids in zip(texts, expected) if app_tokenize(t, vocab, settings)[0] != ids]
        assert not differ, f"{name}: {len(differ)} sentences differ, e.g. {differ[:3]}"
