"""The ``qat`` stage: Quantization-aware training.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tfcompress._compat import tf
from tfcompress.compress import qat, qat_integer
from tfcompress.config import QATConfig
from tfcompress.models import loading
from tfcompress.pipeline.runner import Context, read_manifest, stage
from tfcompress.pipeline.stages.common import (
    delta_text,
    input_model_metrics,
    model_facts,
    primary_name,
    scalars,
    test_logits_and_metrics,
)
from tfcompress.train.trainer import Trainer
from tfcompress.utils import atomic_dir, get_logger

log = get_logger("pipeline")

def apply_qat(model, config: QATConfig, calibration=None):
    """Wrap the encoder Dense layers with TFMOT QAT wrappers; ``calibration`` (train data) sets the
    starting activation ranges (TFMOT's default -6/+6 would take thousands of steps to reach MiniLM's
    FFN outliers of ~200)."""
    return qat.apply(model, config, calibration=calibration)


@stage("qat")
def qat_stage(context: Context) -> dict:
    """Quantization-aware training with TFMOT wrappers through the Trainer.

    Saves the wrapped model's weights (``qat/qat_weights``, for the ``qat-int8`` export) and the
    stripped float model (``qat/model``, the current model for the next stages). With
    ``qat.target="integer"`` the learned activation ranges go beside it (``qat/model/integer_ranges.json``),
    for the ``integer`` export. The record holds the target and how many fake-quant points trained
    (``fake_quant_dense`` wrappers, ``fake_quant_activations``, ``learned_ranges`` for the artifact).
    """
    config = context.config
    report = context.report()
    stage_dir = context.stage_dir("qat")
    input_model = context.current_model
    started = time.time()
    model = context.load_model()
    input_metrics = input_model_metrics(context, model)
    model = apply_qat(model, config.qat, calibration=context.encoded("train"))
    train, evaluation = context.encoded("train"), context.encoded("eval")
    hooks = qat.hooks(config.qat)
    trainer = Trainer(model, config.task, config.qat_train, stage_dir, hooks=hooks,
                      label_names=context.label_names, stage="qat")
    result = trainer.fit(train, evaluation)
    _, qat_metrics = test_logits_and_metrics(context, model)
    with atomic_dir(stage_dir / "qat_weights") as tmp:
        tf.train.Checkpoint(model=model).write(str(Path(tmp) / "weights"))
    ranges = qat.learned_ranges(model)  # target "integer": what the integer export takes from training
    points = {"qat_target": config.qat.target, "fake_quant_dense": len(qat.quantized_layers(model)),
              "fake_quant_activations": len(qat_integer.quantizers(model)), "learned_ranges": len(ranges)}
    model = qat.strip(model)
    loading.save_model(model, context.tokenizer(), stage_dir / "model")
    if ranges:
        qat_integer.save_ranges(stage_dir / "model", ranges)
    _, test_metrics = test_logits_and_metrics(context, model)
    facts = model_facts(model, stage_dir / "model")
    record = report.set_stage(
        "qat", metrics=scalars(test_metrics), seconds=time.time() - started, output="qat/",
        model_dir="qat/model", input_model=input_model, input_metrics=input_metrics,
        qat_metrics=scalars(qat_metrics), eval_metrics=scalars(result["metrics"]), steps=result["steps"],
        **points, **facts)
    report.save()
    log.info("qat: %s=%.4f%s", primary_name(context), test_metrics[primary_name(context)],
             delta_text(context, record["metrics"], input_metrics))
    return record


def qat_model(context: Context):
    """Rebuild the wrapped QAT model: its input model, ``qat.apply``, the saved QAT weights. The Dense
    wrappers only (what the stock converter turns into ``qat-int8``), whatever ``qat.target``."""
    manifest = read_manifest(context.output_dir, "qat") or {}
    model = context.load_model(manifest.get("input_model"))
    model = apply_qat(model, dataclasses.replace(context.config.qat, target="int8"))
    tf.train.Checkpoint(model=model).read(str(context.stage_dir("qat") / "qat_weights" / "weights")).expect_partial()
    return model
