"""Recipes and CLI run for real, on a tiny model directory and tiny data files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONLL_TEXT, SST_ROWS, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_tokenizer):
    from tfcompress.models import save_model

    path = tmp_path / "tiny-model"
    save_model(build_tiny_model("sequence"), tiny_tokenizer, path)
    return path


def _run(args, timeout=600):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_sst2_recipe_smoke_runs_end_to_end_and_skips_finished_stage(tmp_path, tiny_model_dir):
    data_dir = tmp_path / "sst2"
    data_dir.mkdir()
    rows = "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in SST_ROWS)
    for name in ("train.tsv", "validation.tsv", "test.tsv"):
        (data_dir / name).write_text(rows)
    out = tmp_path / "run"
    args = ["recipes/sst2.py", "--smoke", "--model", str(tiny_model_dir), "--data-dir", str(data_dir),
            "--output-dir", str(out), "--set", "train.learning_rate=0.003"]
    _run(args)
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sst2" and report["metric"] == "accuracy"
    finetune = report["stages"][0]
    assert finetune["name"] == "finetune" and 0.0 <= finetune["metrics"]["accuracy"] <= 1.0
    assert (out / "finetune" / "model" / "config.json").exists()
    assert (out / "finetune" / "manifest.json").exists()
    again = _run(args)
    assert "done already" in again.stderr


def test_conll_recipe_smoke_reports_entity_f1(tmp_path, tiny_vocab_dir):
    from tfcompress.models import load_tokenizer, save_model

    model_dir = tmp_path / "tiny-ner"
    save_model(build_tiny_model("token", num_labels=9), load_tokenizer(str(tiny_vocab_dir)), model_dir)
    data_dir = tmp_path / "conll"
    data_dir.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (data_dir / name).write_text(CONLL_TEXT)
    out = tmp_path / "run"
    _run(["recipes/conll2003.py", "--smoke", "--model", str(model_dir), "--data-dir", str(data_dir),
          "--output-dir", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "f1"
    assert {"f1", "precision", "recall"} <= set(report["stages"][0]["metrics"])


def test_bad_override_exits_with_code_2_and_names_the_field(tmp_path):
    done = subprocess.run([sys.executable, "recipes/sst2.py", "--data-dir", str(tmp_path), "--set", "train.nope=1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2
    assert "train.nope" in done.stderr or "not found" in done.stderr


def test_env_command_prints_stack_versions():
    done = _run(["-m", "tfcompress.cli", "env", "--json"])
    info = json.loads(done.stdout)
    assert info["versions"]["tensorflow"].startswith("2.")
    assert info["tf_keras_is_tf_keras"] is True
