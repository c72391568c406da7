"""The ``release`` stage: Bundle the artifacts that passed the gate.
"""
from __future__ import annotations

import json
import shutil
import time

from tfcompress import __version__, release
from tfcompress.export.metadata import CLIENT_CHECK_SENTENCES
from tfcompress.pipeline.runner import Context, stage
from tfcompress.utils import get_logger
from tfcompress.errors import ConfigError

log = get_logger("pipeline")
@stage("release")
def release_stage(context: Context) -> dict:
    """Bundle every artifact that passed the parity gate (all with ``release.allow_regression``)."""
    config = context.config
    cfg = config.release
    stage_dir = context.stage_dir("release")
    report = context.report()
    primary = report.metric
    started = time.time()
    candidates = [a for a in report.data["artifacts"] if not a.get("stock")]
    if not candidates:
        raise ConfigError("release: report.json has no evaluated artifacts; run export and evaluate first")
    released, blocked, metadata = [], {}, {}
    labels = list(cfg.label_names) or context.label_names
    check_texts, check_labels = [], None  # what MediaPipe's TextClassifier classifies from each released file
    if config.task == "sequence" and cfg.tflite_metadata != "off":
        test = context.examples("test")
        check_texts = list(test.texts[:CLIENT_CHECK_SENTENCES])
        check_labels = list(test.labels[:CLIENT_CHECK_SENTENCES])
    for record in candidates:
        name = record["name"]
        if cfg.artifacts and name not in cfg.artifacts:
            continue
        if not record.get("passed") and not cfg.allow_regression:
            blocked[name] = (f"failed the parity gate: {primary} {record['metrics'].get(primary, float('nan')):.4f} "
                             f"vs reference {record.get('reference_metric', float('nan')):.4f} (budget "
                             f"{record.get('accuracy_budget')} pt), agreement with Keras "
                             f"{record.get('agreement', float('nan')):.4f} (at least {record.get('min_agreement', 0)} "
                             "needed); --allow-regression releases it anyway")
            log.warning("release %s: not released, %s", name, blocked[name])
            continue
        score = record.get("metrics", {}).get(primary)
        model_info = {"name": f"{config.name} {name}",
                      "description": f"{config.name}: {config.task} classifier from {config.model}, {name} TFLite by "
                                     f"tfcompress; {primary} {score if score is None else round(score, 4)} on the test "
                                     "split (LiteRT); scores are logits",
                      "version": f"tfcompress {__version__}, release config {context.digest}"}
        bundle = release.release_bundle(context.output_dir / record["path"], stage_dir / name, context.tokenizer(),
                                        labels, record=record, allow_regression=cfg.allow_regression,
                                        metadata=cfg.tflite_metadata, check_texts=check_texts,
                                        check_labels=check_labels, model_info=model_info)
        manifest = json.loads((bundle / "manifest.json").read_text())
        written, client = manifest["tflite_metadata"], manifest["clients"].get("mediapipe", {})
        metadata[name] = "not written: " + written["reason"] if not written["written"] else "written" + (
            f"; MediaPipe TextClassifier: agreement with LiteRT {client['agreement']:.4f}, accuracy "
            f"{client['accuracy']:.4f} (LiteRT {client['accuracy_litert']:.4f}) on {client['sentences']} test "
            "sentences" if client.get("agreement") is not None and "accuracy" in client else "")
        released.append(name)
    for child in stage_dir.iterdir():  # bundles of an earlier run that are not released now
        if child.is_dir() and child.name not in released:
            shutil.rmtree(child)
    if not released:
        log.warning("release: nothing released (no artifact passed the parity gate)")
    record = report.set_stage("release", metrics={}, seconds=time.time() - started, output="release/",
                              released=released, blocked=blocked, allow_regression=cfg.allow_regression,
                              tflite_metadata=metadata)
    report.save()
    return record
