"""Bad input ends in one clear line and exit code 2, before any training, with nothing half-written.

Each case runs ``tfcompress run custom_csv`` (in this process, for speed; one case in a real process
checks the exit code and that no traceback is printed) and checks the message names the file and
line, or the field, that is wrong.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SST_ROWS, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
GOOD = "text,label\n" + "".join(f"{s},{l}\n" for s, l in SST_ROWS)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_tokenizer):
    from tfcompress.models.loading import save_model

    folder = tmp_path_factory.mktemp("errors") / "tiny-model"
    save_model(build_tiny_model("sequence"), tiny_tokenizer, folder)
    return folder


def _run(tmp_path, capsys, monkeypatch, train: str | bytes, *extra, name="train.csv", test=None, model=None):
    from tfcompress.cli import commands as cli

    path = tmp_path / name
    path.write_bytes(train.encode() if isinstance(train, str) else train)
    argv = ["run", "custom_csv", "--smoke", "--model", str(model), "--train-file", str(path),
            "--output-dir", str(tmp_path / "out"), "--batch-size", "4", *extra]
    if test is not None:
        (tmp_path / "test.csv").write_text(test)
        argv += ["--test-file", str(tmp_path / "test.csv")]
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    error = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, error[-1] if error else ""


CASES = [
    ("empty_file", "", {}, ["train.csv:1", "empty"]),
    ("header_only", "text,label\n", {}, ["train.csv:2", "no examples"]),
    ("missing_column", "sentence,label\na good movie,1\n", {}, ["train.csv:1", "'text'", "--text-column"]),
    ("not_utf8", b"text,label\n\xff\xfe bad,1\n", {}, ["train.csv", "UTF-8"]),
    ("bad_jsonl", '{"text": "a good movie", "label": 1}\n{"text": \n', {"name": "train.jsonl"}, ["train.jsonl:2"]),
    ("unknown_extension", GOOD, {"name": "train.xlsx"}, ["train.xlsx", ".csv"]),
    ("empty_text", GOOD + ",1\n", {}, [f"train.csv:{len(SST_ROWS) + 2}", "empty text"]),
    ("one_class", "text,label\n" + "".join(f"{s},1\n" for s, _ in SST_ROWS), {}, ["train.csv", "single class '1'"]),
    ("test_label_not_in_training", "text,label\n" + "".join(f"{s},{2 * l}\n" for s, l in SST_ROWS),
     {"test": "text,label\na good movie,1\n"}, ["test.csv:2", "unknown label '1'", "training file"]),
]


@pytest.mark.parametrize("name, train, options, expected", CASES, ids=[case[0] for case in CASES])
def test_bad_data_exits_2_with_one_line_naming_the_place(name, train, options, expected, tiny_model, tmp_path,
                                                         capsys, monkeypatch):
    code, line = _run(tmp_path, capsys, monkeypatch, train, model=tiny_model, **options)
    assert code == 2
    assert line.startswith(("tfcompress: error:", "tfcompress run custom_csv: error:")), line
    for part in expected:
        assert part in line, (part, line)
    assert not (tmp_path / "out" / "finetune").exists()  # found before any training


def test_too_long_max_length_is_refused_before_training(tiny_model, tmp_path, capsys, monkeypatch):
    code, line = _run(tmp_path, capsys, monkeypatch, GOOD, "--max-length", "1000", model=tiny_model)
    assert code == 2 and "data.max_length=1000" in line and "512" in line


@pytest.mark.parametrize("field", ["data.document_context", "distill.teacher_document_context"])
def test_document_context_on_a_text_classification_run_is_refused(field, tiny_model, tmp_path, capsys, monkeypatch):
    code, line = _run(tmp_path, capsys, monkeypatch, GOOD, "--set", f"{field}=8", model=tiny_model)
    assert code == 2 and f"{field}=8" in line and "token tasks" in line
    assert not (tmp_path / "out" / "finetune").exists()


def test_a_model_folder_without_model_type_is_refused(tmp_path, capsys, monkeypatch, tiny_model):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "config.json").write_text("{}")
    code, line = _run(tmp_path, capsys, monkeypatch, GOOD, model=broken)
    assert code == 2 and "config.json" in line and "model_type" in line


def test_stages_out_of_order_are_refused(tiny_model, tmp_path, capsys, monkeypatch):
    code, line = _run(tmp_path, capsys, monkeypatch, GOOD, "--stages", "finetune,release,evaluate", model=tiny_model)
    assert code == 2 and "out of order" in line and "evaluate -> release" in line


def test_an_output_folder_that_cannot_be_written_is_refused(tiny_model, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, line = _run(tmp_path, capsys, monkeypatch, GOOD, "--output-dir", str(blocker / "run"), model=tiny_model)
    assert code == 2 and "--output-dir" in line and str(blocker / "run") in line


def test_bench_on_a_truncated_artifact_names_the_file(tmp_path, capsys):
    from tfcompress.cli import commands as cli

    artifact = tmp_path / "model.tflite"
    artifact.write_bytes(b"TFL3" + b"\0" * 60)
    assert cli.main(["bench", str(artifact), "--runs", "1", "--warmup", "0", "--threads", "1"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(artifact) in line and "tflite" in line


def test_a_real_process_prints_no_traceback_unless_debug(tiny_model, tmp_path):
    test = tmp_path / "test.csv"
    test.write_text("text,label\na good movie,maybe\n")
    train = tmp_path / "train.csv"
    train.write_text(GOOD)
    command = [sys.executable, "-m", "tfcompress.cli", "run", "custom_csv", "--smoke", "--model", str(tiny_model),
               "--train-file", str(train), "--test-file", str(test), "--output-dir", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{test}:2: unknown label 'maybe'" in done.stderr.strip().splitlines()[-1]
    debug = subprocess.run(command + ["--debug"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_a_second_run_into_a_busy_folder_is_refused_and_a_dead_runs_lock_is_not(tiny_model, tmp_path, capsys,
                                                                                 monkeypatch):
    """The lock is an flock: held while a run lives, gone when its process ends (even by SIGKILL)."""
    import os
    import signal

    from tfcompress.pipeline.runner import run_lock

    out = tmp_path / "out"
    out.mkdir()
    with run_lock(out):  # a live run holds the folder
        code, line = _run(tmp_path, capsys, monkeypatch, GOOD, "--stages", "finetune", model=tiny_model)
    assert code == 2 and "in use by another tfcompress run" in line and f"pid {os.getpid()}" in line
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
                               str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    with run_lock(out):  # the killed holder left nothing stuck
        pass
