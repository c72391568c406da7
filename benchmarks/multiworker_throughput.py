#!/usr/bin/env python
"""Training throughput of the Trainer on 1 local worker against 2 local workers of a
``tf.distribute.MultiWorkerMirroredStrategy`` cluster on 127.0.0.1, same global batch; and, from the
measured step time and the all-reduce volume, the expected scaling on N hosts.

Each configuration is started with ``tfcompress launch``'s own functions (``TF_CONFIG`` per worker,
loopback ports free at launch); every worker runs this script with ``--worker-out`` and records its
step times. One worker is a plain process (a one-task cluster is no cluster: the default strategy).
Each worker trains ``--warmup + --steps`` steps of the same global batches (SST-2 training sentences
in a fixed random order, padded per batch up to ``--max-length``); samples/s are over the timed steps.
Configurations alternate for ``--rounds`` rounds (1, 2, 1, 2, ...) so machine load affects both alike.

On a 2-core machine the 2 workers share the same cores: no speed-up is expected; the ratio measures
the cost of the distributed path (collectives over gRPC on loopback, two TensorFlow runtimes).

Projection: one step on N hosts, each with the measured per-worker batch, costs the measured 1-worker
step time plus a ring all-reduce of the gradient (every trainable variable, the word embedding's
gradient dense: 2 (N - 1) / N x its bytes in and out of each host) at the stated bandwidth, without
overlap of communication and backprop and without per-message latency.

    python benchmarks/multiworker_throughput.py --steps 30 --warmup 5

Writes benchmarks/results/multiworker_throughput.json and appends to benchmarks/RESULTS.md
(``--smoke``: a tiny model and tiny data, ``multiworker_throughput-smoke.json``, RESULTS.md untouched).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import percentiles, smoke_data_dir, smoke_model_dir, write_results

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
WORKER_COUNTS = (1, 2)
DEFAULT_BANDWIDTHS_GBIT = (1.0, 10.0, 25.0)
DEFAULT_HOSTS = (2, 4, 8, 16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder with train.tsv (default: the SST-2 data folder)")
    parser.add_argument("--model", default=None, help="model name or folder (default: the packaged default model)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per worker and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (tracing, collective set-up)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (each of N workers reads 1/N)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the two configurations")
    parser.add_argument("--bandwidths", default=",".join(f"{b:g}" for b in DEFAULT_BANDWIDTHS_GBIT),
                        help="network bandwidths of the projection, Gbit/s, comma-separated")
    parser.add_argument("--hosts", default=",".join(str(n) for n in DEFAULT_HOSTS),
                        help="host counts of the projection, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny data, few steps (tests)")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--work-dir", default=None,
                        help="keep the workers' records (and the smoke model and data) here (default: a temporary folder)")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)  # set on the launched workers
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.batch_size, args.max_length, args.rounds = 3, 1, 4, 32, 1
    return args


# ------------------------------------------------------------------------------------------ worker
def gradient_bytes(model) -> dict:
    """What the all-reduce sums each step: every trainable variable's gradient, dense, in its dtype."""
    rows = [(v.name, int(v.shape.num_elements()) * v.dtype.size) for v in model.trainable_variables]
    embedding = sum(b for name, b in rows if "word_embeddings" in name)
    return {"bytes": sum(b for _, b in rows), "variables": len(rows),
            "parameters": sum(int(v.shape.num_elements()) for v in model.trainable_variables),
            "word_embedding_bytes": embedding}


def run_worker(args) -> None:
    """One worker of a configuration: train ``warmup + steps`` steps, write step times to --worker-out."""
    from tfcompress._compat import tf
    from tfcompress.train import distribute

    strategy = distribute.strategy_from_environment()  # first: before any TensorFlow op of the process

    from tfcompress.data import encoding, readers
    from tfcompress.models import loading
    from tfcompress.config.training import TrainConfig
    from tfcompress.train.trainer import Hook, Trainer

    class StepTimer(Hook):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, trainer, step):
            self._start = time.perf_counter()

        def on_step_end(self, trainer, step, logs):  # logs were read back: the step and its all-reduce ended
            self.times.append(time.perf_counter() - self._start)

    examples = readers.read_text_classification(Path(args.data_dir) / "train.tsv")
    n = args.batch_size * (args.steps + args.warmup)
    if len(examples) < n:
        raise SystemExit(f"{args.data_dir}/train.tsv has {len(examples)} sentences; {n} needed")
    order = np.random.default_rng(0).permutation(len(examples))[:n]
    subset = readers.TextClassificationExamples([examples.texts[i] for i in order], [examples.labels[i] for i in order],
                                                examples.label_names, "sst2 sample")
    encoded = encoding.encode(loading.load_tokenizer(args.model), subset, max_length=args.max_length)
    with strategy.scope():
        model = loading.load_model(args.model, labels=examples.label_names)
    timer = StepTimer()
    config = TrainConfig(max_steps=args.steps + args.warmup, batch_size=args.batch_size, learning_rate=5e-5,
                         warmup_ratio=0.0, log_every=10**6, checkpoint_every=10**6, histograms=False)
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(model, "sequence", config, Path(tmp) / "train", hooks=[timer], strategy=strategy).fit(encoded)
    task_type, task_id = distribute.task_of(strategy)
    record = {"task": [task_type, task_id], "workers": distribute.num_workers(strategy),
              "replicas_in_sync": strategy.num_replicas_in_sync, "step_seconds": timer.times,
              "gradient": gradient_bytes(model)}
    Path(args.worker_out).write_text(json.dumps(record))
    if distribute.num_workers(strategy) > 1:  # all workers here, every record written: they may exit at once
        strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None)


# ------------------------------------------------------------------------------------ orchestrator
def run_configuration(args, workers: int, folder: Path) -> dict:
    """Launch ``workers`` processes of this script as one cluster; their records, worker 0 first."""
    from tfcompress.cli import launch

    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(SCRIPT), "--model", args.model, "--data-dir", args.data_dir,
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    # each worker writes its own record: the index comes from its TF_CONFIG, read by the worker
    env["TFCOMPRESS_BENCH_OUT"] = str(folder / "worker-{index}.json")
    start = time.perf_counter()
    code = launch.launch([*argv, "--worker-out", "from-tf-config"], workers=workers, env=env)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{workers} worker(s): a worker exited with code {code}")
    records = [json.loads((folder / f"worker-{index}.json").read_text()) for index in range(workers)]
    return {"records": records, "wall_seconds": wall}


def _worker_out_path(args) -> str:
    if args.worker_out != "from-tf-config":
        return args.worker_out
    spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
    index = (spec.get("task") or {}).get("index", 0)
    return os.environ["TFCOMPRESS_BENCH_OUT"].format(index=index)


def ring_seconds(nbytes: int, hosts: int, gbit_per_second: float) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` over ``hosts``: 2 (N - 1) / N x bytes per host."""
    return 2 * (hosts - 1) / hosts * nbytes / (gbit_per_second * 1e9 / 8)


def projection(step_seconds: float, per_worker_batch: int, nbytes: int, hosts, bandwidths) -> list[dict]:
    """Expected samples/s and speed-up on N hosts (each the measured step, plus the all-reduce)."""
    rows = []
    for bandwidth in bandwidths:
        for n in hosts:
            comm = ring_seconds(nbytes, n, bandwidth)
            step = step_seconds + comm
            rows.append({"gbit_per_second": bandwidth, "hosts": n, "allreduce_seconds": comm, "step_seconds": step,
                         "samples_per_second": n * per_worker_batch / step, "speedup": n * step_seconds / step})
    return rows


def main(argv=None):
    args = parse_args(argv)
    command = ("python benchmarks/multiworker_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    if args.worker_out:
        args.worker_out = _worker_out_path(args)
        run_worker(args)
        # every worker wrote its record and passed the final barrier: skip TensorFlow's cluster shutdown
        # at exit (about 10 s on loopback: the chief waits on the peer that left first)
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
    bandwidths = [float(b) for b in args.bandwidths.split(",")]
    hosts = [int(n) for n in args.hosts.split(",")]
    if args.work_dir:
        return measure(args, command, bandwidths, hosts, Path(args.work_dir))
    with tempfile.TemporaryDirectory(prefix="multiworker-bench-") as work:
        return measure(args, command, bandwidths, hosts, Path(work))


def measure(args, command: str, bandwidths, hosts, work: Path):
    from tfcompress.cli.options import default_data_dir
    from tfcompress.models import loading

    if args.smoke:
        args.model = args.model or smoke_model_dir(work, "sequence", num_labels=2)
        args.data_dir = args.data_dir or smoke_data_dir(work, "sst2", train=64, test=8)
    args.model = args.model or loading.DEFAULT_MODEL
    args.data_dir = args.data_dir or default_data_dir("sst2")

    times = {w: [] for w in WORKER_COUNTS}
    other_times = {w: [] for w in WORKER_COUNTS}  # workers 1.. of each configuration
    walls = {w: [] for w in WORKER_COUNTS}
    gradient, topology = None, {}
    for round_index in range(args.rounds):
        for workers in WORKER_COUNTS:
            run = run_configuration(args, workers, work / f"round{round_index}-{workers}w")
            chief, others = run["records"][0], run["records"][1:]
            times[workers] += chief["step_seconds"][args.warmup:]
            for record in others:
                other_times[workers] += record["step_seconds"][args.warmup:]
            walls[workers].append(run["wall_seconds"])
            topology[workers] = {"workers": [r["workers"] for r in run["records"]],
                                 "replicas_in_sync": [r["replicas_in_sync"] for r in run["records"]],
                                 "steps_per_worker": [len(r["step_seconds"]) for r in run["records"]]}
            gradient = gradient or chief["gradient"]
            print(f"round {round_index}, {workers} worker(s): "
                  f"{args.batch_size / np.median(chief['step_seconds'][args.warmup:]):.1f} samples/s (median step), "
                  f"{run['wall_seconds']:.0f} s with start-up", flush=True)

    configurations = {}
    for workers in WORKER_COUNTS:
        configurations[str(workers)] = {
            "samples_per_second": args.batch_size * len(times[workers]) / float(np.sum(times[workers])),
            "step_seconds": percentiles(times[workers]), "timed_steps": len(times[workers]),
            "per_worker_batch": args.batch_size // workers, "launch_wall_seconds": walls[workers], **topology[workers]}
        if other_times[workers]:
            configurations[str(workers)]["other_workers_step_seconds"] = percentiles(other_times[workers])
    ratio = configurations["2"]["samples_per_second"] / configurations["1"]["samples_per_second"]
    compute = configurations["1"]["step_seconds"]["mean"]
    rows = projection(compute, args.batch_size, gradient["bytes"], hosts, bandwidths)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "worker_out"},
              "configurations": configurations, "ratio_2_to_1": ratio, "gradient": gradient,
              "compute_step_seconds": compute,
              "projection": {"assumptions": "each host: the measured 1-worker step (batch "
                                            f"{args.batch_size}) plus a ring all-reduce of the gradient bytes, "
                                            "2 (N - 1) / N of them in and out of each host, no overlap with "
                                            "backprop, no per-message latency",
                             "rows": rows}}
    lines = summary_lines(args, result)
    print("\n".join(lines))
    name = "multiworker_throughput-smoke" if args.smoke else "multiworker_throughput"
    return write_results(name, command, result, lines, results_dir=args.results_dir, append_markdown=not args.smoke)


def summary_lines(args, result) -> list[str]:
    one, two = result["configurations"]["1"], result["configurations"]["2"]
    gradient = result["gradient"]
    mb = gradient["bytes"] / 1e6
    lines = ["| configuration | per-worker batch | samples/s | step p50 (s) | step p90 (s) |", "|---|---|---|---|---|",
             *[f"| {w} worker{'s' if w > 1 else ''} on 127.0.0.1 | {c['per_worker_batch']} | {c['samples_per_second']:.1f} | "
               f"{c['step_seconds']['p50']:.3f} | {c['step_seconds']['p90']:.3f} |" for w, c in ((1, one), (2, two))],
             "", f"2 workers / 1 worker: **{result['ratio_2_to_1']:.2f}x** (global batch {args.batch_size}, "
                 f"max length {args.max_length}, {one['timed_steps']} timed steps per configuration after "
                 f"{args.warmup} warm-up steps per round, {args.rounds} alternating rounds). "
                 f"This machine has {os.cpu_count()} cores: the 2 workers share them, so no speed-up is expected; "
                 "the ratio is the cost of the distributed path on one machine.",
             "", f"All-reduce volume: {gradient['parameters']:,} trainable parameters in {gradient['variables']} variables, "
                 f"{mb:.1f} MB of gradient per step (fp32; the word embedding's dense gradient "
                 f"{gradient['word_embedding_bytes'] / 1e6:.1f} MB of it). Compute: {result['compute_step_seconds']:.3f} s "
                 f"per step of batch {args.batch_size} (1-worker mean).",
             "", "Expected scaling on N hosts, each with batch "
                 f"{args.batch_size} (global {args.batch_size} N) and the step measured here, ring all-reduce without "
                 "overlap or latency (arithmetic, not measured):", "",
             "| Gbit/s | hosts | all-reduce (s) | step (s) | samples/s | speed-up vs 1 host |", "|---|---|---|---|---|---|"]
    for row in result["projection"]["rows"]:
        lines.append(f"| {row['gbit_per_second']:g} | {row['hosts']} | {row['allreduce_seconds']:.3f} | "
                     f"{row['step_seconds']:.3f} | {row['samples_per_second']:.1f} | {row['speedup']:.2f} |")
    return lines


if __name__ == "__main__":
    main()
