"""The ``prune`` stage: Magnitude pruning while training (TFMOT wrappers), then strip.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tfcompress.compress import distill, prune
from tfcompress.models import loading
from tfcompress.pipeline.runner import Context, stage
from tfcompress.pipeline.stages.common import (
    delta_text,
    input_model_metrics,
    model_facts,
    per_class_of,
    primary_name,
    scalars,
    strip_pruning,
    test_logits_and_metrics,
    total_steps,
)
from tfcompress.train.trainer import Trainer
from tfcompress.utils import get_logger

log = get_logger("pipeline")
@stage("prune")
def prune_stage(context: Context) -> dict:
    """Magnitude-prune the current model with TFMOT wrappers while training, strip, save, measure."""
    config = context.config
    stage_dir = context.stage_dir("prune")
    input_model = context.current_model
    started = time.time()
    model = context.load_model()
    input_metrics = input_model_metrics(context, model)
    train, evaluation = context.encoded("train"), context.encoded("eval")
    steps = total_steps(train, config.prune_train)
    prune.apply(model, config.prune, total_steps=steps)
    trained, hooks, loss_fn, distillation = model, prune.hooks(config.prune), None, None
    if config.prune_distill.alpha < 1.0:

        teacher = context.load_model(input_model)  # a second, frozen copy of the dense input model
        trained = distill.Distiller(teacher, model, config.prune_distill, task=config.task, name="prune_distiller")
        if config.prune_distill.cache_teacher:
            trained.cache_teacher_outputs(train, batch_size=config.prune_train.eval_batch_size)
        hooks, loss_fn = distill.hooks(trained) + hooks, trained.loss_fn
        distillation = {"teacher": str(input_model), **dataclasses.asdict(config.prune_distill)}
    trainer = Trainer(trained, config.task, config.prune_train, stage_dir, hooks=hooks, loss_fn=loss_fn,
                      label_names=context.label_names, stage="prune")
    result = trainer.fit(train, evaluation)
    pruned = strip_pruning(model, config.prune, steps)
    loading.save_model(model, context.tokenizer(), stage_dir / "model")
    _, test_metrics = test_logits_and_metrics(context, model)
    facts = model_facts(model, stage_dir / "model")
    input_size = {}
    if Path(input_model).is_dir():
        try:
            sizes = prune.saved_size(input_model)
            input_size = {"input_size_bytes": sizes["raw"], "input_gzip_bytes": sizes["gzip"]}
        except FileNotFoundError:
            pass
    report = context.report()
    record = report.set_stage(
        "prune", metrics=scalars(test_metrics), seconds=time.time() - started, output="prune/",
        model_dir="prune/model", input_model=input_model, input_metrics=input_metrics,
        eval_metrics=scalars(result["metrics"]), distillation=distillation, steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], per_class=per_class_of(test_metrics),
        **pruned, **facts, **input_size)
    report.save()
    log.info("prune: %s=%.4f%s, sparsity %.3f of the pruned layers (%.3f of all weight matrices), gzip %.2f MB",
             primary_name(context), test_metrics[primary_name(context)],
             delta_text(context, record["metrics"], input_metrics), pruned["pruned_sparsity"],
             pruned["global_sparsity"], facts["gzip_bytes"] / 1e6)
    return record
