"""Trainer behaviour on tiny models: learning, resume, accumulation, distribution, TensorBoard."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_model, seeded_weights
from tfcompress.data import encoding
from tfcompress.data import readers
from tfcompress.config.training import TrainConfig
from tfcompress.train.trainer import Hook, Trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sst_encoded(sst_tsv, tiny_tokenizer):
    examples = readers.read_text_classification(sst_tsv)
    return encoding.encode(tiny_tokenizer, examples, max_length=16)


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def test_loss_decreases_and_accuracy_rises_on_separable_task(tmp_path, sst_encoded):
    model = seeded_weights(build_tiny_model("sequence"), seed=0)
    config = TrainConfig(max_steps=60, batch_size=4, learning_rate=5e-3, warmup_ratio=0.0, log_every=1,
                         eval_every=60, checkpoint_every=100)
    trainer = Trainer(model, "sequence", config, tmp_path / "finetune", stage="finetune")
    result = trainer.fit(sst_encoded, sst_encoded)
    rows = [json.loads(line) for line in (tmp_path / "finetune" / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert result["metrics"]["accuracy"] == 1.0
    assert result["steps"] == 60
    # one trace for every batch shape: workers of a cluster must trace alike (each trace numbers its collectives)
    assert trainer._step_fn.experimental_get_tracing_count() <= 2  # 2: the first call creates the optimizer slots


class _Interrupt(Hook):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_begin(self, trainer, step):
        if step == self.at_step:
            raise KeyboardInterrupt


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, sst_encoded):
    config = TrainConfig(max_steps=8, batch_size=4, learning_rate=1e-3, checkpoint_every=3, log_every=1)
    straight = build_tiny_model("sequence")
    start = straight.get_weights()
    Trainer(straight, "sequence", config, tmp_path / "straight").fit(sst_encoded)

    interrupted = build_tiny_model("sequence")
    interrupted.set_weights(start)
    with pytest.raises(KeyboardInterrupt):
        Trainer(interrupted, "sequence", config, tmp_path / "resumed", hooks=[_Interrupt(5)]).fit(sst_encoded)
    resumed_model = build_tiny_model("sequence")  # a fresh process would start from fresh weights
    result = Trainer(resumed_model, "sequence", config, tmp_path / "resumed").fit(sst_encoded)
    assert result["resumed_from"] == 3
    assert result["steps"] == 8
    for a, b in zip(_weights(straight), _weights(resumed_model)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradient_accumulation_matches_one_large_batch(tmp_path, sst_encoded):
    eight = sst_encoded.select(list(range(8)))
    large = build_tiny_model("sequence")
    start = large.get_weights()
    accumulated = build_tiny_model("sequence")
    accumulated.set_weights(start)
    Trainer(large, "sequence", TrainConfig(max_steps=1, batch_size=8, learning_rate=1e-2, warmup_ratio=0),
            tmp_path / "large").fit(eight)
    Trainer(accumulated, "sequence",
            TrainConfig(max_steps=1, batch_size=4, grad_accum_steps=2, learning_rate=1e-2, warmup_ratio=0),
            tmp_path / "accumulated").fit(eight)
    changed = False
    for a, b, start in zip(_weights(large), _weights(accumulated), start):
        np.testing.assert_allclose(a, b, atol=2e-5)
        changed |= not np.allclose(a, start)
    assert changed


def test_tensorboard_event_files_hold_training_and_eval_tags(tmp_path, sst_encoded):
    from tfcompress.train.tracking import read_scalar_tags

    config = TrainConfig(max_steps=4, batch_size=4, log_every=1, eval_every=2, profile_steps=(1, 2))
    Trainer(build_tiny_model("sequence"), "sequence", config, tmp_path / "finetune", stage="finetune").fit(
        sst_encoded, sst_encoded)
    tags = read_scalar_tags(tmp_path / "tensorboard" / "finetune")
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/examples_per_second",
                "eval/accuracy", "eval/f1"):
        assert tag in tags, tags
    assert any("kernel" in tag for tag in tags), "weight histograms missing"
    assert list((tmp_path / "tensorboard" / "finetune").rglob("*.xplane.pb")), "profiler trace missing"


def test_token_task_trains_with_ignored_subtokens(tmp_path, conll_file, tiny_tokenizer):
    examples = readers.read_conll(conll_file)
    encoded = encoding.encode(tiny_tokenizer, examples, max_length=32)
    model = build_tiny_model("token", num_labels=len(encoded.label_names))
    config = TrainConfig(max_steps=30, batch_size=3, learning_rate=5e-3, warmup_ratio=0, log_every=1)
    result = Trainer(model, "token", config, tmp_path / "ner", label_names=encoded.label_names).fit(
        encoded, encoded)
    assert result["metrics"]["f1"] > 0.5


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("learning_rate", -1.0), ("warmup_ratio", 1.5),
                                         ("mixed_precision", "fp8")])
def test_bad_train_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"train.{field}"):
        TrainConfig(**{field: value})


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, {tests!r})
    import tfcompress._compat
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from conftest import build_tiny_model, seeded_weights, SST_ROWS
    from tfcompress.data import encoding
    from tfcompress.data import readers
    from tfcompress.config.training import TrainConfig
    from tfcompress.train.trainer import Trainer
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained({vocab!r})
    examples = readers.TextClassificationExamples([s for s, _ in SST_ROWS], [l for _, l in SST_ROWS], ["0", "1"], "rows")
    encoded = encoding.encode(tokenizer, examples, max_length=16).select(list(range(8)))
    config = TrainConfig(max_steps=3, batch_size=8, learning_rate=1e-2, warmup_ratio=0)
    single = build_tiny_model("sequence")
    start = single.get_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = build_tiny_model("sequence")
        mirrored.set_weights(start)
    Trainer(single, "sequence", config, {out!r} + "/single").fit(encoded)
    Trainer(mirrored, "sequence", config, {out!r} + "/mirrored", strategy=strategy).fit(encoded)
    diffs = [float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), mirrored.get_weights())]
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(single.get_weights(), start))
    print(json.dumps({{"replicas": strategy.num_replicas_in_sync, "max_diff": max(diffs), "moved": moved}}))
""")


def test_mirrored_strategy_matches_single_device(tmp_path, tiny_vocab_dir):
    script = MIRRORED_SCRIPT.format(tests=str(ROOT / "tests"), vocab=str(tiny_vocab_dir), out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["moved"] > 1e-3
    assert result["max_diff"] < 1e-5


def test_early_stopping_ends_training_after_patience_evaluations_without_gain(tmp_path, sst_encoded):
    """A learning rate too small to move the metric: the first evaluation is the best, the next
    ``early_stopping_patience`` ones bring nothing, and training stops there instead of at max_steps."""
    model = seeded_weights(build_tiny_model("sequence"))
    config = TrainConfig(max_steps=12, batch_size=4, learning_rate=1e-12, warmup_ratio=0.0, eval_every=1,
                         early_stopping_patience=2, checkpoint_every=100, log_every=100)
    result = Trainer(model, "sequence", config, tmp_path / "run").fit(sst_encoded, sst_encoded)
    assert result["steps"] == 3  # evaluations at steps 1 (best), 2 and 3 (no gain: patience 2 reached)
    assert result["best_step"] == 1
    never = TrainConfig(max_steps=6, batch_size=4, learning_rate=1e-12, warmup_ratio=0.0, eval_every=1,
                        checkpoint_every=100, log_every=100)
    assert Trainer(model, "sequence", never, tmp_path / "never").fit(sst_encoded, sst_encoded)["steps"] == 6


def test_a_resumed_run_drops_metrics_rows_the_killed_attempt_logged_past_its_checkpoint(tmp_path):
    from tfcompress.train.tracking import Tracker

    tracker = Tracker(tmp_path, "finetune")
    for step in range(1, 11):
        tracker.scalars(step, {"loss": 1.0 / step}, prefix="train")
    with open(tracker.jsonl_path, "a") as handle:
        handle.write('{"step": 11, "trai')  # the kill cut the last line
    tracker.close()
    resumed = Tracker(tmp_path, "finetune")  # the rerun: a new writer, a new event file
    assert resumed.truncate_after(6) == 5
    steps = [json.loads(line)["step"] for line in tracker.jsonl_path.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    for step in range(7, 9):
        resumed.scalars(step, {"loss": 0.5}, prefix="train")
    resumed.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tfcompress._compat import tf

    accumulator = EventAccumulator(str(tmp_path / "tensorboard" / "finetune"), size_guidance={"tensors": 0})
    accumulator.Reload()
    events = accumulator.Tensors("train/loss")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6, 7, 8]  # the dead attempt's 7..10 are gone, once each
    assert float(tf.make_ndarray(events[-1].tensor_proto)) == 0.5
    assert Tracker(tmp_path, "finetune").truncate_after(8) == 0


def test_fit_removes_a_checkpoint_a_kill_left_half_written(tmp_path, sst_encoded):
    """TensorFlow writes ckpt-N_temp/ while saving; a SIGKILL then leaves it beside the real checkpoints."""
    partial = tmp_path / "run" / "checkpoints" / "ckpt-3_temp"
    partial.mkdir(parents=True)
    (partial / "part-00000-of-00001").write_bytes(b"\0" * 1024)
    config = TrainConfig(max_steps=2, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, checkpoint_every=100,
                         log_every=100)
    Trainer(build_tiny_model("sequence"), "sequence", config, tmp_path / "run").fit(sst_encoded)
    assert not partial.exists()


def test_sigterm_stops_at_a_step_boundary_after_a_checkpoint_and_the_rerun_resumes(tmp_path, sst_encoded):
    """A pre-empted machine sends SIGTERM: training stops after the step it is in, saves a checkpoint,
    says how to resume; the same fit again continues from that step to the end."""
    import os
    import signal

    from tfcompress.train.interrupt import TrainingInterrupted

    class Preempt(Hook):
        def on_step_end(self, trainer, step, logs):
            if step == 1:  # during the second step
                os.kill(os.getpid(), signal.SIGTERM)

    config = TrainConfig(max_steps=6, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, checkpoint_every=100,
                         log_every=1)
    model = build_tiny_model("sequence")
    with pytest.raises(TrainingInterrupted, match="SIGTERM received: train stopped at step 2") as stopped:
        Trainer(model, "sequence", config, tmp_path / "run", hooks=[Preempt()]).fit(sst_encoded)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the fit
    result = Trainer(build_tiny_model("sequence"), "sequence", config, tmp_path / "run").fit(sst_encoded)
    assert result["resumed_from"] == 2 and result["steps"] == 6


def test_set_seed_restarts_the_keras_seed_generator():
    """A run seeded with ``set_seed(7)`` draws the same initial weights and dropout masks whether or
    not the program called ``keras.utils.set_random_seed`` with another seed before."""
    from tfcompress._compat import keras, tf
    from tfcompress.utils import set_seed

    def draw():
        set_seed(7)
        dense = keras.layers.Dense(4)
        dense.build((None, 8))
        return dense.kernel.numpy(), keras.layers.Dropout(0.5)(tf.ones((1, 64)), training=True).numpy()

    fresh = draw()
    keras.utils.set_random_seed(123)
    after_another_seed = draw()
    for first, second in zip(fresh, after_another_seed):
        np.testing.assert_array_equal(first, second)
