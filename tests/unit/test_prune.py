"""Magnitude pruning with TFMOT's wrappers on tiny HF models: schedules, 2:4, strip, embeddings, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import build_tiny_model
from tfcompress.data import encoding
from tfcompress.data import readers
from tfcompress.compress import prune
from tfcompress.compress.prune import make_schedule
from tfcompress.config import training
from tfcompress.models import loading
from tfcompress.models import surgery
from tfcompress._compat import keras, tf
from tfcompress.config.training import TrainConfig
from tfcompress.train.trainer import Hook, Trainer, sequence_or_token_loss

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sst_encoded(sst_tsv, tiny_tokenizer):
    examples = readers.read_text_classification(sst_tsv)
    return encoding.encode(tiny_tokenizer, examples, max_length=16)


def _batch(encoded):
    features, labels = encoded.padded_batch(np.arange(len(encoded)))
    return {k: tf.constant(v) for k, v in features.items()}, tf.constant(labels)


def _custom_loop(model, config: training.PruneConfig, batch, steps: int, learning_rate=1e-2, hook=None):
    """TFMOT's custom-training-loop pattern with our hook: step begin -> tf.function step -> step end."""
    hook = hook or prune.hooks(config)[0]
    trainer = SimpleNamespace(model=model, total_steps=steps, global_step=0,
                              config=SimpleNamespace(grad_accum_steps=1))
    optimizer = keras.optimizers.Adam(learning_rate)
    features, labels = batch

    @tf.function
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=True).logits
            loss = sequence_or_token_loss(logits, labels)
            hook.extra_losses(trainer, features, labels, logits, True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    hook.on_train_begin(trainer)
    for step in range(steps):
        hook.on_step_begin(trainer, step)
        train_step(features, labels)
        trainer.global_step += 1
        hook.on_step_end(trainer, step, {})
    hook.on_train_end(trainer)
    return hook


def _kept(size: int, sparsity: float) -> int:
    """Weights TFMOT keeps at ``sparsity``: max(round(size * (1 - s)), 1) in float32, like pruning_impl."""
    return int(max(np.round(np.float32(size) * (np.float32(1.0) - np.float32(sparsity))), 1))


def _dense_kernels(model) -> dict[str, np.ndarray]:
    return {ref.path: ref.layer.kernel.numpy() for ref in surgery.find_layers(model)}


def _save_and_reload(model, path, task="sequence"):
    loading.save_model(model, None, path)
    return loading.load_model(str(path), task=task)


ENCODER_PATHS = [f"bert/encoder/layer.{i}/{name}" for i in range(2) for name in (
    "attention/self_attention/query", "attention/self_attention/key", "attention/self_attention/value",
    "attention/dense_output/dense", "intermediate/dense", "bert_output/dense")]


# ------------------------------------------------------------------------------------------------


def test_zero_sparsity_is_noop(sst_encoded):
    batch = _batch(sst_encoded)
    plain = build_tiny_model("sequence")
    pruned = build_tiny_model("sequence")
    pruned.set_weights(plain.get_weights())
    before = pruned(batch[0], training=False).logits.numpy()
    prune.apply(pruned, training.PruneConfig(final_sparsity=0.0), total_steps=6)
    np.testing.assert_array_equal(pruned(batch[0], training=False).logits.numpy(), before)

    # the same custom steps on an unwrapped twin give the same weights
    class NoHook(Hook):
        pass

    _custom_loop(plain, None, batch, 6, hook=NoHook())
    _custom_loop(pruned, training.PruneConfig(final_sparsity=0.0), batch, 6)
    assert prune.sparsity_report(pruned)["pruned"]["nonzero"] == prune.sparsity_report(pruned)["pruned"]["params"]
    prune.strip(pruned)
    for path, kernel in _dense_kernels(plain).items():
        np.testing.assert_allclose(_dense_kernels(pruned)[path], kernel, atol=1e-6, err_msg=path)
        assert np.count_nonzero(kernel) == kernel.size


def test_custom_train_step_reaches_target_sparsity(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    config = training.PruneConfig(final_sparsity=0.75, schedule="polynomial")
    prune.apply(model, config, total_steps=12)
    assert prune.pruned_layers(model) == ENCODER_PATHS
    hook = _custom_loop(model, config, _batch(sst_encoded), 12)
    summary = hook.summaries(None, 12)
    assert summary["prune/target_sparsity"] == pytest.approx(0.75)
    assert summary["prune/global_sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert all(summary[f"prune/sparsity/{path}"] == pytest.approx(0.75, abs=2e-3) for path in ENCODER_PATHS)

    prune.strip(model)
    reloaded = _save_and_reload(model, tmp_path / "pruned")
    kernels = _dense_kernels(reloaded)
    for path in ENCODER_PATHS:
        kernel = kernels[path]
        assert np.count_nonzero(kernel) == _kept(kernel.size, 0.75), path
    report = prune.sparsity_report(reloaded)
    assert sorted(p.rsplit("/", 1)[0] for p in report["pruned_layers"]) == sorted(ENCODER_PATHS)
    assert report["pruned"]["sparsity"] == pytest.approx(0.75, abs=1e-3)


def test_unselected_layers_untouched(sst_encoded):
    model = build_tiny_model("sequence")
    table_before = surgery.word_embedding_ref(model)
    table_before = getattr(*table_before).numpy().copy()
    names_before = sorted(v.name for v in model.weights)
    config = training.PruneConfig(final_sparsity=0.5, schedule="constant", include=r"layer\.0/",
                               exclude=r"intermediate|bert_output")
    prune.apply(model, config, total_steps=4)
    selected = [p for p in ENCODER_PATHS if p.startswith("bert/encoder/layer.0/attention")]
    assert prune.pruned_layers(model) == selected
    _custom_loop(model, config, _batch(sst_encoded), 4, learning_rate=0.0)  # only pruning changes weights
    prune.strip(model)
    assert sorted(v.name for v in model.weights) == names_before
    for path, kernel in _dense_kernels(model).items():
        if path in selected:
            assert np.count_nonzero(kernel) == _kept(kernel.size, 0.5), path
        else:
            assert np.count_nonzero(kernel) == kernel.size, path
    np.testing.assert_array_equal(getattr(*surgery.word_embedding_ref(model)).numpy(), table_before)


def test_strip_matches_wrapped_outputs(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    config = training.PruneConfig(final_sparsity=0.6, include_classifier=True)
    prune.apply(model, config, total_steps=6)
    assert "classifier" in prune.pruned_layers(model) and "bert/pooler/dense" in prune.pruned_layers(model)
    batch = _batch(sst_encoded)
    _custom_loop(model, config, batch, 6)
    wrapped = model(batch[0], training=False).logits.numpy()
    prune.strip(model)
    assert surgery.find_layers(model, kinds=(keras.layers.Wrapper,)) == []
    np.testing.assert_allclose(model(batch[0], training=False).logits.numpy(), wrapped, atol=1e-6)
    reloaded = _save_and_reload(model, tmp_path / "stripped")
    np.testing.assert_allclose(reloaded(batch[0], training=False).logits.numpy(), wrapped, atol=1e-5)


def test_two_four_structure_holds(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    config = training.PruneConfig(final_sparsity=0.5, structure="2:4")
    prune.apply(model, config, total_steps=5)
    train_config = TrainConfig(max_steps=5, batch_size=4, learning_rate=1e-2, warmup_ratio=0.0,
                               checkpoint_every=100)
    Trainer(model, "sequence", train_config, tmp_path / "run", hooks=prune.hooks(config)).fit(sst_encoded)
    prune.strip(model)
    reloaded = _save_and_reload(model, tmp_path / "two_four")
    for path in ENCODER_PATHS:
        kernel = _dense_kernels(reloaded)[path]  # [in, out]; groups of 4 run along the input dim
        groups = kernel.T.reshape(kernel.shape[1], kernel.shape[0] // 4, 4)
        zeros_per_group = (groups == 0).sum(axis=-1)
        assert zeros_per_group.min() >= 2, path
        assert np.count_nonzero(kernel) == kernel.size // 2, path


def test_trainer_with_grad_accumulation_advances_schedule_per_optimizer_step(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    config = training.PruneConfig(final_sparsity=0.8, end_step=4, frequency=1)
    prune.apply(model, config, total_steps=4)
    schedule = make_schedule(config, 4)
    seen = []

    class Record(Hook):
        def on_step_end(self, trainer, step, logs):
            seen.append(prune.sparsity_report(trainer.model)["pruned"]["sparsity"])

    train_config = TrainConfig(max_steps=4, batch_size=3, grad_accum_steps=2, learning_rate=1e-2,
                               warmup_ratio=0.0, log_every=1, checkpoint_every=100)
    trainer = Trainer(model, "sequence", train_config, tmp_path / "prune", stage="prune",
                      hooks=prune.hooks(config) + [Record()])
    trainer.fit(sst_encoded)
    # after optimizer step s (0-based) the masks hold the schedule's sparsity at step s + 1, not s + 2
    expected = [float(schedule(tf.constant(s + 1, tf.int64))[1]) for s in range(4)]
    np.testing.assert_allclose(seen, expected, atol=3e-3)
    assert len(set(np.round(seen, 3))) == 4  # the ramp moved at each step: the test can tell them apart
    wrappers = [ref.layer for ref in surgery.find_layers(model, kinds=(prune.PruneLowMagnitude,))]
    assert {int(w.pruning_step.numpy()) for w in wrappers} == {4}
    rows = [json.loads(line) for line in (tmp_path / "prune" / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in rows if "train/prune/global_sparsity" in row][-1]
    assert last["train/prune/global_sparsity"] == pytest.approx(0.8, abs=2e-3)
    assert f"train/prune/sparsity/{ENCODER_PATHS[0]}" in last and f"train/prune/threshold/{ENCODER_PATHS[0]}" in last


@pytest.mark.parametrize("fields,field", [
    ({"final_sparsity": 1.0}, "final_sparsity"),
    ({"final_sparsity": -0.1}, "final_sparsity"),
    ({"initial_sparsity": 0.6, "final_sparsity": 0.5}, "initial_sparsity"),
    ({"begin_step": 10, "end_step": 5}, "end_step"),
    ({"end_step": 10, "frequency": 3}, "frequency"),
    ({"schedule": "cubic"}, "schedule"),
    ({"structure": "4:8"}, "structure"),
    ({"structure": "2:4", "final_sparsity": 0.8}, "final_sparsity"),
    ({"block_size": (0, 4)}, "block_size"),
    ({"include": "("}, "include"),
])
def test_bad_config_fails_before_training(fields, field):
    with pytest.raises(ValueError) as error:
        training.PruneConfig(**fields)
    assert f"prune.{field}={fields[field]!r}: " in str(error.value)


@pytest.mark.parametrize("fields,field", [
    ({"include": "no_such_layer"}, "include"),
    ({"exclude": "no_such_layer"}, "exclude"),
    ({"end_step": 50}, "end_step"),
    ({}, "end_step"),  # end_step derived from total_steps, which is missing
])
def test_bad_selection_or_window_fails_before_the_model_is_touched(fields, field):
    model = build_tiny_model("sequence")
    names = sorted(v.name for v in model.weights)
    total_steps = None if not fields else 20
    with pytest.raises(ValueError, match=f"prune.{field}="):
        prune.apply(model, training.PruneConfig(**fields), total_steps=total_steps)
    assert surgery.find_layers(model, kinds=(keras.layers.Wrapper,)) == []
    assert sorted(v.name for v in model.weights) == names


def test_hook_refuses_schedule_longer_than_training(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    config = training.PruneConfig(final_sparsity=0.5, end_step=20, frequency=1)
    prune.apply(model, config)
    trainer = Trainer(model, "sequence", TrainConfig(max_steps=5, batch_size=4), tmp_path / "run",
                      hooks=prune.hooks(config))
    with pytest.raises(ValueError, match="end_step=20"):
        trainer.fit(sst_encoded)
    assert trainer.global_step == 0


def test_prune_embeddings_reaches_target(sst_encoded, tmp_path):
    model = build_tiny_model("sequence")
    position_before = model.bert.embeddings.position_embeddings.numpy().copy()
    config = training.PruneConfig(final_sparsity=0.7, prune_embeddings=True)
    prune.apply(model, config, total_steps=8)
    assert prune.pruned_layers(model)[-1] == "bert/embeddings/weight"
    batch = _batch(sst_encoded)
    _custom_loop(model, config, batch, 8, learning_rate=0.0)
    wrapped = model(batch[0], training=False).logits.numpy()
    prune.strip(model)
    reloaded = _save_and_reload(model, tmp_path / "embeddings")
    table = getattr(*surgery.word_embedding_ref(reloaded)).numpy()
    assert np.count_nonzero(table) == _kept(table.size, 0.7)
    np.testing.assert_array_equal(reloaded.bert.embeddings.position_embeddings.numpy(), position_before)
    np.testing.assert_allclose(reloaded(batch[0], training=False).logits.numpy(), wrapped, atol=1e-5)
    report = prune.sparsity_report(reloaded)
    assert report["layers"]["bert/embeddings/weight"]["sparsity"] == pytest.approx(0.7, abs=1e-3)


def test_saved_size_shrinks_with_sparsity(tmp_path):
    dense = build_tiny_model("sequence", hidden_size=64, intermediate_size=256)
    loading.save_model(dense, None, tmp_path / "dense")
    sparse = build_tiny_model("sequence", hidden_size=64, intermediate_size=256)
    config = training.PruneConfig(final_sparsity=0.9, schedule="constant", end_step=1, frequency=1)
    prune.apply(sparse, config, total_steps=1)
    for ref in surgery.find_layers(sparse, kinds=(prune.PruneLowMagnitude,)):  # one TFMOT mask update
        ref.layer.pruning_step.assign(1)
        ref.layer.pruning_obj.conditional_mask_update()
    prune.strip(sparse)
    loading.save_model(sparse, None, tmp_path / "sparse")
    dense_size, sparse_size = prune.saved_size(tmp_path / "dense"), prune.saved_size(tmp_path / "sparse")
    assert set(dense_size["files"]) == {"tf_model.h5"}
    assert abs(sparse_size["raw"] - dense_size["raw"]) < 0.02 * dense_size["raw"]  # h5 is not compressed
    assert sparse_size["gzip"] < 0.75 * dense_size["gzip"]
    with pytest.raises(FileNotFoundError):
        prune.saved_size(tmp_path)


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from conftest import build_tiny_model, SST_ROWS
    from transformers import AutoTokenizer
    from tfcompress.compress import prune
    from tfcompress.data import encoding
    from tfcompress.data import readers
    from tfcompress.config import PruneConfig, TrainConfig
    from tfcompress.models import loading, surgery
    from tfcompress.train.trainer import Hook, Trainer
    from tfcompress._compat import tf
    tf.config.experimental.enable_op_determinism()  # so the killed+resumed run can be compared bit for bit

    output, delay = sys.argv[1], float(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained({vocab!r})
    examples = readers.TextClassificationExamples([s for s, _ in SST_ROWS], [l for _, l in SST_ROWS], ["0", "1"], "rows")
    encoded = encoding.encode(tokenizer, examples, max_length=16)

    class Progress(Hook):
        def on_step_end(self, trainer, step, logs):
            with open(output + "/progress", "a") as handle:
                handle.write(f"{{step + 1}}\\n")
            time.sleep(delay)

    model = build_tiny_model("sequence")
    model.load_weights({init!r})  # the same start in every process (HF initialisers vary across processes)
    config = PruneConfig(final_sparsity=0.8)
    train_config = TrainConfig(max_steps=16, batch_size=4, learning_rate=5e-3, warmup_ratio=0.0,
                               checkpoint_every=2, log_every=4)
    prune.apply(model, config, total_steps=16)
    trainer = Trainer(model, "sequence", train_config, output, hooks=prune.hooks(config) + [Progress()])
    result = trainer.fit(encoded)
    steps = sorted({{int(r.layer.pruning_step.numpy()) for r in surgery.find_layers(model, kinds=(prune.PruneLowMagnitude,))}})
    prune.strip(model)
    loading.save_model(model, None, output + "/model")
    print(json.dumps({{"resumed_from": result["resumed_from"], "steps": result["steps"], "pruning_steps": steps}}))
""")


def _run_resume_script(script, output, delay, kill_after_step=None):
    output.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", script, str(output), str(delay)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if kill_after_step is None:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env)
    deadline = time.time() + 300
    progress = output / "progress"
    while time.time() < deadline and process.poll() is None:
        if progress.exists() and len(progress.read_text().split()) >= kill_after_step:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return int(progress.read_text().split()[-1])


def test_prune_resume_preserves_sparsity(tmp_path, tiny_vocab_dir):
    init = tmp_path / "init.h5"
    build_tiny_model("sequence").save_weights(str(init))
    script = RESUME_SCRIPT.format(tests=str(ROOT / "tests"), vocab=str(tiny_vocab_dir), init=str(init))
    killed_at = _run_resume_script(script, tmp_path / "resumed", delay=0.4, kill_after_step=7)
    assert 7 <= killed_at < 16  # killed mid-schedule: end_step is 12 (0.75 x 16)
    resumed = _run_resume_script(script, tmp_path / "resumed", delay=0.0)
    straight = _run_resume_script(script, tmp_path / "straight", delay=0.0)
    assert 0 < resumed["resumed_from"] <= killed_at and resumed["resumed_from"] % 2 == 0
    assert resumed["steps"] == straight["steps"] == 16
    assert resumed["pruning_steps"] == straight["pruning_steps"] == [16]
    model = loading.load_model(str(tmp_path / "resumed" / "model"))
    reference = loading.load_model(str(tmp_path / "straight" / "model"))
    kernels, reference_kernels = _dense_kernels(model), _dense_kernels(reference)
    for path in ENCODER_PATHS:
        kernel = kernels[path]
        assert np.count_nonzero(kernel) == _kept(kernel.size, 0.8), path
        np.testing.assert_array_equal(kernel == 0, reference_kernels[path] == 0, err_msg=path)  # same masks
        np.testing.assert_allclose(kernel, reference_kernels[path], atol=1e-4, err_msg=path)
