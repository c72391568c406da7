"""The ``distill`` stage: Distil the teacher into a smaller student.
"""
from __future__ import annotations

import time

from tfcompress.compress import distill
from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.data import augment, encoding, readers
from tfcompress.models import loading, make_student
from tfcompress.pipeline.runner import Context, stage
from tfcompress.pipeline.stages.common import model_facts, per_class_of, primary_name, scalars, test_logits_and_metrics
from tfcompress.train.trainer import Trainer
from tfcompress.utils import get_logger
from tfcompress.errors import ConfigError

log = get_logger("pipeline")

def _augmented_train(context: "Context", train):
    """The training set plus ``distill.augment_copies`` augmented copies of its texts (hard label
    ``IGNORE_INDEX``), or None when augmentation is off. Sequence task only."""
    config = context.config.distill
    if not config.augment_copies:
        return None
    tokenizer = context.tokenizer()
    if tokenizer.mask_token is None:
        raise ConfigError(f"DistillConfig.augment_copies={config.augment_copies}: the tokenizer has no mask token")
    examples = context.examples("train")
    texts = augment.augment_texts(examples.texts, config.augment_copies, tokenizer.mask_token,
                                  mask_prob=config.augment_mask_prob, ngram_prob=config.augment_ngram_prob,
                                  seed=context.config.distill_train.seed)
    extra = readers.TextClassificationExamples(texts=texts, labels=[IGNORE_INDEX] * len(texts),
                                            label_names=list(examples.label_names),
                                            source=f"{examples.source} (augmented)")
    encoded = encoding.encode(tokenizer, extra, max_length=context.config.data.max_length, input_names=train.input_names)
    log.info("distill: %d augmented texts (%d copies asked per %d training texts), soft labels only",
             len(texts), config.augment_copies, len(examples))
    return encoding.concatenate([train, encoded])


@stage("distill")
def distill_stage(context: Context) -> dict:
    """Distil the teacher (``student.teacher`` or the current model) into a ``student.num_layers`` student.

    The student starts from evenly spaced teacher blocks (``student.make_student``) and trains through
    the Trainer with the Distiller's loss and hooks; teacher outputs are cached first when
    ``distill.cache_teacher`` is set. Records teacher and student test metrics, parameter counts and
    the layer map.
    """
    config = context.config
    stage_dir = context.stage_dir("distill")
    teacher_path = config.student.teacher or context.current_model
    started = time.time()
    teacher = context.load_model(teacher_path)
    student = make_student(teacher, num_layers=config.student.num_layers)
    distiller = distill.Distiller(teacher, student, config.distill, task=config.task)
    train, evaluation = context.encoded("train"), context.encoded("eval")
    augmented = _augmented_train(context, train)
    if augmented is not None:
        train = augmented
    cache = None
    if config.distill.cache_teacher:
        cache = distiller.cache_teacher_outputs(train, batch_size=config.distill_train.eval_batch_size)
    trainer = Trainer(distiller, config.task, config.distill_train, stage_dir, hooks=distill.hooks(distiller),
                      loss_fn=distiller.loss_fn, label_names=context.label_names, stage="distill")
    result = trainer.fit(train, evaluation)
    loading.save_model(distiller.student, context.tokenizer(), stage_dir / "model")
    _, student_metrics = test_logits_and_metrics(context, distiller.student)
    _, teacher_metrics = test_logits_and_metrics(context, teacher)
    facts = model_facts(distiller.student, stage_dir / "model")
    description = distiller.describe()
    report = context.report()
    record = report.set_stage(
        "distill", metrics=scalars(student_metrics), seconds=time.time() - started, output="distill/",
        model_dir="distill/model", input_model=str(teacher_path), teacher=str(teacher_path),
        teacher_metrics=scalars(teacher_metrics), eval_metrics=scalars(result["metrics"]),
        teacher_params=description["teacher_params"], student_params=description["student_params"],
        layer_map=description["layer_map"], distillation=description, teacher_cache=cache,
        augmented_examples=len(train) - len(context.encoded("train")),
        best_step=result["best_step"], steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], per_class=per_class_of(student_metrics), **facts)
    report.save()
    primary = primary_name(context)
    log.info("distill: student (%d layers) %s=%.4f, teacher (%d layers) %.4f", description["student_layers"],
             primary, student_metrics[primary], description["teacher_layers"], teacher_metrics[primary])
    return record
