"""The ``evaluate`` stage: Score every artifact with LiteRT and gate it.
"""
from __future__ import annotations

import time

from tfcompress.evaluate import gate, metrics
from tfcompress.pipeline.runner import Context, stage
from tfcompress.pipeline.stages.common import keras_predict_fn, test_logits_and_metrics
from tfcompress.utils import get_logger
from tfcompress.errors import ConfigError

log = get_logger("pipeline")


def _agreement_split(context: Context) -> str:
    """``"eval"`` or ``"test"``: where agreement is measured (``evaluate.agreement_split``)."""
    choice = context.config.evaluate.agreement_split
    if choice == "larger":
        return "eval" if len(context.examples("eval")) > len(context.examples("test")) else "test"
    return choice


@stage("evaluate")
def evaluate_stage(context: Context) -> dict:
    """Run every exported artifact with ai_edge_litert on the test split and gate it.

    Per artifact: the metric, agreement with the Keras model it came from, size raw and gzip, latency
    p50/p90 at 1 and 2 threads, ops left in float, the parity gate (``evaluate.accuracy_budget``
    points against ``evaluate.reference``) and the delta against the fine-tuned fp32 model. The test
    split is encoded at the artifact's sequence length (longer examples truncated, as an app would),
    and the Keras reference is scored on exactly that data. Records replace report.json
    ``artifacts`` (stock-path records, ``"stock": true``, are kept); each is saved as soon as it is
    done, so a killed evaluation resumes with the next artifact.
    """
    config = context.config
    cfg = config.evaluate
    report = context.report()
    export_record = report.stage("export")
    if not export_record or not export_record.get("artifacts"):
        raise ConfigError("evaluate: report.json has no exported artifacts; run the export stage first "
                         f"(same --output-dir {context.output_dir})")
    primary = report.metric
    started = time.time()
    source = export_record.get("source_model") or context.current_model
    finetune = report.stage("finetune")
    finetune_metric = (finetune or {}).get("metrics", {}).get(primary)
    if cfg.reference == "finetune" and finetune_metric is None:
        raise ConfigError("evaluate.reference='finetune' needs a finetune stage in this run folder")
    keras_model = None
    by_length: dict[int, tuple] = {}
    previous = {a["name"]: a for a in report.data["artifacts"]}
    records = []
    for artifact in export_record["artifacts"]:
        old = previous.get(artifact["name"])
        if old and old.get("evaluation_hash") == context.digest:
            log.info("evaluate %s: done already", artifact["name"])
            records.append(old)
            continue
        seq_length = int(artifact["seq_length"])
        data = context.encoded("test", seq_length)
        if seq_length not in by_length:
            keras_model = keras_model or context.load_model(source)
            by_length[seq_length] = test_logits_and_metrics(context, keras_model, seq_length)
        keras_logits, keras_metrics = by_length[seq_length]
        split = _agreement_split(context)
        agreement_inputs = {}
        if split == "eval":
            key = ("eval", seq_length)
            if key not in by_length:
                keras_model = keras_model or context.load_model(source)
                eval_data = context.encoded("eval", seq_length)
                by_length[key] = (eval_data, metrics.predict_logits(keras_predict_fn(keras_model), eval_data,
                                                                    batch_size=cfg.batch_size, progress=False))
            agreement_inputs = {"agreement_data": by_length[key][0], "agreement_keras_logits": by_length[key][1],
                                "agreement_split": "eval"}
        reference = dict(keras_metrics)
        if cfg.reference == "finetune":
            reference[primary] = finetune_metric
        record = gate.artifact_record(
            artifact["name"], context.output_dir / artifact["path"], data, keras_logits, reference,
            quantization=artifact["quantization"], seq_length=seq_length, task=config.task,
            sparsity=artifact.get("sparsity", 0.0), accuracy_budget=cfg.accuracy_budget,
            min_agreement=cfg.agreement_floor(config.task),
            latency_runs=cfg.latency_runs, latency_warmup=cfg.latency_warmup, output_dir=context.output_dir,
            batch_size=cfg.batch_size, **agreement_inputs)
        value = record["metrics"].get(primary)
        record.update({
            "keras_metric": float(keras_metrics[primary]), "reference": cfg.reference,
            "source_model": source, "stock": False, "evaluation_hash": context.digest,
            "delta_vs_finetuned": None if finetune_metric is None or value is None
            else round((value - finetune_metric) * 100.0, 3)})
        if artifact.get("document_context"):  # scored on sentences read in their context: so must an app
            record["document_context"] = artifact["document_context"]
        if artifact.get("case_segments"):  # and so must an app's segment ids
            record["case_segments"] = True
        for key in ("weights", "int4_block_size"):  # the int4 artifact's parameters by storage type
            if key in artifact:
                record[key] = artifact[key]
        report.add_artifact(record)
        report.save()
        records.append(record)
        log.info("evaluate %s: %s=%.4f (Keras %.4f, agreement %.4f on %d %s examples), %.2f MB, p50 %.2f ms "
                 "(2 threads), %s", record["name"], primary, value, keras_metrics[primary], record["agreement"],
                 record["agreement_examples"], record["agreement_split"],
                 record["size_bytes"] / 1e6, record["latency_ms"]["threads2"]["p50"],
                 "passed" if record["passed"] else "FAILED the parity gate")
    stock = [a for a in report.data["artifacts"] if a.get("stock")]
    report.data["artifacts"] = records + stock
    record = report.set_stage(
        "evaluate", metrics={r["name"]: r["metrics"].get(primary) for r in records},
        seconds=time.time() - started, output="export/", accuracy_budget=cfg.accuracy_budget,
        reference=cfg.reference, passed=[r["name"] for r in records if r["passed"]],
        failed=[r["name"] for r in records if not r["passed"]])
    report.save()
    return record
