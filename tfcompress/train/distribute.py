"""Training on several processes or machines with ``tf.distribute`` (MultiWorkerMirroredStrategy).

A process becomes one worker of a cluster when ``TF_CONFIG`` names the cluster and its own task (what
Kubeflow's TFJob, Vertex AI and ``tfcompress launch`` set)::

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}'

Without it (or with a one-task cluster) everything stays on the default strategy. What this module
decides, so that N workers give the result of one process on the same global batch:

* :func:`strategy_from_environment` makes the ``MultiWorkerMirroredStrategy``. It must run before any
  other TensorFlow op in the process (TensorFlow fixes the collective-ops configuration then).
* :func:`distribute_batches`: the Trainer's batch order (global batches, a pure function of seed and
  epoch) is cut into one contiguous slice per replica; each worker builds only its replicas' slices
  (``distribute_datasets_from_function``, sharded by ``input_pipeline_id``), so every example is read
  once per step, by one worker.
* :func:`weight_of_replica`: each replica's mean loss is weighted by its share of the global number
  of labelled examples (token tasks: labelled tokens; a Distiller adds its examples without a hard
  label), summed over workers by the strategy's all-reduce, so the gradient is that of the global mean.
* Only the chief (``chief`` task, else ``worker`` 0) writes the run folder; the others write what the
  Trainer saves (checkpoints TensorFlow needs every worker to write, TensorBoard, metrics) to a local
  folder of their own (:func:`worker_dir`), kept across reruns for resume and deleted when training
  ends. No shared file system is assumed.
* :func:`sum_over_workers`, :func:`gather_examples`: numpy arrays summed over the workers by the
  strategy's all-reduce, for work shared out among them (the teacher-logits cache,
  :mod:`tfcompress.compress.teacher_logits`; the predictions of evaluation during training).

The strategy, the all-reduce and the checkpoints are TensorFlow's; nothing here moves tensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tfcompress._compat import tf
from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.errors import TfcompressError
from tfcompress.utils import get_logger

log = get_logger("train")

WORKER_DIR_PREFIX = "tfcompress-worker-"
# A peer that died leaves the others waiting in an all-reduce; after this many seconds TensorFlow's
# collective times out and raises instead of hanging (tf.distribute CommunicationOptions).
COLLECTIVE_TIMEOUT_SECONDS = 60


class WorkerLost(TfcompressError):
    """Another worker of the cluster stopped (killed, crashed, unreachable) during training."""

    def __init__(self, stage: str, step: int, checkpoint: str | None, error: Exception):
        first_line = str(getattr(error, "message", error)).strip().splitlines()[0][:300]
        resume = (f"rerun the same command on every worker to resume from {checkpoint}" if checkpoint else
                  "rerun the same command on every worker")
        super().__init__(f"a worker of the cluster stopped during {stage} at step {step} "
                         f"({type(error).__name__}: {first_line}); {resume}")


# what TensorFlow's collectives raise when a peer is gone or silent past the timeout; a closed gRPC
# socket can also come back as another OpError naming the remote task
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
               tf.errors.AbortedError)


def is_peer_failure(error: Exception) -> bool:
    """Whether a TensorFlow error says another worker is gone (not a bug of this process)."""
    if isinstance(error, PEER_ERRORS):
        return True
    return isinstance(error, tf.errors.OpError) and ("GRPC" in str(error) or "unhealthy" in str(error))


def cluster_from_environment() -> dict | None:
    """``TF_CONFIG``'s ``{"cluster": ..., "task": ...}`` when it names a cluster of two or more tasks,
    else None (a single process)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not JSON ({error}): {raw[:200]!r}") from None
    cluster = spec.get("cluster") or {}
    tasks = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    if tasks < 2:
        return None
    task = spec.get("task") or {}
    if task.get("type") not in ("chief", "worker") or not isinstance(task.get("index"), int):
        raise ValueError(f"TF_CONFIG names a cluster of {tasks} tasks but its task is {task!r}: set "
                         '"task": {"type": "worker", "index": N} (N of this process) on every worker')
    return spec


def strategy_from_environment(timeout_seconds: int = COLLECTIVE_TIMEOUT_SECONDS):
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster, else the default strategy.

    Call it first in the process, before any TensorFlow op runs (model building included)."""
    if cluster_from_environment() is None:
        return tf.distribute.get_strategy()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    log.info("multi-worker training: %s %d of %d workers, %d replicas in sync", *task_of(strategy),
             num_workers(strategy), strategy.num_replicas_in_sync)
    return strategy


def task_of(strategy) -> tuple[str | None, int]:
    """``(task_type, task_id)`` of this process; ``(None, 0)`` outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def num_workers(strategy) -> int:
    """Processes taking part in training (1 outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(kind, [])) for kind in ("chief", "worker"))


def worker_rank(strategy) -> int:
    """This process's place among the workers, ``0 .. num_workers - 1`` (the chief's is 0); 0 outside a
    cluster."""
    task_type, task_id = task_of(strategy)
    if task_type in (None, "chief"):
        return 0
    return task_id + (1 if strategy.cluster_resolver.cluster_spec().as_dict().get("chief") else 0)


def sum_over_workers(strategy, arrays: list, timeout_seconds: float | None = None) -> list:
    """The element-wise sums over all workers of each worker's ``arrays`` (numpy), computed by the
    strategy's collective all-reduce in one batch: every worker gets the same sums. Each worker adds
    its arrays once, whatever its number of local replicas; a NaN anywhere stays NaN in the sum.
    ``timeout_seconds`` replaces the collectives' usual timeout for this call (a worker that arrives
    early waits that long for the others). Call it on every worker, in the same order, in
    cross-replica context."""
    per_worker = max(1, strategy.num_replicas_in_sync // num_workers(strategy))

    def value_fn(context):
        first = context.replica_id_in_sync_group % per_worker == 0
        return [tf.constant(array if first else np.zeros_like(array)) for array in arrays]

    values = strategy.experimental_distribute_values_from_function(value_fn)
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=None if timeout_seconds is None else float(timeout_seconds))
    sums = strategy.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, [(value, value) for value in values],
                                             options=options)
    return [np.asarray(strategy.experimental_local_results(total)[0].numpy()) for total in sums]


def shard_timeout(seconds: float) -> float:
    """How long a worker that did its share of some work in ``seconds`` waits for the others' shares:
    the collectives' usual timeout plus twice its own time."""
    return COLLECTIVE_TIMEOUT_SECONDS + 2 * seconds


def gather_examples(strategy, values: list, examples, sizes, seconds: float = 0.0) -> list:
    """Per-example 1-D arrays that each worker computed for its ``examples`` (``values[i]`` of length
    ``sizes[examples[i]]``), for every example in order on every worker: one all-reduce SUM of
    zero-filled float32 arrays (exact for integers below 2 ** 24). ``seconds``: this worker's time on
    its share (:func:`shard_timeout`)."""
    starts = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
    flat = np.zeros(int(starts[-1]), np.float32)
    for value, example in zip(values, examples):
        flat[starts[example]:starts[example + 1]] = np.asarray(value, np.float32).reshape(-1)
    [total] = sum_over_workers(strategy, [flat], timeout_seconds=shard_timeout(seconds))
    return [total[starts[i]:starts[i + 1]] for i in range(len(starts) - 1)]


def is_chief(strategy=None) -> bool:
    """True for the process that owns the run folder: a ``chief`` task, else ``worker`` 0, and any
    process outside a cluster. Without ``strategy``, read from ``TF_CONFIG``."""
    if strategy is None:
        spec = cluster_from_environment()
        if spec is None:
            return True
        task_type, task_id = spec["task"]["type"], spec["task"]["index"]
        has_chief = bool(spec["cluster"].get("chief"))
    else:
        task_type, task_id = task_of(strategy)
        if task_type is None:
            return True
        has_chief = bool(strategy.cluster_resolver.cluster_spec().as_dict().get("chief"))
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def worker_dir(output_dir, strategy=None) -> Path:
    """Where this process writes what it would write to ``output_dir``: ``output_dir`` itself on the
    chief; on another worker a folder of its own under the local temporary directory, named by task
    and by ``output_dir`` so that a rerun of the same command finds its checkpoints again."""
    output_dir = Path(output_dir)
    if is_chief(strategy) or is_worker_dir(output_dir):
        return output_dir
    if strategy is None:
        spec = cluster_from_environment()
        task_type, task_id = spec["task"]["type"], spec["task"]["index"]
    else:
        task_type, task_id = task_of(strategy)
    digest = hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"{WORKER_DIR_PREFIX}{task_type}{task_id}-{digest}" / output_dir.name


def is_worker_dir(path) -> bool:
    """Whether ``path`` lies in a non-chief worker's folder made by :func:`worker_dir`."""
    return any(part.startswith(WORKER_DIR_PREFIX) for part in Path(path).resolve().parts)


def remove_worker_dir(path) -> None:
    """Delete a non-chief worker's folder (the one :func:`worker_dir` named ``path`` in)."""
    path = Path(path).resolve()
    for folder in [path, *path.parents]:
        if folder.name.startswith(WORKER_DIR_PREFIX):
            shutil.rmtree(folder, ignore_errors=True)
            return


def replica_slices(order, num_replicas: int, first: int, count: int) -> list:
    """Cut each global batch of ``order`` (lists of example indices) into ``num_replicas`` contiguous
    slices (sizes differ by at most one) and keep replicas ``first .. first + count - 1``, in order."""
    kept = []
    for indices in order:
        if len(indices) < num_replicas:
            raise ValueError(f"a batch of {len(indices)} examples cannot feed {num_replicas} replicas: use a "
                             "batch size (and data set) of at least one example per replica")
        kept.extend(list(part) for part in np.array_split(np.asarray(indices), num_replicas)[first:first + count])
    return kept


def distribute_batches(strategy, order, make_dataset):
    """The distributed dataset of the global batches ``order`` for ``strategy``.

    ``make_dataset(batches)`` builds a ``tf.data.Dataset`` yielding one padded batch per list of indices.
    With more than one replica, each input pipeline (one per worker) yields its replicas' slices of
    every global batch in turn; ``distribute_datasets_from_function`` hands consecutive elements to the
    pipeline's replicas, so replica ``r`` gets slice ``r`` of each global batch on every worker."""
    if strategy.num_replicas_in_sync == 1:
        return make_dataset(order)
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(input_context):
        local = replicas // input_context.num_input_pipelines
        first = input_context.input_pipeline_id * local
        return make_dataset(replica_slices(order, replicas, first, local))

    return strategy.distribute_datasets_from_function(dataset_fn)


def labelled_count(labels):
    """Examples (sequence labels ``[B]``) or labelled positions (token labels ``[B, T]``) of a batch."""
    return tf.reduce_sum(tf.cast(tf.not_equal(tf.cast(labels, tf.int32), IGNORE_INDEX), tf.float32))


def weight_of_replica(labels, count=None):
    """Inside ``strategy.run``: this replica's share of the global labelled count (all replicas,
    all workers), so that ``sum over replicas of weight * replica mean loss`` is the global mean.

    ``count``: what this replica's loss averages over, when that is more than its labelled positions
    (a distillation loss also learns from unlabelled examples: weighted by their labels alone, a batch
    of them would get weight 0 and teach nothing)."""
    count = labelled_count(labels) if count is None else tf.cast(count, tf.float32)
    total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)
    return tf.stop_gradient(count / tf.maximum(total, 1.0))
