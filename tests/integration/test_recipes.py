"""Recipes run for real, on a tiny model directory and tiny data files.

The SST-2 recipe runs its whole default chain (finetune, prune, export, evaluate, release) on a
12-sentence TSV; the CoNLL recipe takes the token task through export, evaluate and release.
Resume, kill and config-change behaviour is in test_pipeline.py; flags in test_cli.py.
"""
from __future__ import annotations

import json
import importlib
from pathlib import Path

import pytest

from conftest import CONLL_TEXT, SST_ROWS, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    from tfcompress.models.loading import save_model

    path = tmp_path / "tiny-model"
    save_model(build_tiny_model("sequence"), tiny_tokenizer, path)
    return path


def _run(args):
    """``python recipes/NAME.py ARGS``, in this process (saves TensorFlow's start-up per run)."""
    from tfcompress.cli.options import recipe_main

    recipe = _recipe(Path(args[0]).stem)
    return recipe_main(recipe["DEFAULTS"], recipe.get("FILES"), Path(args[0]).stem, recipe["__doc__"], argv=args[1:])


def test_sst2_recipe_smoke_runs_every_default_stage_and_releases(tmp_path, tiny_model_dir, capsys):
    data_dir = tmp_path / "sst2"
    data_dir.mkdir()
    rows = "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in SST_ROWS)
    for name in ("train.tsv", "validation.tsv", "test.tsv"):
        (data_dir / name).write_text(rows)
    out = tmp_path / "run"
    _run(["recipes/sst2.py", "--smoke", "--model", str(tiny_model_dir), "--data-dir", str(data_dir),
                 "--output-dir", str(out), "--batch-size", "4", "--export", "fp32,dynamic",
                 "--student-layers", "1", "--set", "train.learning_rate=0.003"])
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sst2" and report["metric"] == "accuracy"
    assert [s["name"] for s in report["stages"]] == ["finetune", "distill", "prune", "trim", "export", "evaluate",
                                                      "release"]
    finetune, distill = report["stages"][0], report["stages"][1]
    assert 0.0 <= finetune["metrics"]["accuracy"] <= 1.0
    assert distill["student_params"] < distill["teacher_params"] and distill["teacher_cache"]
    assert (out / "finetune" / "model" / "config.json").exists()
    assert json.loads((out / "distill" / "model" / "config.json").read_text())["num_hidden_layers"] == 1
    assert (out / "prune" / "model" / "tf_model.h5").exists()
    prune = report["stages"][2]  # the default prune stage learns from the student it prunes
    assert prune["distillation"]["alpha"] == 0.5 and prune["distillation"]["teacher"] == str(out / "distill" / "model")
    assert any("embeddings" in name for name in prune["pruned_layers"])  # and its word-embedding table
    assert (out / "trim" / "model" / "vocab.txt").exists()
    assert {a["name"] for a in report["artifacts"]} == {"fp32", "dynamic"}
    assert report["stages"][-1]["released"] and (out / "release" / "fp32" / "manifest.json").exists()
    assert (out / "report.md").exists() and (out / "tradeoff.png").exists()
    assert "released: " in capsys.readouterr().out


@pytest.fixture
def tiny_ner(tmp_path, tiny_vocab_dir):
    """(model directory, data directory): a tiny token classifier and CoNLL files for the recipe."""
    from tfcompress.models.loading import load_tokenizer, save_model

    model_dir = tmp_path / "tiny-ner"
    save_model(build_tiny_model("token", num_labels=9), load_tokenizer(str(tiny_vocab_dir)), model_dir)
    data_dir = tmp_path / "conll"
    data_dir.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (data_dir / name).write_text(CONLL_TEXT)
    return model_dir, data_dir


@pytest.mark.parametrize("context", [0, 3])
def test_conll_recipe_takes_the_token_task_to_a_released_artifact(tmp_path, tiny_ner, context):
    model_dir, data_dir = tiny_ner
    out = tmp_path / "run"
    _run(["recipes/conll2003.py", "--smoke", "--model", str(model_dir), "--data-dir", str(data_dir),
          "--output-dir", str(out), "--stages", "finetune,export,evaluate,release", "--export", "fp32",
          "--set", "train.learning_rate=0.003", "--set", f"data.document_context={context}"])
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "f1"
    assert {"f1", "precision", "recall"} <= set(report["stages"][0]["metrics"])
    fp32 = report["artifacts"][0]
    assert fp32["name"] == "fp32" and "f1" in fp32["metrics"] and fp32["agreement"] == 1.0
    assert (out / "release" / "fp32" / "labels.txt").read_text().split()[0] == "O"
    manifest = json.loads((out / "release" / "fp32" / "manifest.json").read_text())
    assert manifest.get("document_context", 0) == context == fp32.get("document_context", 0)  # what an app must feed


def test_case_segments_travel_from_training_to_the_released_manifest(tmp_path, tiny_ner, capsys):
    """data.case_segments: the models record it, the artifact and its release say so, MediaPipe metadata is
    refused (its preprocessor feeds segment 0), and a model trained with it is refused without it."""
    model_dir, data_dir = tiny_ner
    cased = CONLL_TEXT.replace("john", "John").replace("london", "London").replace("mary", "Mary")
    for name in ("train.txt", "dev.txt", "test.txt"):
        (data_dir / name).write_text(cased)
    out = tmp_path / "run"
    common = ["--smoke", "--data-dir", str(data_dir), "--set", "train.learning_rate=0.003"]
    _run(["recipes/conll2003.py", "--model", str(model_dir), "--output-dir", str(out), "--stages",
          "finetune,export,evaluate,release", "--export", "fp32", "--set", "data.case_segments=true", *common])
    assert json.loads((out / "finetune" / "model" / "config.json").read_text())["case_segments"] is True
    fp32 = json.loads((out / "report.json").read_text())["artifacts"][0]
    assert fp32["case_segments"] is True and fp32["agreement"] == 1.0  # scored on the case ids it was fed
    manifest = json.loads((out / "release" / "fp32" / "manifest.json").read_text())
    assert manifest["case_segments"] is True
    with pytest.raises(SystemExit) as exit_info:
        _run(["recipes/conll2003.py", "--model", str(out / "finetune" / "model"), "--output-dir",
              str(tmp_path / "without"), "--stages", "export", "--export", "fp32", *common])
    assert exit_info.value.code == 2 and "data.case_segments=false" in capsys.readouterr().err
    assert not (tmp_path / "without" / "export" / "fp32.tflite").exists()


def test_case_segments_are_refused_for_a_model_without_segment_ids(tmp_path, tiny_vocab_dir, capsys):
    from tfcompress.models.loading import load_tokenizer, save_model

    model_dir = tmp_path / "tiny-distilbert"
    save_model(build_tiny_model("token", model_type="distilbert", num_labels=9), load_tokenizer(str(tiny_vocab_dir)),
               model_dir)
    data_dir = tmp_path / "conll"
    data_dir.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (data_dir / name).write_text(CONLL_TEXT)
    with pytest.raises(SystemExit) as exit_info:
        _run(["recipes/conll2003.py", "--smoke", "--model", str(model_dir), "--data-dir", str(data_dir),
              "--output-dir", str(tmp_path / "run"), "--stages", "finetune", "--set", "data.case_segments=true"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "data.case_segments=true" in error and "segment ids" in error
    assert not (tmp_path / "run" / "finetune" / "model").exists()


def _recipe(name):
    """The packaged recipe module's namespace (what ``tfcompress run NAME`` and recipes/NAME.py run)."""
    return vars(importlib.import_module(f"tfcompress.recipes.{name}"))


@pytest.mark.parametrize("name", ["sst2", "conll2003", "custom_csv"])
def test_recipe_docstring_states_command_time_and_results(name):
    recipe = _recipe(name)
    doc = recipe["__doc__"]
    assert f"tfcompress run {name}" in doc and "--smoke" in doc
    assert "Expected time on 2 CPU cores" in doc and "Expected result" in doc
    assert len(doc.strip().split("\n")) <= 25  # a recipe's docstring is a card, not a run diary
    chain = ["finetune", "distill", "prune", "trim"] if name == "sst2" else ["finetune", "prune"]
    assert recipe["DEFAULTS"].stages == [*chain, "export", "evaluate", "release"]


def test_sst2_prunes_embeddings_by_default_and_the_flag_turns_it_off():
    import argparse

    from tfcompress.cli.options import add_recipe_arguments, config_from_args

    recipe = _recipe("sst2")
    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser, recipe["DEFAULTS"])
    default = config_from_args(parser.parse_args([]), recipe["DEFAULTS"], recipe["FILES"], "sst2")
    dense = config_from_args(parser.parse_args(["--no-prune-embeddings"]), recipe["DEFAULTS"], recipe["FILES"], "sst2")
    assert default.prune.prune_embeddings and not dense.prune.prune_embeddings
    assert recipe["DEFAULTS"].prune.prune_embeddings  # parsing did not change the recipe's defaults


def test_bad_override_exits_with_code_2_and_names_the_field(tmp_path, capsys):
    from tfcompress.cli.options import recipe_main

    recipe = _recipe("sst2")
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(recipe["DEFAULTS"], recipe["FILES"], "sst2", "", argv=["--data-dir", str(tmp_path),
                                                                           "--set", "train.nope=1"])
    assert exit_info.value.code == 2
    assert "train.nope" in capsys.readouterr().err


def test_custom_csv_recipe_needs_a_train_file(capsys):
    from tfcompress.cli.options import recipe_main

    recipe = _recipe("custom_csv")
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(recipe["DEFAULTS"], None, None, "", argv=["--smoke"])
    assert exit_info.value.code == 2
    assert "--train-file" in capsys.readouterr().err
