"""The stage pipeline: resume after SIGKILL, config changes, report.md / tradeoff.png, stage chains.

One tiny end-to-end chain (tiny BERT, 12-row CSV with string labels, the custom_csv recipe through
``tfcompress run``) serves several assertions; the rest are in-process and need no model.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SST_ROWS, build_tiny_model, seeded_weights
from tfcompress import report as report_module
from tfcompress.config import constants
from tfcompress.config import recipe
from tfcompress.models import loading
from tfcompress.pipeline import runner
from tfcompress.pipeline.stages import common
from tfcompress.cli import options
from tfcompress.models import packaged

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ["finetune", "prune", "export", "evaluate", "release"]


# ------------------------------------------------------------------------------ in-process
def _report_data():
    latency = lambda p50: {"threads1": {"p50": p50 * 1.5, "p90": p50 * 2}, "threads2": {"p50": p50, "p90": p50 * 1.2}}  # noqa: E731
    return {
        "task": "sst2", "metric": "accuracy", "model": {"name": "tiny", "params": 1000},
        "stages": [
            {"name": "finetune", "metrics": {"accuracy": 0.90}, "seconds": 10.0, "size_bytes": 4_000_000,
             "gzip_bytes": 3_600_000, "sparsity": 0.0},
            {"name": "prune", "metrics": {"accuracy": 0.895}, "seconds": 5.0, "size_bytes": 4_000_000,
             "gzip_bytes": 2_000_000, "sparsity": 0.5},
            {"name": "export", "metrics": {}, "seconds": 3.0},
            {"name": "release", "metrics": {}, "seconds": 0.1, "released": ["int8"],
             "blocked": {"int16x8": "failed the parity gate"}},
        ],
        "artifacts": [
            {"name": "int8", "format": "tflite", "metrics": {"accuracy": 0.893}, "size_bytes": 1_000_000,
             "gzip_bytes": 600_000, "sparsity": 0.5, "latency_ms": latency(1.0), "passed": True, "float_ops": [],
             "xnnpack_partitions": 2},
            {"name": "int16x8", "format": "tflite", "metrics": {"accuracy": 0.85}, "size_bytes": 1_100_000,
             "gzip_bytes": 700_000, "sparsity": 0.5, "latency_ms": latency(3.0), "passed": False,
             "float_ops": ["GATHER x1"]},
            {"name": "stock-dynamic", "format": "tflite", "metrics": {"accuracy": 0.89}, "size_bytes": 2_300_000,
             "gzip_bytes": 1_760_000, "sparsity": 0.0, "latency_ms": latency(1.46), "passed": True, "stock": True},
        ],
    }


def test_report_markdown_has_a_row_per_stage_model_and_artifact_with_deltas():
    text = report_module.render_markdown(_report_data())
    header = ("| stage / artifact | accuracy | Δ vs fine-tuned fp32 | size | gzip size | sparsity "
              "| p50 1 thread | p50 2 threads | passed |")
    assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split("|")[1].strip() for row in rows[:5]] == [
        "finetune (Keras)", "prune (Keras)", "int8 (tflite)", "int16x8 (tflite)", "stock-dynamic (tflite) [stock]"]
    int8 = rows[2]
    assert "0.8930" in int8 and "-0.70" in int8 and "1.00 MB" in int8 and "0.60 MB" in int8
    assert "50.0%" in int8 and "1.50 ms" in int8 and "1.00 ms" in int8 and "| yes |" in int8
    assert "**no**" in rows[3]
    assert "int16x8: not released: failed the parity gate" in text
    assert "## CPU runtime" in text and "- int8: 2" in text  # only artifacts that recorded it
    assert "- int16x8:" not in text.split("## CPU runtime")[1]


def test_report_without_finetune_measures_deltas_against_the_first_input_model():
    data = _report_data()
    data["stages"] = data["stages"][1:]  # a run that starts from an already fine-tuned model
    data["stages"][0]["input_metrics"] = {"accuracy": 0.91}
    assert report_module.reference_metric(data) == ("input model of the prune stage", 0.91)
    text = report_module.render_markdown(data)
    int8 = next(line for line in text.splitlines() if line.startswith("| int8 (tflite)"))
    assert "-1.70" in int8
    del data["stages"][0]["input_metrics"]
    assert report_module.reference_metric(data) == ("prune", 0.895)


def test_tradeoff_plot_is_written_atomically_as_png(tmp_path):
    path = tmp_path / "tradeoff.png"
    assert report_module.plot_tradeoff(_report_data(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["tradeoff.png"]  # no temporary file left
    assert not report_module.plot_tradeoff({"metric": "accuracy", "stages": [], "artifacts": []}, tmp_path / "x.png")


def test_a_flag_equal_to_the_default_keeps_the_hashes():
    """``--epochs 2`` parses to 2.0; a recipe default of 2 is the same config, so nothing reruns."""
    config = recipe.RecipeConfig(stages=["finetune", "prune", "export"])
    config.train.epochs = 2
    before = runner.stage_hashes(config)
    config.train.epochs = 2.0
    assert runner.stage_hashes(config) == before
    config.train.epochs = 2.5
    assert runner.stage_hashes(config)["finetune"] != before["finetune"]


def test_a_manifest_of_another_config_reruns_the_stage(tmp_path, monkeypatch):
    """Only the exact config hash skips a stage; any other (an older tfcompress, another config) reruns."""
    calls = []
    monkeypatch.setitem(runner.STAGES, "finetune", lambda context: calls.append("finetune") or {})
    monkeypatch.setattr(runner, "write_outputs", lambda *args, **kwargs: None)
    monkeypatch.setattr(runner, "check_inputs", lambda context: None)  # no data files here
    config = recipe.RecipeConfig(stages=["finetune"], output_dir=str(tmp_path))
    monkeypatch.setattr(config, "validate", lambda: None)
    path = runner.manifest_path(tmp_path, "finetune")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": "finetune", "config_hash": runner.stage_hashes(config)["finetune"]}))
    runner.run(config)
    assert calls == []
    path.write_text(json.dumps({"stage": "finetune", "config_hash": "0123456789abcdef"}))
    runner.run(config)
    assert calls == ["finetune"]


def test_config_change_changes_only_that_stage_and_the_ones_after():
    config = recipe.RecipeConfig(stages=["finetune", "distill", "prune", "export", "evaluate", "release"])
    before = runner.stage_hashes(config)
    config.evaluate.accuracy_budget = 2.0
    after = runner.stage_hashes(config)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == ["evaluate", "release"]
    config.prune.final_sparsity = 0.8
    changed = [name for name in after if runner.stage_hashes(config)[name] != after[name]]
    assert changed == ["prune", "export", "evaluate", "release"]


@pytest.mark.parametrize("flags, expected", [
    ([], CHAIN),
    (["--student-layers", "3"], ["finetune", "distill", "prune", "export", "evaluate", "release"]),
    (["--distill-from", "teacher"], ["distill", "prune", "export", "evaluate", "release"]),
    (["--qat-epochs", "1"], ["finetune", "prune", "qat", "export", "evaluate", "release"]),
    (["--trim-vocab", "--qat-epochs", "1"], ["finetune", "prune", "trim", "qat", "export", "evaluate", "release"]),
    (["--stages", "export,evaluate"], ["export", "evaluate"]),
])
def test_recipe_flags_choose_the_stage_chain(flags, expected):
    import argparse

    defaults = recipe.RecipeConfig(stages=list(CHAIN))
    parser = argparse.ArgumentParser()
    options.add_recipe_arguments(parser, defaults)
    assert options.chain_stages(parser.parse_args(flags), defaults) == expected


SHIPPING_CHAIN = ["finetune", "distill", "prune", "trim", "export", "evaluate", "release"]  # recipes/sst2.py


@pytest.mark.parametrize("flags, expected, layers", [
    ([], SHIPPING_CHAIN, 3),
    (["--student-layers", "0"], ["finetune", "prune", "trim", "export", "evaluate", "release"], 3),
    (["--no-trim-vocab"], ["finetune", "distill", "prune", "export", "evaluate", "release"], 3),
    (["--student-layers", "0", "--no-trim-vocab"], CHAIN, 3),
    (["--student-layers", "4"], SHIPPING_CHAIN, 4),
    (["--distill-from", "teacher"], SHIPPING_CHAIN[1:], 3),
])
def test_flags_drop_stages_a_recipe_has_by_default(flags, expected, layers):
    import argparse

    defaults = recipe.RecipeConfig(stages=list(SHIPPING_CHAIN), student=recipe.StudentConfig(num_layers=3))
    parser = argparse.ArgumentParser()
    options.add_recipe_arguments(parser, defaults)
    args = parser.parse_args(["--output-dir", "out", *flags])
    config = options.config_from_args(args, defaults)
    assert config.stages == expected and config.student.num_layers == layers


def test_negative_student_layers_is_refused():
    import argparse

    parser = argparse.ArgumentParser()
    options.add_recipe_arguments(parser, recipe.RecipeConfig())
    with pytest.raises(ValueError, match="--student-layers -1"):
        options.config_from_args(parser.parse_args(["--output-dir", "o", "--student-layers", "-1"]),
                                  recipe.RecipeConfig())


# ------------------------------------------------------------------------------ end to end
@pytest.fixture
def tiny_run(tmp_path, tiny_tokenizer):
    """A tiny model directory and a CSV with string labels; the command that runs the chain on them."""
    from tfcompress.models.loading import save_model

    model_dir = tmp_path / "tiny-model"
    save_model(build_tiny_model("sequence"), tiny_tokenizer, model_dir)
    names = {0: "negative", 1: "positive"}
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\n" + "".join(f"{s},{names[l]}\n" for s, l in SST_ROWS))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tfcompress.cli", "run", "custom_csv", "--smoke", "--model", str(model_dir),
               "--train-file", str(csv), "--output-dir", str(out), "--batch-size", "4", "--export", "fp32,int8",
               "--set", "train.learning_rate=0.003"]
    return command, out


@pytest.fixture
def stage_log():
    """Messages of the ``tfcompress`` loggers while the test runs (they do not propagate to root)."""
    import logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    logger = logging.getLogger("tfcompress")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def _ran(messages: list[str]) -> list[str]:
    return [name for name in constants.STAGE_ORDER if any(m.startswith(f"stage {name}: running") for m in messages)]


def _skipped(messages: list[str]) -> list[str]:
    return [name for name in constants.STAGE_ORDER if any(m.startswith(f"stage {name}: done already") for m in messages)]


def _in_process(command: list[str], monkeypatch) -> None:
    """The same ``tfcompress run ...`` command in this process (saves TensorFlow's start-up)."""
    from tfcompress.cli import commands as cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli's run sets sys.argv for the recipe
    assert cli.main(command[3:]) == 0


@pytest.fixture(scope="module")
def resumed_chain(tmp_path_factory, tiny_tokenizer):
    """A chain killed with SIGKILL right after its first stage, then rerun to the end: the run folder
    and the stages the rerun ran and skipped."""
    import logging

    from tfcompress.models.loading import save_model

    folder = tmp_path_factory.mktemp("resumed_chain")
    save_model(build_tiny_model("sequence"), tiny_tokenizer, folder / "tiny-model")
    names = {0: "negative", 1: "positive"}
    csv = folder / "train.csv"
    csv.write_text("text,label\n" + "".join(f"{s},{names[l]}\n" for s, l in SST_ROWS))
    out = folder / "run"
    command = [sys.executable, "-m", "tfcompress.cli", "run", "custom_csv", "--smoke", "--model",
               str(folder / "tiny-model"), "--train-file", str(csv), "--output-dir", str(out), "--batch-size", "4",
               "--export", "fp32,int8", "--set", "train.learning_rate=0.003"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    try:
        while not (out / "finetune" / "manifest.json").exists():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "finetune never finished"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    killed = {"returncode": process.returncode, "report": (out / "report.json").read_text(),
              "release_manifest": (out / "release" / "manifest.json").exists(),
              "finetune_manifest": (out / "finetune" / "manifest.json").read_text()}
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    logging.getLogger("tfcompress").addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            _in_process(command, patch)
    finally:
        logging.getLogger("tfcompress").removeHandler(handler)
    return {"out": out, "command": command, "killed": killed, "ran": _ran(messages), "skipped": _skipped(messages)}


def test_killed_run_resumes_without_redoing_finished_stages(resumed_chain):
    killed, out = resumed_chain["killed"], resumed_chain["out"]
    assert killed["returncode"] == -signal.SIGKILL
    json.loads(killed["report"])  # never half-written
    assert not killed["release_manifest"]
    assert resumed_chain["skipped"] == ["finetune"]
    assert resumed_chain["ran"] == ["prune", "export", "evaluate", "release"]
    assert (out / "finetune" / "manifest.json").read_text() == killed["finetune_manifest"]
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers


def test_a_finished_chain_reports_every_stage_and_artifact(resumed_chain):
    out = resumed_chain["out"]
    report = json.loads((out / "report.json").read_text())
    assert [stage["name"] for stage in report["stages"]] == CHAIN
    assert [artifact["name"] for artifact in report["artifacts"]] == ["fp32", "int8"]
    for artifact in report["artifacts"]:
        assert {"metrics", "agreement", "size_bytes", "gzip_bytes", "latency_ms", "passed"} <= set(artifact)
        assert artifact["latency_ms"]["threads2"]["p50"] > 0
    fp32 = report["artifacts"][0]
    assert fp32["passed"] and fp32["agreement"] == 1.0  # fp32 conversion is exact on argmax
    prune_record = next(s for s in report["stages"] if s["name"] == "prune")
    assert prune_record["pruned_sparsity"] == pytest.approx(0.5, abs=0.02)
    export_record = next(s for s in report["stages"] if s["name"] == "export")
    # the default int8 artifact had its feed-forward outlier channels scaled (recorded); fp32 not
    assert [a.get("outlier_percentile") for a in export_record["artifacts"]] == [None, 90.0]
    for name in CHAIN:
        assert json.loads((out / name / "manifest.json").read_text())["stage"] == name


def test_a_finished_chain_writes_release_bundles_report_table_plot_and_tensorboard(resumed_chain):
    out = resumed_chain["out"]
    release = json.loads((out / "report.json").read_text())["stages"][-1]
    assert "fp32" in release["released"]
    bundle = out / "release" / "fp32"
    assert (bundle / "model.tflite").exists()
    assert (bundle / "labels.txt").read_text().split() == ["negative", "positive"]
    # the manifest says how the parity gate passed the file, as the report does
    record = next(a for a in json.loads((out / "report.json").read_text())["artifacts"] if a["name"] == "fp32")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key in ("agreement_split", "agreement_examples", "logit_error", "accuracy_budget", "min_agreement",
                "reference_metric", "passed"):
        assert manifest[key] == record[key], key
    assert "| fp32 (tflite) |" in (out / "report.md").read_text()
    assert (out / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tensorboard" / "summary").glob("events.out.tfevents.*"))


def test_bench_times_the_artifacts_of_a_run_folder(resumed_chain):
    from tfcompress.cli import commands as cli

    assert cli.main(["bench", "--run-dir", str(resumed_chain["out"]), "--runs", "3", "--warmup", "1",
                     "--threads", "1"]) == 0


def test_a_changed_parity_budget_reruns_evaluate_and_release_only(resumed_chain, tmp_path, stage_log, monkeypatch):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(resumed_chain["out"], out)  # the shared run folder stays as the other tests expect it
    command = [str(out) if part == str(resumed_chain["out"]) else part for part in resumed_chain["command"]]
    _in_process(command + ["--accuracy-budget", "5"], monkeypatch)
    assert _skipped(stage_log) == ["finetune", "prune", "export"]
    assert _ran(stage_log) == ["evaluate", "release"]
    report = json.loads((out / "report.json").read_text())
    assert all(artifact["accuracy_budget"] == 5.0 for artifact in report["artifacts"])


def test_every_declared_stage_is_registered():

    assert set(runner.STAGES) == {"teacher", "finetune", "distill", "prune", "trim", "qat", "export", "evaluate", "release"}
    assert set(runner.STAGES) == set(constants.STAGE_ORDER)


def test_qat_stage_runs_in_the_chain_and_exports_an_int8_artifact_that_keeps_sparsity(tiny_run, monkeypatch):
    """finetune -> prune -> qat -> export: the qat stage trains, saves, and its qat-int8 artifact has
    int8 FULLY_CONNECTED kernels and the pruned zeros."""
    from tfcompress.evaluate import runtime

    command, out = tiny_run
    _in_process(command + ["--qat-epochs", "1", "--stages", "finetune,prune,qat,export"], monkeypatch)
    report = json.loads((out / "report.json").read_text())
    assert [stage["name"] for stage in report["stages"]] == ["finetune", "prune", "qat", "export"]
    qat = report["stages"][2]
    assert qat["steps"] > 0 and qat["input_model"].endswith("prune/model")
    assert json.loads((out / "qat" / "manifest.json").read_text())["stage"] == "qat"
    export = report["stages"][3]
    assert export["input_model"].endswith("qat/model")
    assert export["sparsity"] > 0.2  # the stripped QAT model kept the pruned zeros
    names = [artifact["name"] for artifact in export["artifacts"]]
    assert names == ["fp32", "int8", "qat-int8"]
    content = (out / "export" / "qat-int8.tflite").read_bytes()
    int8, total = runtime.int8_kernel_count(content, "FULLY_CONNECTED")
    assert total > 0 and int8 == total

    # Without --model, a later stage alone starts from the run's latest model, not the base model.
    model_flag = command.index("--model")
    _in_process(command[:model_flag] + command[model_flag + 2:] + ["--stages", "export", "--export", "fp32"],
                monkeypatch)
    export = json.loads((out / "report.json").read_text())["stages"][-1]
    assert export["name"] == "export" and export["input_model"] == str(out / "qat" / "model")


def test_qat_target_integer_runs_through_the_chain_into_the_integer_artifact(tiny_run, monkeypatch):
    """``--set qat.target=integer``: the qat stage records its target and fake-quant points and saves the
    learned ranges beside its model; the ``integer`` export takes them and stays integer-only."""
    from tfcompress.evaluate import integer

    command, out = tiny_run
    command = [part if part != "fp32,int8" else "integer" for part in command]
    _in_process(command + ["--qat-epochs", "1", "--stages", "qat,export", "--set", "qat.target=integer"], monkeypatch)
    report = json.loads((out / "report.json").read_text())
    qat = report["stages"][0]
    # 2 blocks: 5 LayerNorms x (input, output) + 2 softmax inputs + 2 probabilities; 12 Dense wrappers
    assert (qat["qat_target"], qat["fake_quant_activations"], qat["fake_quant_dense"]) == ("integer", 14, 12)
    ranges = json.loads((out / "qat" / "model" / "integer_ranges.json").read_text())["points"]
    assert len(ranges) == qat["learned_ranges"] == 12 + 6  # + the Q/K/V matmul inputs
    artifact = report["stages"][1]["artifacts"][0]
    assert artifact["name"] == "integer" and artifact["qat_learned_ranges"] == len(ranges)
    assert integer.integer_report(out / "export" / "integer.tflite")["integer_only"]


def test_prune_from_another_folder_measures_its_input_model(tiny_run, monkeypatch):
    """A prune stage whose input model no stage of this run saved evaluates that model (not another
    one) on the test set before pruning it, and records the result as ``input_metrics``."""

    command, out = tiny_run
    _in_process(command + ["--stages", "finetune"], monkeypatch)
    finetuned = out / "finetune" / "model"
    weight_sum = lambda model: float(sum(np.abs(w).sum() for w in model.get_weights()))  # noqa: E731
    evaluated, real = [], common.test_logits_and_metrics

    def spy(context, model, max_length=None):
        logits, values = real(context, model, max_length)
        evaluated.append((weight_sum(model), values))
        return logits, values

    monkeypatch.setattr(common, "test_logits_and_metrics", spy)  # input_model_metrics reads it there
    other = out.parent / "prune-only"
    argv = list(command)
    argv[argv.index("--model") + 1] = str(finetuned)
    argv[argv.index("--output-dir") + 1] = str(other)
    _in_process(argv + ["--stages", "prune"], monkeypatch)
    prune_record = json.loads((other / "report.json").read_text())["stages"][0]
    assert prune_record["name"] == "prune" and prune_record["input_model"] == str(finetuned)
    first_weights, first_metrics = evaluated[0]  # before pruning: the fine-tuned model itself
    assert first_weights == pytest.approx(weight_sum(loading.load_model(str(finetuned))), rel=1e-6)
    assert prune_record["input_metrics"]["accuracy"] == pytest.approx(first_metrics["accuracy"])


def test_prune_with_the_dense_model_as_teacher(tiny_run, monkeypatch):
    """--prune-distill-alpha < 1: the prune stage distils from its own dense input while pruning."""
    command, out = tiny_run
    _in_process(command + ["--stages", "finetune,prune", "--prune-distill-alpha", "0.5"], monkeypatch)
    report = json.loads((out / "report.json").read_text())
    prune_record = report["stages"][-1]
    assert prune_record["name"] == "prune"
    assert prune_record["pruned_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert prune_record["distillation"]["teacher"] == str(out / "finetune" / "model")
    assert prune_record["distillation"]["alpha"] == 0.5
    logged = [json.loads(line) for line in (out / "prune" / "metrics.jsonl").read_text().splitlines()]
    kd = [row["train/distill/kd_loss"] for row in logged if "train/distill/kd_loss" in row]
    assert kd and all(np.isfinite(kd)), "the KD term was not trained"


def test_trim_stage_shrinks_the_vocabulary_and_later_stages_use_its_tokenizer(tiny_run, monkeypatch):
    """--trim-vocab: the trim stage keeps the training tokens, the test metric is unchanged (every
    test sentence here uses training words only), and export/release use the trimmed tokenizer."""
    from tfcompress.evaluate import runtime

    command, out = tiny_run
    _in_process(command + ["--trim-vocab", "--export", "fp32"], monkeypatch)
    report = json.loads((out / "report.json").read_text())
    assert [stage["name"] for stage in report["stages"]] == ["finetune", "prune", "trim", "export", "evaluate",
                                                             "release"]
    trim = report["stages"][2]
    assert trim["vocab_size"]["after"] < trim["vocab_size"]["before"]
    assert trim["params"] < trim["input_params"]
    assert trim["test_respelled"]["changed_texts"] == 0
    assert trim["metrics"]["accuracy"] == pytest.approx(trim["input_metrics"]["accuracy"])
    tokenizer = loading.load_tokenizer(str(out / "trim" / "model"))
    assert len(tokenizer) == trim["vocab_size"]["after"]

    # A context that encoded the test split with the full vocabulary re-encodes it once the current
    # model is the trimmed one (the trim stage scores the trimmed model on trimmed ids).
    config = json.loads((out / "config.json").read_text())
    context = runner.Context(recipe.RecipeConfig(
        task="sequence", model=str(out / "prune" / "model"), data=recipe.DataConfig(**config["data"])))
    context.current_model = str(out / "prune" / "model")
    full_ids = context.encoded("test").features["input_ids"]
    context.current_model = str(out / "trim" / "model")
    trimmed_ids = context.encoded("test").features["input_ids"]
    expected = [tokenizer(text)["input_ids"] for text in context.examples("test").texts]
    assert [list(row) for row in trimmed_ids] == expected
    assert [list(row) for row in full_ids] != expected
    bundle = out / "release" / "fp32"
    assert len((bundle / "vocab.txt").read_text().splitlines()) == trim["vocab_size"]["after"]
    artifact = runtime.TFLiteModel(bundle / "model.tflite")
    keras_model = loading.load_model(str(out / "trim" / "model"))
    batch = tokenizer(["a good movie"], padding="max_length", max_length=artifact.seq_length, return_tensors="np")
    features = {name: batch[name].astype(np.int32) for name in artifact.input_names}
    np.testing.assert_allclose(artifact.predict(features), keras_model(features, training=False).logits.numpy(),
                               atol=1e-4)


def test_pooling_is_in_the_finetune_hash_as_the_head_actually_built():
    config = recipe.RecipeConfig(stages=["finetune", "prune", "export"], pooling="cls")
    cls_hashes = runner.stage_hashes(config)
    config.pooling = "mean"
    mean_hashes = runner.stage_hashes(config)
    assert all(cls_hashes[name] != mean_hashes[name] for name in cls_hashes)
    config.pooling = "auto"  # the packaged MiniLM is a mean-pooling sentence-transformers checkpoint
    expected = mean_hashes if packaged.minilm_path() else cls_hashes
    assert runner.stage_config(config, "finetune")["pooling"] in ("cls", "mean")
    assert runner.stage_hashes(config) == expected
    with pytest.raises(ValueError, match="pooling='mean'"):
        recipe.RecipeConfig(task="token", pooling="mean").validate()


def test_finetune_with_mean_pooling_saves_a_mean_head(tiny_run, monkeypatch):
    command, out = tiny_run
    _in_process(command + ["--stages", "finetune", "--pooling", "mean"], monkeypatch)
    saved = json.loads((out / "finetune" / "model" / "config.json").read_text())
    assert saved["classifier_pooling"] == "mean"
    assert saved["architectures"] == ["BertMeanPoolingForSequenceClassification"]


def test_augmentation_changes_the_distill_hash():
    config = recipe.RecipeConfig(stages=["finetune", "distill", "prune"])
    assert runner.stage_config(config, "distill")["distill"]["augment_copies"] == 0
    before = runner.stage_hashes(config)
    config.distill.augment_copies = 2
    after = runner.stage_hashes(config)
    assert [n for n in before if before[n] != after[n]] == ["distill", "prune"]
    config.validate()
    config.prune_distill.augment_copies = 1
    with pytest.raises(ValueError, match="prune_distill.augment_copies=1: the prune stage does not augment"):
        config.validate()


def test_distill_with_augmentation_teaches_on_unlabelled_texts(tiny_run, monkeypatch):
    command, out = tiny_run
    _in_process(command + ["--stages", "finetune,distill", "--student-layers", "1", "--augment-copies", "2",
                           "--set", "distill.cache_teacher=true"], monkeypatch)
    finetune, record = json.loads((out / "report.json").read_text())["stages"]
    assert record["name"] == "distill"
    train_examples = finetune["train_examples"]
    assert 0 < record["augmented_examples"] <= 2 * train_examples
    assert record["teacher_cache"]["examples"] == train_examples + record["augmented_examples"]
    logged = [json.loads(line) for line in (out / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert any(np.isfinite(row.get("train/distill/kd_loss", np.nan)) for row in logged)


def test_atomic_write_removes_what_a_killed_writer_left(tmp_path):
    import subprocess
    import sys

    from tfcompress.utils import atomic_write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f".report.json.tmp-{int(dead.stdout)}"  # a writer killed mid-write
    stale.write_text("{half")
    live = tmp_path / f".report.json.tmp-{os.getpid()}x"  # not a PID: left alone
    live.write_text("other")
    atomic_write_json(tmp_path / "report.json", {"ok": True})
    assert json.loads((tmp_path / "report.json").read_text()) == {"ok": True}
    assert not stale.exists() and live.exists()


def _saved_weights(folder: Path) -> dict:
    from tfcompress.models.loading import load_model

    model = load_model(str(folder), task="sequence")
    # keyed without the model's own (uniquified) name: run0's model is ..._1, run1's ..._3
    return {weight.name.split("/", 1)[-1]: weight.numpy() for weight in model.weights}


def test_two_runs_of_the_same_command_give_identical_weights(tiny_run, monkeypatch):
    """The new head, the student and the data order all come from --seed, whatever the random state
    before the run (a fresh head is drawn before the Trainer exists)."""
    import random

    from tfcompress._compat import tf

    from transformers import TFBertModel

    from conftest import tiny_config
    from tfcompress.models.loading import load_tokenizer, save_model

    command, out = tiny_run
    encoder_only = out.parent / "encoder-only"  # a pretrained checkpoint without a task head
    model_dir = command[command.index("--model") + 1]
    encoder = TFBertModel(tiny_config())
    encoder(encoder.dummy_inputs)
    save_model(encoder, load_tokenizer(model_dir), encoder_only)
    command = command + ["--stages", "finetune,distill", "--student-layers", "1", "--model", str(encoder_only)]
    folders = []
    for index, noise in enumerate((1, 2)):
        tf.random.set_seed(noise)
        np.random.seed(noise)
        random.seed(noise)
        tf.random.uniform([noise])  # a different generator position too
        target = out.parent / f"run{index}"
        _in_process([part if part != str(out) else str(target) for part in command], monkeypatch)
        folders.append(target)
    for stage in ("finetune", "distill"):
        first, second = (_saved_weights(folder / stage / "model") for folder in folders)
        assert first.keys() == second.keys()
        for name in first:
            np.testing.assert_array_equal(first[name], second[name], err_msg=f"{stage}: {name}")


def test_mixed_precision_reaches_the_training_stage_and_does_not_leak(tiny_run, monkeypatch):
    """``train.mixed_precision`` sets Keras' policy while the finetune stage builds and trains its model
    (the Trainer refuses a policy that differs from its config), and float32 is back afterwards."""
    from tfcompress._compat import keras
    from tfcompress.train import trainer as trainer_module

    seen = []
    original = trainer_module.Trainer.__init__

    def spy(self, model, *args, **kwargs):
        seen.append((keras.mixed_precision.global_policy().name, model.layers[0].dtype_policy.name))
        original(self, model, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "__init__", spy)
    command, out = tiny_run
    _in_process(command + ["--stages", "finetune", "--set", "train.mixed_precision=mixed_bfloat16"], monkeypatch)
    assert seen == [("mixed_bfloat16", "mixed_bfloat16")]
    assert keras.mixed_precision.global_policy().name == "float32"
    assert json.loads((out / "finetune" / "manifest.json").read_text())["stage"] == "finetune"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_tokenizer):
    """One chain exporting fp32 and int16x8, gated against the fine-tuned model, releasing int16x8 only."""
    from tfcompress.cli import commands as cli
    from tfcompress.models.loading import save_model

    folder = tmp_path_factory.mktemp("reference_run")
    # seeded: tf_keras draws other initial weights in each process, and int16x8 must pass the gate every time
    save_model(seeded_weights(build_tiny_model("sequence")), tiny_tokenizer, folder / "tiny-model")
    csv = folder / "train.csv"
    csv.write_text("text,label\n" + "".join(f"{s},{l}\n" for s, l in SST_ROWS))
    out = folder / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", list(sys.argv))
        assert cli.main(["run", "custom_csv", "--smoke", "--model", str(folder / "tiny-model"), "--train-file",
                         str(csv), "--output-dir", str(out), "--batch-size", "4", "--stages",
                         "finetune,export,evaluate,release", "--export", "fp32,int16x8", "--accuracy-budget", "100",
                         "--set", "evaluate.reference=finetune", "--set", "release.artifacts=int16x8"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_int16x8_goes_through_export_evaluate_and_release(reference_run):
    out, report = reference_run
    int16 = next(a for a in report["artifacts"] if a["name"] == "int16x8")
    assert int16["quantization"] == "int16x8" and int16["size_bytes"] > 0 and "agreement" in int16
    assert (out / "release" / "int16x8" / "model.tflite").is_file()


def test_int4_goes_through_export_evaluate_and_release_with_its_weight_storage(tiny_run, monkeypatch):
    """The int4 artifact's record and manifest say how its parameters are stored, as its file does (a tiny
    model after a few steps: its int4 predictions churn, so the agreement floor is off)."""
    from tfcompress.export import int4

    command, out = tiny_run
    command = [part if part != "fp32,int8" else "int4" for part in command]
    _in_process(command + ["--stages", "finetune,export,evaluate,release", "--accuracy-budget", "100",
                           "--set", "evaluate.min_agreement=0", "--set", "export.int4_block_size=32"], monkeypatch)
    report = json.loads((out / "report.json").read_text())
    record = next(a for a in report["artifacts"] if a["name"] == "int4")
    stored = int4.weight_storage(out / "export" / "int4.tflite")
    assert record["weights"] == stored and stored["int4"] > 10 * stored["float32"]
    manifest = json.loads((out / "release" / "int4" / "manifest.json").read_text())
    assert manifest["weights"] == stored and manifest["quantization"] == "int4"
    assert record["int4_block_size"] == manifest["int4_block_size"] == 32


def test_reference_finetune_gates_every_artifact_against_the_fine_tuned_metric(reference_run):
    _, report = reference_run
    finetuned = next(s for s in report["stages"] if s["name"] == "finetune")["metrics"]["accuracy"]
    for artifact in report["artifacts"]:
        assert artifact["reference"] == "finetune"
        assert artifact["reference_metric"] == pytest.approx(finetuned)


def test_release_artifacts_releases_only_the_listed_ones(reference_run):
    out, report = reference_run
    release = next(s for s in report["stages"] if s["name"] == "release")
    assert release["released"] == ["int16x8"]
    assert sorted(p.name for p in (out / "release").iterdir() if p.is_dir()) == ["int16x8"]


def test_reference_finetune_without_a_finetune_stage_is_refused(reference_run, tmp_path, monkeypatch, capsys):
    from tfcompress.cli import commands as cli

    out, _ = reference_run
    csv = out.parent / "train.csv"
    other = tmp_path / "no-finetune"
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "custom_csv", "--smoke", "--model", str(out / "finetune" / "model"), "--train-file", str(csv),
                  "--output-dir", str(other), "--batch-size", "4", "--stages", "export,evaluate", "--export", "fp32",
                  "--set", "evaluate.reference=finetune"])
    assert exit_info.value.code == 2
    assert "reference='finetune' needs a finetune stage" in capsys.readouterr().err


def test_agreement_is_measured_on_the_larger_eval_split(tiny_run, tmp_path, monkeypatch):
    """Agreement needs no labels: with an eval file larger than the test file it is measured there (and
    kept on the test split as agreement_test); the gate uses the larger one."""
    command, out = tiny_run
    names = {0: "negative", 1: "positive"}
    larger = tmp_path / "eval.csv"
    larger.write_text("text,label\n" + "".join(f"{s},{names[l]}\n" for s, l in SST_ROWS * 3))
    test = tmp_path / "test.csv"
    test.write_text("text,label\n" + "".join(f"{s},{names[l]}\n" for s, l in SST_ROWS[:8]))
    _in_process(command + ["--eval-file", str(larger), "--test-file", str(test), "--stages", "finetune,export,evaluate",
                           "--export", "fp32,int8"], monkeypatch)
    artifacts = json.loads((out / "report.json").read_text())["artifacts"]
    assert {a["name"] for a in artifacts} == {"fp32", "int8"}
    for record in artifacts:
        assert record["agreement_split"] == "eval" and record["agreement_examples"] == 3 * len(SST_ROWS)
        assert 0.0 <= record["agreement_test"] <= 1.0 and record["metrics"]["accuracy"] is not None
    _in_process(command + ["--eval-file", str(larger), "--test-file", str(test), "--stages", "finetune,export,evaluate",
                           "--export", "fp32,int8", "--set", "evaluate.agreement_split=test"], monkeypatch)
    artifacts = json.loads((out / "report.json").read_text())["artifacts"]
    assert all(a["agreement_split"] == "test" and a["agreement_examples"] == 8 for a in artifacts)
