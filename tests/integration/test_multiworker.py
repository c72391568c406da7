"""Two worker processes on 127.0.0.1 (``tfcompress launch``, TF_CONFIG, MultiWorkerMirroredStrategy)
against one process on the same global batch, dropout off.

The token-classification run is the strict case: each worker reads half of every batch and the two
halves hold different numbers of labelled tokens, so only a loss normalised by the global token count
gives the single-process gradient.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import CONLL_TEXT, SST_ROWS, build_tiny_model, seeded_weights

ROOT = Path(__file__).resolve().parents[2]
RELATIVE_TOLERANCE = 1e-5  # max |multi - single| / max(max |single|, FLOOR) per saved weight array
# the attention key biases get no gradient (softmax ignores a shift) and stay ~1e-10: measured against
# this scale instead of their own
FLOOR = 1e-3
# pruning with a teacher, 3 Adam steps: the pooler bias (max 0.013) ends 3e-7 apart, the float32 order of
# the all-reduce's sums magnified by Adam's normalisation of small gradients (observed 2.4e-5 relative)
PRUNE_RELATIVE_TOLERANCE = 1e-4
STEPS = 3


def _saved_weights(model_dir: Path) -> dict[str, np.ndarray]:
    import h5py

    weights = {}

    def keep(name, item):
        if hasattr(item, "shape"):  # a dataset; its path holds the model object's name (tf_bert_..._1): drop it
            weights["/".join(part for part in name.split("/") if not part.startswith("tf_"))] = item[()]

    with h5py.File(model_dir / "tf_model.h5", "r") as handle:
        handle.visititems(keep)
    return weights


def _max_relative_difference(single: dict, multi: dict) -> float:
    assert single.keys() == multi.keys()
    return max(float(np.max(np.abs(single[k] - multi[k])) / max(float(np.max(np.abs(single[k]))), FLOOR))
               for k in single)


def _worker_dirs(output_dir: Path) -> list[Path]:
    digest = hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:12]
    return list(Path(tempfile.gettempdir()).glob(f"tfcompress-worker-*-{digest}"))


def _relative_files(folder: Path) -> set[str]:
    # event files are named by host, time and pid: compare their folders only
    return {str(p.parent.relative_to(folder)) if "tfevents" in p.name else str(p.relative_to(folder))
            for p in folder.rglob("*") if p.is_file()}


def _in_process(arguments: list[str], output_dir: Path) -> None:
    """A stage command in this process: one process, no TF_CONFIG (saves TensorFlow's start-up)."""
    from tfcompress.cli import commands as cli

    saved_argv = list(sys.argv)  # the CLI's run sets sys.argv for the recipe
    try:
        assert cli.main([*arguments, "--output-dir", str(output_dir)]) == 0
    finally:
        sys.argv = saved_argv


def _worker_env() -> dict:
    """The environment of launched workers: this checkout's code, no TF_CONFIG of ours."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    return env


def _launch(arguments: list[str], envs: list[dict]) -> list[str]:
    """``tfcompress ARGUMENTS`` run by len(envs) launched workers (as ``tfcompress launch`` starts them),
    worker i with ``envs[i]`` added to its environment; returns each worker's stderr (its log)."""
    import subprocess

    from tfcompress.cli import launch

    argv = launch.worker_command(["tfcompress", *arguments])
    workers = [subprocess.Popen(argv, env={**_worker_env(), **env, "TF_CONFIG": config}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
               for config, env in zip(launch.tf_configs(launch.free_ports(len(envs))), envs)]
    try:
        logs = [worker.communicate(timeout=300)[1] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, log in zip(workers, logs):
        assert worker.returncode == 0, log[-3000:]
    return logs


def _chain(tmp_path, tiny_tokenizer, stage: str, task: str, extra: list[str]):
    """The same stage command run by one process (in this one) and by 2 launched workers; returns the
    run folders and the workers' logs."""
    from tfcompress.models.loading import save_model

    section = {"finetune": "train", "prune": "prune_train"}[stage]
    model_dir = tmp_path / "tiny-model"
    labels = 7 if task == "token" else 2  # the tags of CONLL_TEXT: the saved head is kept
    save_model(seeded_weights(build_tiny_model(task, num_labels=labels), seed=1), tiny_tokenizer, model_dir)
    if task == "token":
        train = tmp_path / "train.txt"
        train.write_text(CONLL_TEXT)
    else:
        train = tmp_path / "train.csv"
        train.write_text("sentence,label\n" + "".join(f"{s},{l}\n" for s, l in SST_ROWS))
    arguments = [stage, "--task", task, "--model", str(model_dir), "--train-file", str(train),
                 "--set", f"{section}.learning_rate=0.01", "--set", f"{section}.max_steps={STEPS}",
                 "--set", f"{section}.warmup_ratio=0", "--set", f"{section}.restore_best=false",
                 "--set", f"{section}.eval_every={STEPS}", *extra]
    single, multi = tmp_path / "single", tmp_path / "multi"
    _in_process(arguments, single)
    logs = _launch([*arguments, "--output-dir", str(multi)], [{}, {}])
    return single, multi, logs


@pytest.fixture(scope="module")
def token_runs(tmp_path_factory, tiny_tokenizer):
    # 3 sentences, batch 3: one global batch per step, cut into 2 + 1 sentences of unequal token counts
    return _chain(tmp_path_factory.mktemp("multiworker_token"), tiny_tokenizer, "finetune", "token",
                  ["--set", "train.batch_size=3"])


def test_two_workers_fine_tune_a_token_classifier_to_the_single_process_weights(token_runs):
    single, multi, _ = token_runs
    single_weights = _saved_weights(single / "finetune" / "model")
    start = _saved_weights(single.parent / "tiny-model")
    assert max(float(np.max(np.abs(single_weights[k] - start[k]))) for k in start) > 1e-3  # it trained
    difference = _max_relative_difference(single_weights, _saved_weights(multi / "finetune" / "model"))
    print(f"max relative difference, 2 workers vs 1 process: {difference:.2e}")
    assert difference < RELATIVE_TOLERANCE


def test_only_the_chief_writes_the_run_folder_and_no_worker_files_remain(token_runs):
    single, multi, _ = token_runs
    assert _relative_files(multi) == _relative_files(single)
    assert not _worker_dirs(multi)


def test_each_worker_predicts_its_share_of_the_evaluation_set_and_all_score_the_whole_set(token_runs):
    import re

    single, multi, logs = token_runs

    def evaluations(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "finetune" / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k.startswith("eval/")} for row in rows if "eval/f1" in row]

    assert evaluations(multi) == evaluations(single) != []
    shares = [re.findall(r"evaluation: (\d+) of (\d+) examples predicted by this worker \((\d) of 2\)", log)
              for log in logs]
    assert shares[0] and shares[1]
    assert {share[2] for share in shares[0]} == {"0"} and {share[2] for share in shares[1]} == {"1"}
    assert all(int(a[0]) + int(b[0]) == int(a[1]) == int(b[1]) for a, b in zip(shares[0], shares[1]))


def _zeros(weights: dict) -> dict[str, np.ndarray]:
    return {k: v == 0 for k, v in weights.items() if "kernel" in k and v.ndim == 2}


@pytest.mark.slow  # two more chains (2 to 3 minutes on 2 cores)
def test_two_workers_prune_with_a_teacher_to_the_single_process_masks_and_weights(tmp_path, tiny_tokenizer):
    single, multi, _ = _chain(tmp_path, tiny_tokenizer, "prune", "sequence",
                           ["--set", "prune_train.batch_size=4", "--prune-sparsity", "0.5", "--prune-distill-alpha", "0.5",
                            "--set", f"prune.end_step={STEPS}", "--set", "prune.frequency=1"])
    _assert_same_pruning(single, multi)


def _assert_same_pruning(single: Path, multi: Path) -> None:
    """Identical masks and sparsity, weights within PRUNE_RELATIVE_TOLERANCE, only the chief's files."""
    single_weights = _saved_weights(single / "prune" / "model")
    multi_weights = _saved_weights(multi / "prune" / "model")
    single_zeros, multi_zeros = _zeros(single_weights), _zeros(multi_weights)
    assert sum(int(z.sum()) for z in single_zeros.values()) > 0
    assert all(np.array_equal(single_zeros[k], multi_zeros[k]) for k in single_zeros)
    sparsity = [json.loads((run / "report.json").read_text())["stages"][0]["pruned_sparsity"] for run in (single, multi)]
    assert sparsity[0] == sparsity[1] >= 0.49
    difference = _max_relative_difference(single_weights, multi_weights)
    print(f"max relative difference, 2 workers vs 1 process: {difference:.2e}")
    assert difference < PRUNE_RELATIVE_TOLERANCE
    assert _relative_files(multi) == _relative_files(single) and not _worker_dirs(multi)


@pytest.mark.slow  # two more chains (about 2 minutes on 2 cores)
def test_two_workers_prune_a_token_classifier_to_the_single_process_masks_and_weights(tmp_path, tiny_tokenizer):
    # 3 sentences, batch 3: each worker's slice holds another number of labelled tokens
    single, multi, _ = _chain(tmp_path, tiny_tokenizer, "prune", "token",
                           ["--set", "prune_train.batch_size=3", "--prune-sparsity", "0.5",
                            "--set", f"prune.end_step={STEPS}", "--set", "prune.frequency=1"])
    _assert_same_pruning(single, multi)


@pytest.mark.slow  # a killed cluster, a timeout and a resumed rerun (2 to 4 minutes on 2 cores)
def test_a_killed_worker_stops_the_other_with_an_error_and_the_rerun_resumes_to_the_same_weights(
        tmp_path, tiny_tokenizer):
    import signal
    import subprocess
    import time

    from tfcompress.cli import launch
    from tfcompress.models.loading import save_model

    model_dir = tmp_path / "tiny-model"
    save_model(seeded_weights(build_tiny_model("sequence"), seed=1), tiny_tokenizer, model_dir)
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"{s},{l}\n" for s, l in SST_ROWS))
    steps = 24
    arguments = ["finetune", "--model", str(model_dir), "--train-file", str(train), "--set", "train.batch_size=4",
                 "--set", "train.learning_rate=0.01", "--set", f"train.max_steps={steps}", "--set",
                 "train.warmup_ratio=0", "--set", "train.checkpoint_every=4", "--set", f"train.eval_every={steps}",
                 "--set", "train.log_every=1",
                 "--set", "train.restore_best=false"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    _in_process(arguments, single)
    env = _worker_env()
    argv = launch.worker_command(["tfcompress", *arguments, "--output-dir", str(multi)])
    workers = [subprocess.Popen(argv, env={**env, "TF_CONFIG": config}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for config in launch.tf_configs(launch.free_ports(2))]
    try:
        deadline = time.time() + 600
        while not (multi / "finetune" / "checkpoints" / "ckpt-8.index").exists():
            assert time.time() < deadline and workers[0].poll() is None, "the cluster did not reach step 8"
            time.sleep(0.2)
        workers[1].send_signal(signal.SIGKILL)
        killed = time.time()
        _, chief_errors = workers[0].communicate(timeout=120)
        waited = time.time() - killed
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    print(f"the chief stopped {waited:.1f} s after the other worker was killed")
    assert workers[0].returncode != 0 and waited < 90
    assert "a worker of the cluster stopped during finetune" in chief_errors
    assert not (multi / "finetune" / "manifest.json").exists()

    assert launch.launch(["tfcompress", *arguments, "--output-dir", str(multi)], workers=2, env=env) == 0
    straight = tmp_path / "straight"  # 2 workers, never interrupted
    assert launch.launch(["tfcompress", *arguments, "--output-dir", str(straight)], workers=2, env=env) == 0
    resumed = _saved_weights(multi / "finetune" / "model")
    resume_difference = _max_relative_difference(_saved_weights(straight / "finetune" / "model"), resumed)
    difference = _max_relative_difference(_saved_weights(single / "finetune" / "model"), resumed)
    print(f"max relative difference, resumed vs uninterrupted 2 workers: {resume_difference:.2e}; "
          f"vs 1 process: {difference:.2e}")
    assert resume_difference < RELATIVE_TOLERANCE
    # 24 Adam steps at learning rate 0.01 carry the all-reduce's float32 summation order further than 3
    # (observed 1.1e-4 relative)
    assert difference < 1e-3
    rows = [json.loads(line) for line in (multi / "finetune" / "metrics.jsonl").read_text().splitlines()]
    # each step logged once: what the killed attempt logged past ckpt-8 was dropped by the rerun
    assert [row["step"] for row in rows if "train/loss" in row] == list(range(1, steps + 1))
    assert not _worker_dirs(multi)


def _distill_runs(tmp_path, monkeypatch, arguments: list[str], chief_partial_rows: int = 0):
    """A distill command with a teacher of another tokenizer, run in this process and by 2 launched
    workers with cache folders of their own. ``chief_partial_rows``: the chief's cache folder first
    holds the partial file an interrupted run leaves, with the single process's first rows. Returns the
    run folders and cache files' logits (single, 2 workers) and the other worker's cache folder."""
    from tfcompress.compress import teacher_logits

    single, multi = tmp_path / "single", tmp_path / "multi"
    monkeypatch.setenv("TFCOMPRESS_CACHE", str(tmp_path / "cache-single"))
    _in_process(arguments, single)
    [single_file] = (tmp_path / "cache-single" / "teacher-logits").glob("*.npz")
    fields, single_logits = teacher_logits.TeacherLogitCache._read(single_file)
    chief_cache, other_cache = tmp_path / "cache-0" / "teacher-logits", tmp_path / "cache-1"
    if chief_partial_rows:
        partial = np.full_like(single_logits, np.nan)
        partial[:chief_partial_rows] = single_logits[:chief_partial_rows]
        teacher_logits.TeacherLogitCache._write(chief_cache / single_file.name.replace(".npz", ".partial.npz"),
                                                fields, partial)
    _launch([*arguments, "--output-dir", str(multi)],
            [{"TFCOMPRESS_CACHE": str(cache)} for cache in (tmp_path / "cache-0", other_cache)])
    assert [p.name for p in chief_cache.iterdir()] == [single_file.name]  # no partial or temporary file left
    multi_fields, multi_logits = teacher_logits.TeacherLogitCache._read(chief_cache / single_file.name)
    assert multi_fields == fields
    assert _relative_files(multi) == _relative_files(single) and not _worker_dirs(multi)
    return single, multi, single_logits, multi_logits, other_cache


def _distill_record(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())["stages"][0]["teacher_logits"]


def _distill_arguments(student: Path, teacher: Path, train: Path, task: str) -> list[str]:
    return ["distill", "--task", task, "--model", str(student), "--train-file", str(train), "--distill-from",
            str(teacher), "--student-layers", "1", "--set", "distill_train.batch_size=4",
            "--set", "distill_train.max_steps=2", "--set", "distill_train.eval_every=2",
            "--set", "distill_train.restore_best=false"]


def test_two_workers_compute_half_of_the_cross_tokenizer_teacher_logits_each_and_the_chief_writes_the_cache(
        tmp_path, tiny_tokenizer, tiny_mpnet_dir, monkeypatch):
    from tfcompress.models.loading import save_model

    save_model(seeded_weights(build_tiny_model("sequence"), seed=1), tiny_tokenizer, tmp_path / "student")
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\n" + "".join(f"{s},{l}\n" for s, l in SST_ROWS))
    arguments = _distill_arguments(tmp_path / "student", tiny_mpnet_dir, train, "sequence")
    # the chief continues an interrupted run's partial file: 3 of the 12 texts done, 9 left for 2 workers
    _, multi, single_logits, multi_logits, other_cache = _distill_runs(tmp_path, monkeypatch, arguments,
                                                                       chief_partial_rows=3)
    np.testing.assert_allclose(multi_logits, single_logits, atol=1e-5)
    record = _distill_record(multi)
    assert record["shards"] == 2 and record["computed"] == 9 and record["texts_per_worker"] == [5, 4]
    assert not other_cache.exists()  # the other worker never touched a cache folder


@pytest.mark.slow  # two more 2-worker chains (about 3 minutes on 2 cores)
def test_two_workers_share_the_per_word_teacher_logits_of_a_token_task(tmp_path, tiny_tokenizer, monkeypatch):
    from conftest import _save_tiny_mpnet
    from tfcompress.data import readers
    from tfcompress.models.loading import save_model

    train = tmp_path / "train.txt"
    train.write_text(CONLL_TEXT)
    sentences = readers.read_conll(train)
    tags = sentences.label_names
    (tmp_path / "teacher").mkdir()
    teacher = _save_tiny_mpnet(tmp_path / "teacher", "token", len(tags), tags)
    save_model(seeded_weights(build_tiny_model("token", num_labels=len(tags)), seed=1), tiny_tokenizer,
               tmp_path / "student")
    arguments = _distill_arguments(tmp_path / "student", teacher, train, "token")
    _, multi, single_logits, multi_logits, other_cache = _distill_runs(tmp_path, monkeypatch, arguments)
    np.testing.assert_allclose(multi_logits, single_logits, atol=1e-5)
    record = _distill_record(multi)
    assert record["shards"] == 2 and record["words"] == sum(len(words) for words in sentences.words)
    assert record["texts_per_worker"] == [(len(sentences) + 1) // 2, len(sentences) // 2]
    assert not other_cache.exists()
    # a second run: the chief's file reaches the other worker, nobody computes
    again = tmp_path / "again"
    _launch([*arguments, "--output-dir", str(again)],
            [{"TFCOMPRESS_CACHE": str(cache)} for cache in (tmp_path / "cache-0", other_cache)])
    record = _distill_record(again)
    assert record["reused"] is True and record["shards"] == 2 and "texts_per_worker" not in record
    assert not other_cache.exists()
