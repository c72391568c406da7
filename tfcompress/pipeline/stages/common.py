"""Helpers the stages share: Keras predictions, test metrics, model facts, step counts.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

from tfcompress._compat import tf
from tfcompress.compress import prune
from tfcompress.config.training import TrainConfig
from tfcompress.evaluate import metrics
from tfcompress.data import encoding
from tfcompress.models.facts import count_params, model_input_names, reads_case
from tfcompress.pipeline.runner import Context
from tfcompress.utils import get_logger

log = get_logger("pipeline")
# ------------------------------------------------------------------------------------ helpers
def keras_predict_fn(model) -> Callable:
    """``features dict of np arrays -> np logits`` through one traced, shape-agnostic function."""
    @tf.function(reduce_retracing=True)
    def predict(features):
        outputs = model(features, training=False)
        return tf.cast(getattr(outputs, "logits", outputs), tf.float32)

    return lambda features: predict({k: tf.constant(v) for k, v in features.items()}).numpy()


def test_logits_and_metrics(context: Context, model, max_length: int | None = None, tokenizer=None,
                            examples=None):
    """``(logits, metrics)`` of a Keras model on the test split; ``tokenizer``: the model's own when it
    is not the run's (a teacher of another architecture); ``examples``: the test split as that model
    reads it (another document context)."""
    if tokenizer is None and examples is None:
        data = context.encoded("test", max_length)
    else:
        examples = context.examples("test") if examples is None else examples
        data = encoding.encode(tokenizer or context.tokenizer(), examples,
                               max_length=max_length or context.config.data.max_length,
                               input_names=model_input_names(model), case_segments=reads_case(model))
    batch_size = context.config.evaluate.batch_size
    logits = metrics.predict_logits(keras_predict_fn(model), data, batch_size=batch_size, progress=False)
    return logits, metrics.compute_metrics(context.config.task, logits, data.labels, data.label_names)


def input_model_metrics(context: Context, model) -> dict:
    """Test metrics of a stage's input model, before the stage changes it: the reference its own
    Δ is measured against (and the report's, when the run has no finetune stage). Taken from the
    earlier stage of this run that saved the model (its test metrics, same test set), else measured."""
    for name, path in context.stage_models.items():
        record = context.report().stage(name) if path == context.current_model else None
        if record and record.get("metrics"):
            return dict(record["metrics"])
    _, values = test_logits_and_metrics(context, model)
    return scalars(values)


def delta_text(context: Context, after: dict, before: dict) -> str:
    primary = primary_name(context)
    if primary not in after or primary not in before:
        return ""
    return f" ({(after[primary] - before[primary]) * 100:+.2f} pt vs its input model's {before[primary]:.4f})"


def scalars(values: dict) -> dict:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def per_class_of(values: dict):
    return values.get("per_class") or values.get("per_entity")


def model_facts(model, model_dir: Path) -> dict:
    """Saved size (raw, gzip), global weight sparsity and parameter count of a stage's model."""
    sizes = prune.saved_size(model_dir)
    sparsity = prune.sparsity_report(model)
    return {"size_bytes": sizes["raw"], "gzip_bytes": sizes["gzip"],
            "sparsity": round(sparsity["global"]["sparsity"], 6), "params": count_params(model),
            "nonzero_params": sparsity["model"]["nonzero"]}


def total_steps(train, config: TrainConfig) -> int:
    """Optimizer steps the Trainer will run on ``train`` (same arithmetic as ``Trainer._build``)."""
    batches = len(train.batches(config.batch_size, shuffle=False))
    steps_per_epoch = max(1, math.ceil(batches / config.grad_accum_steps))
    return config.max_steps or math.ceil(config.epochs * steps_per_epoch)


def strip_pruning(model, config, steps: int) -> dict:
    """Strip ``model``'s pruning wrappers (the zeros stay in its kernels) and return what was pruned, for
    the stage record: sparsity overall and per layer, the layers, the config (``prune``) and the schedule."""
    paths = prune.pruned_layers(model)
    prune.strip(model)
    sparsity = prune.sparsity_report(model)
    begin, end, frequency = config.resolve_steps(steps)
    return {"pruned_sparsity": round(sparsity["pruned"]["sparsity"], 6), "pruned_params": sparsity["pruned"]["params"],
            "global_sparsity": round(sparsity["global"]["sparsity"], 6),
            "layer_sparsity": {name: round(entry["sparsity"], 4) for name, entry in sparsity["layers"].items()},
            "pruned_layers": paths, "prune_config": dataclasses.asdict(config),
            "schedule": {"begin_step": begin, "end_step": end, "frequency": frequency, "total_steps": steps}}


def primary_name(context: Context) -> str:

    return metrics.primary_metric(context.config.task)
