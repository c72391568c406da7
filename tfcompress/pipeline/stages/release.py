"""The ``release`` stage: Bundle the artifacts that passed the gate.
"""
from __future__ import annotations

import shutil
import time

from tfcompress import release
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
    released, blocked = [], {}
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
        release.release_bundle(context.output_dir / record["path"], stage_dir / name, context.tokenizer(),
                              context.label_names, record=record, allow_regression=cfg.allow_regression)
        released.append(name)
    for child in stage_dir.iterdir():  # bundles of an earlier run that are not released now
        if child.is_dir() and child.name not in released:
            shutil.rmtree(child)
    if not released:
        log.warning("release: nothing released (no artifact passed the parity gate)")
    record = report.set_stage("release", metrics={}, seconds=time.time() - started, output="release/",
                              released=released, blocked=blocked, allow_regression=cfg.allow_regression)
    report.save()
    return record
