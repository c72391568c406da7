"""Case segment ids: the capitalisation an uncased tokenizer throws away, carried in token_type_ids."""
from __future__ import annotations

import pytest

from conftest import CONLL_LABELS
from tfcompress.data.encoding import concatenate, encode
from tfcompress.data.readers import TextClassificationExamples, TokenClassificationExamples


def test_case_segment_ids_mark_every_sub_token_of_a_capitalised_word(tiny_tokenizer):
    examples = TokenClassificationExamples(words=[["John", "visited", "LONDON", "."], ["the", "eu", "said", "it"]],
                                           tags=[["B-PER", "O", "B-LOC", "O"], ["O", "B-ORG", "O", "O"]],
                                           label_names=CONLL_LABELS, source="cased.txt")
    plain = encode(tiny_tokenizer, examples, max_length=32)
    cased = encode(tiny_tokenizer, examples, max_length=32, case_segments=True)
    # the tokenizer lower-cases: the same ids, the case only in the segment ids
    assert cased.features["input_ids"][0].tolist() == plain.features["input_ids"][0].tolist()
    assert plain.features["token_type_ids"][0].tolist() == [0] * 6
    assert cased.features["token_type_ids"][0].tolist() == [0, 1, 0, 1, 0, 0]  # [CLS] John visited LONDON . [SEP]
    assert cased.features["token_type_ids"][1].tolist() == [0] * 6
    assert cased.case_segments and not plain.case_segments
    assert cased.select([1, 0]).case_segments
    with pytest.raises(ValueError, match="case_segments"):  # never mixed into one training set
        concatenate([cased, plain])


def test_case_segment_ids_of_raw_text_follow_the_words_of_the_text(tiny_tokenizer):
    examples = TextClassificationExamples(texts=["A good movie", "very Bad"], labels=[1, 0], label_names=["0", "1"],
                                          source="cased.tsv")
    data = encode(tiny_tokenizer, examples, max_length=16, case_segments=True)
    assert tiny_tokenizer.convert_ids_to_tokens(data.features["input_ids"][0].tolist()) == [
        "[CLS]", "a", "good", "movie", "[SEP]"]
    assert data.features["token_type_ids"][0].tolist() == [0, 1, 0, 0, 0]
    assert data.features["token_type_ids"][1].tolist() == [0, 0, 1, 0]


def test_case_segments_need_a_model_input_for_them(tiny_tokenizer):
    examples = TextClassificationExamples(texts=["A good movie"], labels=[1], label_names=["0", "1"], source="x.tsv")
    with pytest.raises(ValueError, match="token_type_ids"):
        encode(tiny_tokenizer, examples, input_names=["input_ids", "attention_mask"], case_segments=True)


def test_the_flag_enters_the_stage_hashes_only_when_on():
    """Off, a stage's config is what it was before the field existed, so older run folders still resume."""
    from tfcompress.config import recipe
    from tfcompress.pipeline import runner

    config = recipe.RecipeConfig(stages=["finetune", "export"])
    before = runner.stage_hashes(config)
    assert "case_segments" not in runner.stage_config(config, "finetune")["data"]
    config.data.case_segments = True
    assert runner.stage_config(config, "finetune")["data"]["case_segments"] is True
    after = runner.stage_hashes(config)
    assert after["finetune"] != before["finetune"] and after["export"] != before["export"]
