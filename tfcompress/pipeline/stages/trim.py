"""The ``trim`` stage: Vocabulary trimming.
"""
from __future__ import annotations

import dataclasses
import time

from tfcompress.models import loading, vocab
from tfcompress.models.facts import count_params
from tfcompress.pipeline.runner import Context, stage
from tfcompress.pipeline.stages.common import (
    delta_text,
    input_model_metrics,
    model_facts,
    per_class_of,
    primary_name,
    scalars,
    test_logits_and_metrics,
)
from tfcompress.utils import get_logger

log = get_logger("pipeline")
@stage("trim")
def trim_stage(context: Context) -> dict:
    """Trim the vocabulary to the tokens the training split uses (:mod:`tfcompress.vocab`); the saved
    model directory holds the trimmed tokenizer, which every later stage (and the release) uses."""
    config = context.config
    stage_dir = context.stage_dir("trim")
    input_model = context.current_model
    started = time.time()
    model, tokenizer = context.load_model(), context.tokenizer()
    input_params = count_params(model)
    input_metrics = input_model_metrics(context, model)
    examples = context.examples("train")
    texts = examples.texts if config.task == "sequence" else examples.words
    keep = vocab.keep_ids(tokenizer, texts, keep_first=config.trim.keep_first)
    small, small_tokenizer = vocab.trim(model, tokenizer, keep)
    loading.save_model(small, small_tokenizer, stage_dir / "model")
    test = context.examples("test")
    respelled = vocab.respelled(tokenizer, small_tokenizer,
                                test.texts if config.task == "sequence" else test.words_in_context())
    context.current_model = str(stage_dir / "model")  # the test split is encoded with the trimmed tokenizer
    _, test_metrics = test_logits_and_metrics(context, small)
    facts = model_facts(small, stage_dir / "model")
    report = context.report()
    record = report.set_stage(
        "trim", metrics=scalars(test_metrics), seconds=time.time() - started, output="trim/",
        model_dir="trim/model", input_model=input_model, input_metrics=input_metrics,
        vocab_size={"before": len(tokenizer), "after": len(small_tokenizer)},
        input_params=input_params, test_respelled=respelled,
        trim_config=dataclasses.asdict(config.trim), per_class=per_class_of(test_metrics), **facts)
    report.save()
    log.info("trim: vocabulary %d -> %d tokens, %s -> %s parameters, %s=%.4f%s; %d of %d test texts respelled",
             len(tokenizer), len(small_tokenizer), f"{input_params:,}", f"{facts['params']:,}",
             primary_name(context), test_metrics[primary_name(context)], delta_text(context, record["metrics"], input_metrics),
             respelled["changed_texts"], respelled["texts"])
    return record
