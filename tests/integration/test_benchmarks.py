"""The benchmark scripts run end to end in ``--smoke`` mode (tiny model, tiny data) into a tmp folder.

They are called through ``main(argv)`` in this process (no second TensorFlow start-up); results go to
``--results-dir`` under tmp_path and smoke runs never append to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(script: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(script)
    finally:
        sys.path.remove(str(BENCHMARKS))


def _run(script: str, argv: list[str]) -> dict:
    return json.loads(Path(_module(script).main(argv)).read_text())


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture
def results_md_untouched():
    markdown = BENCHMARKS / "RESULTS.md"
    before = markdown.read_bytes() if markdown.exists() else None
    yield
    assert (markdown.read_bytes() if markdown.exists() else None) == before


def test_scaling_smoke_measures_latency_and_throughput_and_fits_exponents(tmp_path, results_md_untouched):
    result = _run("scaling", ["--smoke", "--results-dir", str(tmp_path)])
    assert (tmp_path / "scaling-smoke.json").is_file()
    assert {"environment", "command", "settings", "latency", "latency_fit", "throughput", "throughput_fit"} <= set(result)
    assert set(result["latency"]) == {"fp32", "int8"}
    for rows in result["latency"].values():
        assert set(rows) == {"16", "32"}
        assert all(_positive(r["latency_ms"]["p50"]) and _positive(r["size_bytes"]) for r in rows.values())
    assert set(result["throughput"]) == {"4", "8"}
    assert all(_positive(r["samples_per_second"]) for r in result["throughput"].values())
    for fit in [*result["latency_fit"].values(), result["throughput_fit"]]:
        assert math.isfinite(fit["b"]) and _positive(fit["a"])


def test_multiseed_summary_averages_seeds_and_pairs_sentences_with_stock_dynamic():
    multiseed = _module("_multiseed")

    def seed_result(stock, ours, released=True):
        return {"files": {"stock-dynamic": {"a.tsv": stock[:4], "b.tsv": stock[4:]},
                          "tfcompress dynamic": {"a.tsv": ours[:4], "b.tsv": ours[4:]}},
                "rows": [{"row": "stock-dynamic", "gzip_bytes": 100.0, "p50_ms_2_threads": 2.0},
                         {"row": "tfcompress dynamic", "gzip_bytes": 40.0, "p50_ms_2_threads": 1.0,
                          "released": released}]}

    per_seed = {1: seed_result([1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 1, 0]),
                2: seed_result([1, 0, 0, 0, 1, 1], [1, 1, 1, 0, 1, 1])}
    result = multiseed.aggregate(per_seed, {"gzip_ratio": 0.5, "latency_ratio": 0.6})
    ours = result["artifacts"]["tfcompress dynamic"]
    assert result["files"] == ["a.tsv", "b.tsv"] and ours["combined"]["examples"] == 6
    assert ours["per_file"]["a.tsv"]["seeds"] == [0.75, 0.75] and ours["combined"]["seeds"] == [4 / 6, 5 / 6]
    assert ours["delta_vs_stock_dynamic_pt"] == pytest.approx(100 * (4.5 / 6 - 3 / 6))
    paired = ours["paired_vs_stock_dynamic"]
    assert paired["delta_pt"] == pytest.approx(ours["delta_vs_stock_dynamic_pt"])
    assert paired["ci95_pt"][0] <= paired["delta_pt"] <= paired["ci95_pt"][1]
    assert ours["gzip_ratio"] == 0.4 and ours["latency_ratio"] == 0.5 and result["dominating"] == ["tfcompress dynamic"]
    per_seed[2] = seed_result([1, 0, 0, 0, 1, 1], [1, 1, 1, 0, 1, 1], released=False)
    assert multiseed.aggregate(per_seed, {"gzip_ratio": 0.5, "latency_ratio": 0.6})["dominating"] == []
    lines = multiseed.summary_lines("sst2", result, {"gzip_ratio": 0.5, "latency_ratio": 0.6})
    assert any(line.startswith("| tfcompress dynamic | 0.7500 | 0.7500 | 0.7500 (0.6667 .. 0.8333)") for line in lines)


def test_stock_vs_tfcompress_smoke_runs_seeds_and_extra_test_files_and_resumes(tmp_path, results_md_untouched):
    argv = ["--smoke", "--tasks", "sst2", "--seeds", "1,2", "--test-files", "test1821.tsv",
            "--output-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path)]
    entry = _run("stock_vs_tfcompress", argv)["tasks"]["sst2"]
    summary = entry["aggregate"]
    assert summary["seeds"] == [1, 2] and summary["files"] == ["test.tsv", "test1821.tsv"]
    stock, ours = summary["artifacts"]["stock-dynamic"], summary["artifacts"]["tfcompress dynamic"]
    assert stock["combined"]["examples"] == 32 + 12 and len(ours["combined"]["seeds"]) == 2
    assert "ci95_pt" in ours["paired_vs_stock_dynamic"] and _positive(ours["gzip_ratio"])
    finished = [tmp_path / "runs" / "sst2" / f"seed{s}" / "stock_vs_tfcompress.json" for s in (1, 2)]
    stamps = [path.stat().st_mtime_ns for path in finished]
    again = _run("stock_vs_tfcompress", argv)["tasks"]["sst2"]["aggregate"]  # both seeds read back, not rerun
    assert [path.stat().st_mtime_ns for path in finished] == stamps
    assert again["artifacts"]["tfcompress dynamic"]["combined"] == ours["combined"]
    stale = json.loads(finished[1].read_text())  # seed 2 as if made with another stock training length
    stale["settings"]["stock_epochs"] = 3
    finished[1].write_text(json.dumps(stale))
    stamps = [path.stat().st_mtime_ns for path in finished]
    _run("stock_vs_tfcompress", argv)
    assert finished[0].stat().st_mtime_ns == stamps[0] and finished[1].stat().st_mtime_ns != stamps[1]
    assert json.loads(finished[1].read_text())["settings"]["stock_epochs"] == 1


@pytest.mark.parametrize("task", ["sst2", "conll2003"])
def test_stock_vs_tfcompress_smoke_compares_both_paths(task, tmp_path, results_md_untouched):
    result = _run("stock_vs_tfcompress", ["--smoke", "--tasks", task, "--results-dir", str(tmp_path)])
    assert (tmp_path / "stock_vs_tfcompress-smoke.json").is_file()
    entry = result["tasks"][task]
    assert {"rows", "verdict", "train_samples_per_second", "seq_length", "stock", "tfcompress"} <= set(entry)
    rows = {row["row"]: row for row in entry["rows"]}
    assert {"stock Keras fp32", "stock-dynamic", "stock-int8", "tfcompress dynamic", "tfcompress int8"} <= set(rows)
    for name, row in rows.items():
        assert 0.0 <= row["metric"] <= 1.0, name
        assert _positive(row["size_bytes"]) and _positive(row["gzip_bytes"]), name
        if name != "stock Keras fp32" and "(Keras)" not in name:
            assert _positive(row["p50_ms_2_threads"]) and _positive(row["latency_ratio_vs_stock_dynamic"]), name
            if name.startswith("tfcompress "):  # timed again beside the stock artifacts, not read from the report
                assert _positive(row["pipeline_latency_ms"]["threads2"]["p50"]), name
        assert _positive(row["gzip_ratio_vs_stock_dynamic"]), name
    sps = entry["train_samples_per_second"]
    assert _positive(sps["stock"]) and _positive(sps["tfcompress_finetune"]) and _positive(sps["ratio"])
    assert isinstance(entry["verdict"]["released_dominates_stock_dynamic"], bool)
    assert isinstance(entry["verdict"]["full_integer_within_0_5pt_of_stock_dynamic"], bool)
    if task == "sst2":  # classification: every artifact's difference from stock dynamic, paired per sentence
        trim = next(s for s in entry["tfcompress"]["report"]["stages"] if s["name"] == "trim")
        assert trim["vocab_size"]["after"] < trim["vocab_size"]["before"]  # our artifacts read renumbered ids
        for name in ("tfcompress dynamic", "tfcompress int8"):  # re-run here with each artifact's own tokenizer
            paired = rows[name]["paired_vs_stock_dynamic"]
            assert paired["examples"] == 32 and paired["ci95_pt"][0] <= paired["delta_pt"] <= paired["ci95_pt"][1]
            assert paired["delta_pt"] == pytest.approx(rows[name]["delta_vs_stock_dynamic_pt"]), name


def test_paired_difference_counts_discordant_examples_and_brackets_the_difference():
    import numpy as np

    module = _module("stock_vs_tfcompress")
    base = np.array([True] * 80 + [False] * 20)
    ours = base.copy()
    ours[:3] = False  # three the stock artifact got right and we did not
    ours[80:88] = True  # eight the other way
    result = module.paired_difference(ours, base, resamples=500)
    assert (result["only_this"], result["only_base"], result["examples"]) == (8, 3, 100)
    assert result["delta_pt"] == pytest.approx(5.0)
    low, high = result["ci95_pt"]
    assert low < 5.0 < high and high - low < 15.0
    same = module.paired_difference(base, base, resamples=100)
    assert same["ci95_pt"] == [0.0, 0.0] and same["only_this"] == same["only_base"] == 0
    with pytest.raises(ValueError, match="equal, non-empty"):
        module.paired_difference(ours[:10], base)


def test_artifact_inputs_feed_ours_the_exported_models_token_ids(tmp_path):
    """The stock artifacts read the starting model's ids, ours the ids of the model they were exported
    from (a trim stage renumbers the vocabulary); failed or missing artifacts are left out."""

    class Encodings:  # stands in for runner.Context: records whose tokenisation was asked for
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def encoded(self, split, length):
            return (self.tokenizer, split, length)

    stock_dir, out = tmp_path / "stock", tmp_path / "out"
    out.mkdir()
    (out / "int8.tflite").write_bytes(b"")
    stock = {"artifacts": {"stock-dynamic": {"seq_length": 64}, "stock-int8": {"error": "ConverterError"}}}
    report = {"artifacts": [{"name": "int8", "path": "int8.tflite", "seq_length": 44},
                            {"name": "fp16", "path": "fp16.tflite", "seq_length": 44}]}
    inputs = _module("stock_vs_tfcompress")._artifact_inputs(Encodings("start"), Encodings("exported"), stock_dir,
                                                             stock, out, report)
    assert inputs == {"stock-dynamic": (stock_dir / "stock-dynamic.tflite", ("start", "test", 64), 64),
                      "tfcompress int8": (out / "int8.tflite", ("exported", "test", 44), 44)}


def test_finetune_sweep_smoke_runs_each_point_through_the_recipe(tmp_path, results_md_untouched):
    argv = ["--smoke", "--learning-rates", "1e-3", "1e-4", "--seeds", "3", "--epochs", "1",
            "--output-dir", str(tmp_path / "sweep"), "--results-dir", str(tmp_path)]
    result = _run("finetune_sweep", argv)
    points = result["points"]
    assert [(p["learning_rate"], p["seed"]) for p in points] == [(1e-3, 3), (1e-4, 3)]
    for point in points:
        report = json.loads((Path(point["output_dir"]) / "report.json").read_text())
        assert [s["name"] for s in report["stages"]] == ["finetune"]
        assert point["test"] == report["stages"][0]["metrics"]["accuracy"]
        assert 0.0 <= point["test"] <= 1.0 and _positive(point["seconds"])
    # a rerun finds every point finished (the recipe's stage manifests) and re-reads the same numbers
    again = _run("finetune_sweep", argv)
    assert [p["test"] for p in again["points"]] == [p["test"] for p in points]
    assert [p["seconds"] for p in again["points"]] == [p["seconds"] for p in points]


def test_finetune_sweep_summary_groups_seeds():
    summarise = _module("finetune_sweep").summarise
    points = [{"learning_rate": 5e-5, "epochs": 2, "test": t} for t in (0.90, 0.92)]
    points.append({"learning_rate": 1e-4, "epochs": 2, "test": 0.89})
    rows = summarise(points)
    assert [(r["learning_rate"], r["seeds"]) for r in rows] == [(5e-5, 2), (1e-4, 1)]
    assert rows[0]["test_mean"] == pytest.approx(0.91) and rows[0]["test_std"] == pytest.approx(0.01414, abs=1e-4)
    assert rows[1]["test_std"] is None and rows[1]["test_min"] == rows[1]["test_max"] == 0.89


def test_stock_path_is_seeded_whatever_ran_before_it(tmp_path, monkeypatch):
    """The stock model's training must not depend on the random numbers earlier stages drew.

    With identical stock settings the SST-2 comparison scored stock dynamic 0.8945 in two runs and
    0.8865 in a third that reused every tfcompress stage: the stock model's seed was whatever the
    stages that ran before it in the process had left.
    """
    import random

    import numpy as np

    from tfcompress.pipeline import runner
    from tfcompress._compat import tf

    module = _module("stock_vs_tfcompress")
    monkeypatch.setattr(module, "STOCK_ARTIFACTS", ())  # the training is the point, not the converter
    # batches of 8 of the 64 smoke sentences: the shuffled order reaches the loss
    args = module.parse_args(["--smoke", "--tasks", "sst2", "--set", "train.batch_size=8"])
    data_dir = module.smoke_data_dir(tmp_path, "sst2", args.max_train_samples, args.max_test_samples)
    model_dir = module.smoke_model_dir(tmp_path, "sequence", num_labels=2)
    config = module.recipe_config("sst2", args, tmp_path / "run", model_dir, data_dir)
    losses = []
    for earlier in (1, 7):  # the generators as two different earlier stages could leave them
        random.seed(earlier), np.random.seed(earlier), tf.random.set_seed(earlier)
        folder = tmp_path / f"stock-{earlier}"
        folder.mkdir()
        result = module.stock_path(runner.Context(config), 64, 1, folder)
        losses.append(result["training"]["loss_per_epoch"])
        assert result["training"]["seed"] == config.train.seed
    assert losses[0] == losses[1]


def test_a_killed_stock_fit_resumes_from_keras_backup(tmp_path, monkeypatch):
    """The stock fit (an hour per seed on SST-2) continues where a killed process left it, with the
    field's own ``BackupAndRestore``, and says so; the kept record is reused by the next run."""
    from tfcompress.pipeline import runner

    module = _module("stock_vs_tfcompress")
    monkeypatch.setattr(module, "STOCK_ARTIFACTS", ())
    args = module.parse_args(["--smoke", "--tasks", "sst2", "--set", "train.batch_size=8",
                              "--set", "train.checkpoint_every=2"])
    data_dir = module.smoke_data_dir(tmp_path, "sst2", args.max_train_samples, args.max_test_samples)
    model_dir = module.smoke_model_dir(tmp_path, "sequence", num_labels=2)
    config = module.recipe_config("sst2", args, tmp_path / "run", model_dir, data_dir)
    timer = module._FitTimer

    class Killed(timer):  # the process dies during the fit's fifth step
        def on_train_batch_end(self, batch, logs=None):
            super().on_train_batch_end(batch, logs)
            if len(self.times) == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(module, "_FitTimer", Killed)
    folder = tmp_path / "stock"
    with pytest.raises(KeyboardInterrupt):
        module.kept_stock_path(runner.Context(config), 64, 1, folder)
    assert (folder / "fit-backup").is_dir() and not (folder / "stock.json").exists()
    monkeypatch.setattr(module, "_FitTimer", timer)
    stock = module.kept_stock_path(runner.Context(config), 64, 1, folder)
    training = stock["training"]
    assert training["resumed"] and training["steps"] == 8 - 4  # 64 sentences / 8: the steps after the backup at 4
    assert not (folder / "fit-backup").exists() and (folder / "stock-keras").is_dir()
    stamp = (folder / "stock.json").stat().st_mtime_ns
    assert module.kept_stock_path(runner.Context(config), 64, 1, folder) == json.loads((folder / "stock.json").read_text())["stock"]
    assert (folder / "stock.json").stat().st_mtime_ns == stamp
    module.kept_stock_path(runner.Context(config), 64, 2, folder)  # other settings: trained again
    assert json.loads((folder / "stock.json").read_text())["stock"]["training"]["epochs"] == 2


def test_multiworker_throughput_smoke_runs_one_and_two_workers_and_counts_the_gradient_bytes(
        tmp_path, results_md_untouched):
    """Both configurations are launched (2 processes really form a 2-worker cluster), every worker
    trains warmup + steps steps, and the all-reduce volume is the trainable variables' bytes."""
    from tfcompress.models import loading

    result = _run("multiworker_throughput", ["--smoke", "--results-dir", str(tmp_path), "--work-dir", str(tmp_path)])
    settings = result["settings"]
    per_worker = settings["warmup"] + settings["steps"]
    one, two = result["configurations"]["1"], result["configurations"]["2"]
    assert one["workers"] == [1] and one["replicas_in_sync"] == [1] and one["steps_per_worker"] == [per_worker]
    assert two["workers"] == [2, 2] and two["replicas_in_sync"] == [2, 2] and two["steps_per_worker"] == [per_worker] * 2
    assert one["timed_steps"] == two["timed_steps"] == settings["steps"] * settings["rounds"]
    assert two["other_workers_step_seconds"]["n"] == settings["steps"] * settings["rounds"]
    assert two["per_worker_batch"] * 2 == one["per_worker_batch"] == settings["batch_size"]
    assert _positive(one["samples_per_second"]) and _positive(two["samples_per_second"])
    assert result["ratio_2_to_1"] == pytest.approx(two["samples_per_second"] / one["samples_per_second"])
    model = loading.load_model(settings["model"], labels=["negative", "positive"])
    assert result["gradient"]["bytes"] == sum(v.numpy().nbytes for v in model.trainable_variables)
    assert result["gradient"]["variables"] == len(model.trainable_variables)
    rows = {(r["gbit_per_second"], r["hosts"]): r for r in result["projection"]["rows"]}
    assert set(rows) == {(b, n) for b in (1.0, 10.0, 25.0) for n in (2, 4, 8, 16)}
    row = rows[(1.0, 4)]  # ring all-reduce: 2 (N - 1) / N of the bytes per host at 1 Gbit/s
    assert row["allreduce_seconds"] == pytest.approx(1.5 * result["gradient"]["bytes"] * 8 / 1e9)
    assert row["speedup"] == pytest.approx(4 * result["compute_step_seconds"] / row["step_seconds"])


def test_teacher_labelling_smoke_times_both_policies_on_the_same_weights(tmp_path, results_md_untouched):
    result = _run("teacher_labelling", ["--smoke", "--results-dir", str(tmp_path)])
    assert set(result["texts_per_second"]) == {"float32", "mixed_bfloat16"}
    assert all(_positive(v) for v in result["texts_per_second"].values()) and _positive(result["speedup"])
    assert all(len(times) == 2 for times in result["round_seconds"].values())
    # bfloat16 did run (the logits moved), on the same weights (they moved by rounding, not by another head)
    assert 0 < result["logit_abs_diff"]["max"] and result["logit_abs_diff"]["mean"] < 0.1 * result["logit_scale"]


def test_compare_ner_pairs_sentences_and_reads_each_model_as_it_was_trained(tmp_path, results_md_untouched,
                                                                            tiny_tokenizer):
    import numpy as np

    from conftest import CONLL_TEXT, build_tiny_model
    from tfcompress.data import readers
    from tfcompress.models.loading import save_model

    train = tmp_path / "train.txt"
    train.write_text(CONLL_TEXT.replace("john", "John"))
    tags = readers.read_conll(train).label_names
    plain, cased = tmp_path / "plain", tmp_path / "cased"
    save_model(build_tiny_model("token", num_labels=len(tags)), tiny_tokenizer, plain)
    model = build_tiny_model("token", num_labels=len(tags))
    model.config.case_segments = True
    save_model(model, tiny_tokenizer, cased)
    argv = ["--models", f"{plain},{cased},{plain}", "--file", str(train), "--train-file", str(train),
            "--results-dir", str(tmp_path / "results")]
    result = _run("compare_ner", argv)
    rows = [result["models"][str(plain)], result["models"][str(cased)]]
    assert [row["case_segments"] for row in rows] == [False, True]
    assert all(0.0 <= row["f1"] <= 1.0 and row["sentences"] == 3 for row in rows)
    assert rows[1]["vs_first"]["delta_pt"] == pytest.approx((rows[1]["f1"] - rows[0]["f1"]) * 100.0)
    module = _module("compare_ner")
    base = np.array([[1, 1, 1], [0, 1, 1], [2, 2, 2]])  # per sentence: hits, predicted, gold
    better = np.array([[1, 1, 1], [1, 1, 1], [2, 2, 2]])
    assert module.f1(base) == pytest.approx(2 * 3 / (4 + 4)) and module.f1(better) == 1.0
    paired = module.paired_f1_difference(better, base, resamples=200)
    assert paired["delta_pt"] == pytest.approx(25.0) and paired["ci95_pt"][0] >= 0.0
    assert module.paired_f1_difference(base, base, resamples=50)["ci95_pt"] == [0.0, 0.0]
