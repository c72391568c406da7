"""The ``teacher`` stage: fine-tune a larger checkpoint as the distillation teacher.
"""
from __future__ import annotations

import time

from tfcompress.data import encoding
from tfcompress.models import loading
from tfcompress.models.facts import count_params, max_tokens, model_input_names, reads_case
from tfcompress.errors import ConfigError
from tfcompress.pipeline.runner import Context, stage
from tfcompress.pipeline.stages.common import model_facts, per_class_of, primary_name, scalars, test_logits_and_metrics
from tfcompress.train.trainer import Trainer
from tfcompress.utils import get_logger

log = get_logger("pipeline")


@stage("teacher")
def teacher_stage(context: Context) -> dict:
    """Fine-tune ``teacher.model`` with ``teacher_train``, reading the data with its own tokenizer.

    Saves ``teacher/model``; the run's current model (the student's starting point) is unchanged.
    The Trainer checkpoints every ``teacher_train.checkpoint_every`` steps, so an interrupted teacher
    resumes where it stopped (an MPNet-base epoch over SST-2 is about an hour and a half on 2 cores).
    """
    config = context.config
    stage_dir = context.stage_dir("teacher")
    started = time.time()
    path = config.teacher.model
    _, model_config = loading.read_model_config(path)
    limit = max_tokens(model_config)
    if limit is not None and config.data.max_length > limit:
        raise ConfigError(f"data.max_length={config.data.max_length} (--max-length): the teacher {path} holds "
                          f"at most {limit} tokens")
    pooling = config.teacher.pooling if config.task == "sequence" else None
    model = loading.load_model(path, task=config.task, labels=context.label_names, pooling=pooling)
    tokenizer = loading.load_tokenizer(path)
    names = model_input_names(model)
    # data.case_segments: a teacher with segment ids learns the capitalisation too; one without reads none
    case = config.data.case_segments and "token_type_ids" in names
    if config.data.case_segments:
        log.info("teacher: %s", "case segment ids on" if case else f"{path} reads no segment ids: no case ids")
    if case or reads_case(model):  # recorded, or cleared on a checkpoint trained with them
        model.config.case_segments = case
    train, evaluation = (encoding.encode(tokenizer, context.examples(split), max_length=config.data.max_length,
                                         input_names=names, case_segments=case) for split in ("train", "eval"))
    trainer = Trainer(model, config.task, config.teacher_train, stage_dir, label_names=context.label_names,
                      stage="teacher")
    result = trainer.fit(train, evaluation)
    loading.save_model(model, tokenizer, stage_dir / "model")
    _, test_metrics = test_logits_and_metrics(context, model, tokenizer=tokenizer)
    facts = model_facts(model, stage_dir / "model")
    seconds = time.time() - started
    report = context.report()
    report.data["teacher"] = {"name": path, "params": count_params(model)}
    record = report.set_stage(
        "teacher", metrics=scalars(test_metrics), seconds=seconds, output="teacher/", model_dir="teacher/model",
        input_model=path, eval_metrics=scalars(result["metrics"]), best_step=result["best_step"],
        steps=result["steps"], resumed_from=result.get("resumed_from", 0),
        train_samples_per_second=result["samples_per_second"], train_examples=len(train),
        truncated=train.num_truncated, per_class=per_class_of(test_metrics), **facts)
    report.save()
    primary = primary_name(context)
    log.info("teacher: test %s=%.4f (eval %.4f) in %.0f s", primary, test_metrics[primary],
             result["metrics"].get(primary, float("nan")), seconds)
    return record
