"""The ``export`` stage: TFLite export: one artifact per mode.
"""
from __future__ import annotations

import json
import time

from tfcompress.compress import prune, qat_integer
from tfcompress.errors import ConfigError
from tfcompress.evaluate import integer, runtime
from tfcompress.export import int4, litert_quantizer, tflite
from tfcompress.pipeline.runner import Context, read_manifest, stage
from tfcompress.pipeline.stages.qat import qat_model
from tfcompress.utils import atomic_write_json, get_logger

log = get_logger("pipeline")


def _export_seq_length(context: Context, train) -> tuple[int, str]:
    cfg = context.config.export
    if cfg.seq_length:
        return cfg.seq_length, "export.seq_length"
    length = min(train.percentile_length(cfg.seq_percentile), context.config.data.max_length)
    return max(int(length), 2), (f"{cfg.seq_percentile:g}th percentile of the training lengths "
                                 f"(capped at data.max_length={context.config.data.max_length})")


@stage("export")
def export_stage(context: Context) -> dict:
    """One TFLite artifact per ``export.modes`` from the current model; calibration from the train split.

    Finished artifacts of an interrupted run are reused (``<mode>.tflite`` plus its ``.done.json``,
    both written atomically). With a finished ``qat`` stage, the wrapped QAT model is converted too
    (``qat-int8``, its learned ranges kept). The ``integer`` artifact of a model QAT-trained with
    ``qat.target="integer"`` takes the ranges saved beside it (``integer_ranges.json``) at their points.
    """
    config = context.config
    cfg = config.export
    stage_dir = context.stage_dir("export")
    input_model = context.current_model
    started = time.time()
    model = context.load_model()
    train = context.encoded("train")
    seq_length, rule = _export_seq_length(context, train)
    sparsity = round(prune.sparsity_report(model)["global"]["sparsity"], 6)
    artifacts = []
    outlier_percentile = cfg.int8_outlier_percentile or None
    outliers_scaled = tflite.outlier_scaling_applies(tflite.ExportConfig(
        mode="int8", denylisted_ops=tuple(cfg.int8_float_ops), outlier_percentile=outlier_percentile))

    def finish(name, quantization, path, convert):
        marker = stage_dir / f"{name}.done.json"
        if path.exists() and marker.exists():
            log.info("export %s: done already (%s)", name, path)
            seconds = json.loads(marker.read_text()).get("seconds")
        else:
            begun = time.time()
            convert()
            seconds = round(time.time() - begun, 1)
            atomic_write_json(marker, {"seconds": seconds})
        artifacts.append({"name": name, "path": str(path.relative_to(context.output_dir)), "format": "tflite",
                          "quantization": quantization, "seq_length": seq_length, "sparsity": sparsity,
                          "convert_seconds": seconds, **runtime.sizes(path),
                          "integer_only": integer.integer_report(path)["integer_only"]})
        if context.config.data.document_context:  # the input the artifact was evaluated on (manifest.json)
            artifacts[-1]["document_context"] = context.config.data.document_context
        if context.config.data.case_segments:  # token_type_ids carry capitalisation (encoding.case_segment_ids)
            artifacts[-1]["case_segments"] = True
        if name == "int8" and outliers_scaled:
            artifacts[-1]["outlier_percentile"] = outlier_percentile  # rewrites.scale_outlier_channels

    for mode in cfg.modes:
        path = stage_dir / f"{mode}.tflite"
        calibrated = mode in ("int8", "int16x8")
        if mode == "integer":
            recipe = litert_quantizer.IntegerRecipe(int8_ops=tuple(cfg.integer_int8_ops))
            learned = qat_integer.read_ranges(input_model)  # a model QAT-trained with qat.target="integer"
            if learned and cfg.integer_smooth_alpha is not None:
                raise ConfigError(f"export.integer_smooth_alpha={cfg.integer_smooth_alpha!r}: {input_model} holds "
                                  "ranges learned by QAT on the unsmoothed LayerNorm outputs; leave it unset")
            finish(mode, mode, path, lambda path=path: litert_quantizer.to_integer_tflite(
                model, seq_length, train, num_calibration=cfg.num_calibration, recipe=recipe, output_path=path,
                outlier_percentile=cfg.integer_outlier_percentile or None, smooth_alpha=cfg.integer_smooth_alpha,
                learned_ranges=learned))
            artifacts[-1].update(integer_int8_ops=list(recipe.int8_ops),
                                 outlier_percentile=cfg.integer_outlier_percentile or None,
                                 smooth_alpha=cfg.integer_smooth_alpha,  # smoothing.migrate_activation_scales
                                 qat_learned_ranges=len(learned or {}))  # the rest from calibration
            continue
        if mode == "int4":
            finish(mode, mode, path, lambda path=path: int4.to_int4_tflite(
                model, seq_length, output_path=path, block_size=cfg.int4_block_size))
            artifacts[-1].update(weights=int4.weight_storage(path),  # parameters by storage type
                                 int4_block_size=cfg.int4_block_size)
            continue
        finish(mode, mode, path, lambda mode=mode, path=path, calibrated=calibrated: tflite.to_tflite(
            model, mode, seq_length=seq_length, representative=train if calibrated else None,
            num_calibration=cfg.num_calibration, io_type=cfg.io_type if mode == "int8" else "float",
            denylisted_ops=cfg.int8_float_ops if mode == "int8" else (), output_path=path,
            outlier_percentile=outlier_percentile))
    qat_manifest = read_manifest(context.output_dir, "qat")
    if "qat" in config.stages and qat_manifest and qat_manifest.get("model_dir"):
        path = stage_dir / "qat-int8.tflite"
        finish("qat-int8", "qat-int8", path, lambda: tflite.to_tflite_from_qat(
            qat_model(context), seq_length=seq_length, representative=train, output_path=path))
    report = context.report()
    record = report.set_stage(
        "export", metrics={}, seconds=time.time() - started, output="export/", input_model=input_model,
        source_model=input_model, seq_length=seq_length, seq_length_rule=rule, artifacts=artifacts,
        sparsity=sparsity)
    report.save()
    log.info("export: %d artifacts at seq_length %d (%s)", len(artifacts), seq_length, rule)
    return record
