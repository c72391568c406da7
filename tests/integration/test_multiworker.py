"""Two worker processes on 127.0.0.1 (``tfcompress launch``, TF_CONFIG, MultiWorkerMirroredStrategy)
against one process on the same global batch, dropout off.

The token-classification run is the strict case: each worker reads half of every batch and the two
halves hold different numbers of labelled tokens, so only a loss normalised by the global token count
gives the single-process gradient.
"""
from __future__ import annotations

import hashlib
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


def _chain(tmp_path, tiny_tokenizer, stage: str, task: str, extra: list[str]):
    """The same stage command run by one process (in this one) and by 2 launched workers."""
    from tfcompress.cli import commands as cli
    from tfcompress.cli import launch
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
    saved_argv = list(sys.argv)
    try:
        assert cli.main([*arguments, "--output-dir", str(single)]) == 0
    finally:
        sys.argv = saved_argv
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TFCOMPRESS_DEBUG": "1"}
    env.pop("TF_CONFIG", None)
    code = launch.launch(["tfcompress", *arguments, "--output-dir", str(multi)], workers=2, env=env)
    assert code == 0
    return single, multi


@pytest.fixture(scope="module")
def token_runs(tmp_path_factory, tiny_tokenizer):
    # 3 sentences, batch 3: one global batch per step, cut into 2 + 1 sentences of unequal token counts
    return _chain(tmp_path_factory.mktemp("multiworker_token"), tiny_tokenizer, "finetune", "token",
                  ["--set", "train.batch_size=3"])


def test_two_workers_fine_tune_a_token_classifier_to_the_single_process_weights(token_runs):
    single, multi = token_runs
    single_weights = _saved_weights(single / "finetune" / "model")
    start = _saved_weights(single.parent / "tiny-model")
    assert max(float(np.max(np.abs(single_weights[k] - start[k]))) for k in start) > 1e-3  # it trained
    difference = _max_relative_difference(single_weights, _saved_weights(multi / "finetune" / "model"))
    print(f"max relative difference, 2 workers vs 1 process: {difference:.2e}")
    assert difference < RELATIVE_TOLERANCE


def test_only_the_chief_writes_the_run_folder_and_no_worker_files_remain(token_runs):
    single, multi = token_runs
    assert _relative_files(multi) == _relative_files(single)
    assert not _worker_dirs(multi)


def _zeros(weights: dict) -> dict[str, np.ndarray]:
    return {k: v == 0 for k, v in weights.items() if "kernel" in k and v.ndim == 2}


@pytest.mark.slow  # two more chains (2 to 3 minutes on 2 cores)
def test_two_workers_prune_with_a_teacher_to_the_single_process_masks_and_weights(tmp_path, tiny_tokenizer):
    import json

    single, multi = _chain(tmp_path, tiny_tokenizer, "prune", "sequence",
                           ["--set", "prune_train.batch_size=4", "--prune-sparsity", "0.5", "--prune-distill-alpha", "0.5",
                            "--set", f"prune.end_step={STEPS}", "--set", "prune.frequency=1"])
    single_weights = _saved_weights(single / "prune" / "model")
    multi_weights = _saved_weights(multi / "prune" / "model")
    single_zeros, multi_zeros = _zeros(single_weights), _zeros(multi_weights)
    assert sum(int(z.sum()) for z in single_zeros.values()) > 0
    assert all(np.array_equal(single_zeros[k], multi_zeros[k]) for k in single_zeros)
    sparsity = [json.loads((run / "report.json").read_text())["stages"][0]["pruned_sparsity"] for run in (single, multi)]
    assert sparsity[0] == sparsity[1] >= 0.49
    assert _max_relative_difference(single_weights, multi_weights) < PRUNE_RELATIVE_TOLERANCE
    assert _relative_files(multi) == _relative_files(single) and not _worker_dirs(multi)
