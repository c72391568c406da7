"""Cluster facts from TF_CONFIG, the per-replica cut of the batch order, and the local launcher."""
from __future__ import annotations

import json
import sys

import pytest

from tfcompress.cli import launch
from tfcompress.train import distribute


def _tf_config(monkeypatch, cluster: dict, task_type: str, index: int) -> None:
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))


def test_no_tf_config_or_a_one_task_cluster_is_a_single_process(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.cluster_from_environment() is None and distribute.is_chief()
    _tf_config(monkeypatch, {"worker": ["127.0.0.1:1"]}, "worker", 0)
    assert distribute.cluster_from_environment() is None


def test_worker_zero_is_the_chief_unless_the_cluster_names_one(monkeypatch, tmp_path):
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    _tf_config(monkeypatch, workers, "worker", 0)
    assert distribute.is_chief() and distribute.worker_dir(tmp_path / "run") == tmp_path / "run"
    _tf_config(monkeypatch, workers, "worker", 1)
    assert not distribute.is_chief()
    private = distribute.worker_dir(tmp_path / "run")
    assert private.name == "run" and distribute.is_worker_dir(private) and not str(private).startswith(str(tmp_path))
    assert distribute.worker_dir(private) == private  # already a worker's folder: kept
    _tf_config(monkeypatch, {"chief": ["127.0.0.1:3"], **workers}, "worker", 0)
    assert not distribute.is_chief()


def test_a_cluster_without_this_process_task_is_refused(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}))
    with pytest.raises(ValueError, match="task"):
        distribute.cluster_from_environment()


def test_replica_slices_cut_each_global_batch_in_order_and_cover_it_once():
    order = [[5, 1, 7, 3, 0], [2, 4, 6, 8, 9]]
    first = distribute.replica_slices(order, 2, 0, 1)
    second = distribute.replica_slices(order, 2, 1, 1)
    assert first == [[5, 1, 7], [2, 4, 6]] and second == [[3, 0], [8, 9]]
    assert distribute.replica_slices(order, 2, 0, 2) == [[5, 1, 7], [3, 0], [2, 4, 6], [8, 9]]
    with pytest.raises(ValueError, match="one example per replica"):
        distribute.replica_slices([[1]], 2, 0, 1)


def test_launch_gives_each_worker_a_loopback_tf_config_and_its_own_index(tmp_path):
    script = ("import json, os, sys; spec = json.loads(os.environ['TF_CONFIG']); "
              f"open(sys.argv[1] + str(spec['task']['index']), 'w').write(os.environ['TF_CONFIG'])")
    assert launch.launch([sys.executable, "-c", script, str(tmp_path / "worker")], workers=3) == 0
    specs = [json.loads((tmp_path / f"worker{i}").read_text()) for i in range(3)]
    addresses = specs[0]["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [s["task"] for s in specs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(s["cluster"] == specs[0]["cluster"] for s in specs)


def test_launch_fails_with_the_code_of_a_failing_worker(tmp_path):
    script = "import json, os, sys; sys.exit(3 if json.loads(os.environ['TF_CONFIG'])['task']['index'] == 1 else 0)"
    assert launch.launch([sys.executable, "-c", script], workers=2) == 3


def test_launch_runs_tfcompress_commands_with_this_python():
    assert launch.worker_command(["tfcompress", "run", "sst2"]) == [sys.executable, "-m", "tfcompress.cli", "run", "sst2"]
    assert launch.worker_command(["python", "recipes/sst2.py"]) == ["python", "recipes/sst2.py"]


def test_only_errors_that_name_a_lost_peer_become_a_worker_lost_error():
    from tfcompress._compat import tf

    assert distribute.is_peer_failure(tf.errors.UnavailableError(None, None, "tasks are unhealthy"))
    assert distribute.is_peer_failure(tf.errors.InvalidArgumentError(
        None, None, "Graph execution error: Additional GRPC error information from remote target /job:worker"))
    assert not distribute.is_peer_failure(tf.errors.InvalidArgumentError(None, None, "Incompatible shapes"))
    lost = distribute.WorkerLost("finetune", 9, "run/finetune/checkpoints/ckpt-8",
                                 tf.errors.UnavailableError(None, None, "task 1 stopped\nmore"))
    assert str(lost) == ("a worker of the cluster stopped during finetune at step 9 (UnavailableError: task 1 "
                         "stopped); rerun the same command on every worker to resume from run/finetune/checkpoints/ckpt-8")


def test_worker_rank_numbers_the_workers_from_the_chief(monkeypatch):
    from types import SimpleNamespace

    from tfcompress._compat import tf

    def rank(cluster, task_type, index):
        _tf_config(monkeypatch, cluster, task_type, index)
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return distribute.worker_rank(SimpleNamespace(cluster_resolver=resolver))

    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]}
    assert [rank(workers, "worker", i) for i in range(3)] == [0, 1, 2]
    with_chief = {"chief": ["127.0.0.1:4"], **workers}
    assert [rank(with_chief, "chief", 0)] + [rank(with_chief, "worker", i) for i in range(3)] == [0, 1, 2, 3]
    assert distribute.worker_rank(tf.distribute.get_strategy()) == 0


def test_sum_over_workers_of_one_process_is_its_own_arrays():
    import numpy as np

    from tfcompress._compat import tf

    arrays = [np.array([[1.5, np.nan], [0.0, -2.0]], np.float32), np.array([3.0], np.float32)]
    sums = distribute.sum_over_workers(tf.distribute.get_strategy(), arrays, timeout_seconds=5)
    assert all(np.array_equal(s, a, equal_nan=True) for s, a in zip(sums, arrays))


def test_gather_examples_of_one_process_puts_each_example_back_in_place():
    import numpy as np

    from tfcompress._compat import tf

    sizes = [2, 1, 3]  # per-example lengths (token predictions); examples 2 and 0 computed here
    gathered = distribute.gather_examples(tf.distribute.get_strategy(), [[4, 5, 6], [1, 2]], [2, 0], sizes)
    assert [g.tolist() for g in gathered] == [[1, 2], [0], [4, 5, 6]]
