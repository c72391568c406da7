"""The ``finetune`` stage: Fine-tune the starting model.
"""
from __future__ import annotations

import time

from tfcompress.models import loading
from tfcompress.models.facts import count_params
from tfcompress.pipeline.runner import Context, stage
from tfcompress.pipeline.stages.common import model_facts, per_class_of, primary_name, scalars, test_logits_and_metrics
from tfcompress.train.trainer import Trainer
from tfcompress.utils import get_logger

log = get_logger("pipeline")
# ------------------------------------------------------------------------------------- stages
@stage("finetune")
def finetune_stage(context: Context) -> dict:
    """Fine-tune the starting model on the train split, select on eval, score on test."""
    config = context.config
    stage_dir = context.stage_dir("finetune")
    input_model = context.current_model
    model = context.load_model(pooling=config.pooling if config.task == "sequence" else None)
    train, evaluation = context.encoded("train"), context.encoded("eval")
    started = time.time()
    trainer = Trainer(model, config.task, config.train, stage_dir, label_names=context.label_names,
                      stage="finetune")
    result = trainer.fit(train, evaluation)
    loading.save_model(model, context.tokenizer(), stage_dir / "model")
    _, test_metrics = test_logits_and_metrics(context, model)
    facts = model_facts(model, stage_dir / "model")
    seconds = time.time() - started
    report = context.report()
    report.data["model"] = {"name": config.model, "params": count_params(model)}
    record = report.set_stage(
        "finetune", metrics=scalars(test_metrics), seconds=seconds, output="finetune/",
        model_dir="finetune/model", input_model=input_model,
        eval_metrics=scalars(result["metrics"]), best_step=result["best_step"], steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], train_examples=len(train),
        truncated=train.num_truncated, per_class=per_class_of(test_metrics), **facts)
    report.save()
    primary = primary_name(context)
    log.info("finetune: test %s=%.4f (eval %.4f) in %.0f s", primary, test_metrics[primary],
             result["metrics"].get(primary, float("nan")), seconds)
    return record
