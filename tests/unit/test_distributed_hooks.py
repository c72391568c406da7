"""The prune, QAT and distill hooks under MirroredStrategy over two logical CPUs, against one device.

One subprocess (logical devices must be configured before TensorFlow starts) trains each technique
twice from the same weights on the same global batch, dropout off: once on the default strategy,
once mirrored. Pruning and distillation share one run (a pruned student learning from cached teacher
outputs, as the pipeline's prune stage does); QAT has its own, in the slow tier. The results come back as JSON and each test checks one technique.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
WEIGHT_TOLERANCE = 1e-5  # max |mirrored - single| of a trainable weight, absolute (weights are ~0.02-1)

SCRIPT = textwrap.dedent("""
    import contextlib, json, sys
    sys.path.insert(0, {tests!r})
    import tfcompress._compat
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from conftest import SST_ROWS, build_tiny_model
    from transformers import AutoTokenizer
    from tfcompress.compress import distill, prune, qat
    from tfcompress.config.training import DistillConfig, PruneConfig, QATConfig, TrainConfig
    from tfcompress.data import encoding, readers
    from tfcompress.train.trainer import Trainer

    steps = {steps}
    tokenizer = AutoTokenizer.from_pretrained({vocab!r})
    examples = readers.TextClassificationExamples([s for s, _ in SST_ROWS], [l for _, l in SST_ROWS], ["0", "1"], "rows")
    encoded = encoding.encode(tokenizer, examples, max_length=16).select(list(range(8)))
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    start = build_tiny_model("sequence").get_weights()

    def train(kind, strategy):
        config = TrainConfig(max_steps=steps, batch_size=8, learning_rate=1e-2, warmup_ratio=0, log_every=steps,
                             checkpoint_every=100, histograms=False)
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = build_tiny_model("sequence")
            model.set_weights(start)
            if kind == "qat":
                qat.apply(model, QATConfig())
                hooks, trained, loss_fn = qat.hooks(QATConfig()), model, None
            else:  # a pruned student learning from cached teacher outputs: both hooks in one run
                settings = PruneConfig(final_sparsity=0.5, end_step=steps, frequency=1)
                prune.apply(model, settings, total_steps=steps)
                teacher = build_tiny_model("sequence")
                teacher.set_weights([w * 1.5 for w in start])  # a teacher that disagrees with the student
                trained = distill.Distiller(teacher, model, DistillConfig(alpha=0.5))
                trained.cache_teacher_outputs(encoded)
                hooks, loss_fn = prune.hooks(settings) + distill.hooks(trained), trained.loss_fn
        before = [v.numpy() for v in model.trainable_variables]
        name = "mirrored" if strategy else "single"
        Trainer(trained, "sequence", config, {out!r} + f"/{{kind}}-{{name}}", hooks=hooks, strategy=strategy,
                loss_fn=loss_fn).fit(encoded)
        return model, trained, before

    def per_replica_equal(variables, strategy):
        for variable in variables:
            values = [t.numpy() for t in strategy.experimental_local_results(variable)]
            if any(not np.array_equal(values[0], v) for v in values[1:]):
                return False
        return True

    def weight_diff(a, b):
        return max(float(np.max(np.abs(x.numpy() - y.numpy()))) for x, y in zip(a, b))

    result = {{"replicas": mirrored.num_replicas_in_sync}}
    for kind in sys.argv[1:]:
        single, single_trained, before = train(kind, None)
        twin, twin_trained, _ = train(kind, mirrored)
        entry = {{"weights": weight_diff(single.trainable_variables, twin.trainable_variables),
                  "moved": max(float(np.max(np.abs(v.numpy() - w))) for v, w in zip(single.trainable_variables, before))}}
        if kind == "prune_distill":
            masks = [m for w in prune._wrapper_refs(single) for _, m, _ in w.layer.pruning_vars]
            twin_masks = [m for w in prune._wrapper_refs(twin) for _, m, _ in w.layer.pruning_vars]
            entry["masks_equal"] = all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(masks, twin_masks))
            entry["masks_per_replica_equal"] = per_replica_equal(twin_masks, mirrored)
            entry["sparsity"] = [float(1 - np.mean(m.numpy())) for m in twin_masks]
            entry["pruning_step"] = [int(w.layer.pruning_step.numpy()) for w in prune._wrapper_refs(twin)]
            entry["teacher_moved"] = weight_diff(twin_trained.teacher.weights, single_trained.teacher.weights)
            entry["teacher_changed"] = max(float(np.max(np.abs(v.numpy() - 1.5 * w)))
                                           for v, w in zip(twin_trained.teacher.weights, start))
        else:
            ranges = [v for r in qat._wrapper_refs(single) for v in qat._range_variables(r.layer).values()]
            twin_ranges = [v for r in qat._wrapper_refs(twin) for v in qat._range_variables(r.layer).values()]
            entry["range_relative"] = max(float(np.max(np.abs(a.numpy() - b.numpy()) / np.maximum(np.abs(a.numpy()), 1e-6)))
                                          for a, b in zip(ranges, twin_ranges))
            entry["ranges_per_replica_equal"] = per_replica_equal(twin_ranges, mirrored)
            entry["ranges_moved"] = any(not np.allclose(v.numpy(), 6.0) and not np.allclose(v.numpy(), -6.0)
                                        for v in ranges)
        result[kind] = entry
    print(json.dumps(result))
""")


def _mirrored_run(kind: str, tmp_path_factory, vocab_dir) -> dict:
    """One subprocess: ``kind`` trained on one device and mirrored over 2 logical CPUs."""
    out = tmp_path_factory.mktemp(f"mirrored_{kind}")
    script = SCRIPT.format(tests=str(ROOT / "tests"), vocab=str(vocab_dir), out=str(out), steps=STEPS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script, kind], capture_output=True, text=True, timeout=900,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    print(kind, result[kind])  # the observed differences, with -s
    return result[kind]


@pytest.fixture(scope="module")
def prune_distill_run(tmp_path_factory, tiny_vocab_dir):
    """A pruned student distilled from cached teacher outputs (both hooks in one run)."""
    return _mirrored_run("prune_distill", tmp_path_factory, tiny_vocab_dir)


def test_mirrored_pruning_gives_the_single_device_masks_and_weights(prune_distill_run):
    prune_run = prune_distill_run
    assert prune_run["moved"] > 1e-3
    assert prune_run["weights"] < WEIGHT_TOLERANCE
    assert prune_run["masks_equal"] and prune_run["masks_per_replica_equal"]
    assert min(prune_run["sparsity"]) >= 0.5 - 0.01  # the schedule reached its end on the mirrored model
    assert set(prune_run["pruning_step"]) == {STEPS}


@pytest.mark.slow  # two more fits (about a minute on 2 cores): the QAT wrappers under a strategy
def test_mirrored_qat_keeps_one_range_per_variable_close_to_the_single_device_run(tmp_path_factory, tiny_vocab_dir):
    """TFMOT updates each output range by a moving average of the batch min/max; under a strategy each
    replica sees half the batch and the update is the mean over replicas (the variables aggregate
    with MEAN), so the ranges differ slightly from one device's (observed: relative 1e-5): 1e-4 allowed."""
    qat_run = _mirrored_run("qat", tmp_path_factory, tiny_vocab_dir)
    assert qat_run["moved"] > 1e-3 and qat_run["ranges_moved"]
    assert qat_run["ranges_per_replica_equal"]
    assert qat_run["range_relative"] < 1e-4
    assert qat_run["weights"] < WEIGHT_TOLERANCE


def test_mirrored_distillation_trains_the_student_like_one_device_and_leaves_the_teacher(prune_distill_run):
    distill_run = prune_distill_run
    assert distill_run["moved"] > 1e-3
    assert distill_run["weights"] < WEIGHT_TOLERANCE
    assert distill_run["teacher_moved"] == 0.0 and distill_run["teacher_changed"] == 0.0
