"""The ``tfcompress`` command line: help for every subcommand, exit code 2 for bad flags and overrides.

Everything here runs in-process and stops at argument parsing, so no model is loaded.
"""
from __future__ import annotations

import json

import numpy as np

import pytest

from tfcompress.cli import commands as cli
from tfcompress.cli import options


def _subparsers():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001
    return action.choices


def test_every_subcommand_is_there():
    assert set(_subparsers()) == set(cli.SUBCOMMANDS) == {
        "finetune", "distill", "prune", "trim", "qat", "export", "evaluate", "bench", "run", "env", "launch"}


@pytest.mark.parametrize("command", cli.SUBCOMMANDS)
def test_help_explains_every_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parser = _subparsers()[command]
    for action in parser._actions:  # noqa: SLF001
        if action.dest == "help":
            continue
        assert action.help and len(action.help) > 10, f"{command} {action.option_strings or action.dest}: no help"
        for option in action.option_strings:
            assert option in text


def test_recipe_flags_are_on_the_stage_commands(capsys):
    flags = {
        "distill": ["--distill-from", "--student-layers", "--temperature", "--alpha", "--hidden-loss-weight",
                    "--attention-loss-weight"],
        "prune": ["--prune-sparsity", "--prune-schedule", "--prune-structure", "--prune-embeddings"],
        "trim": ["--trim-keep-first"],
        "qat": ["--qat-epochs"],
        "export": ["--export", "--seq-length"],
        "evaluate": ["--accuracy-budget", "--allow-regression", "--release"],
    }
    for command, names in flags.items():
        known = {o for a in _subparsers()[command]._actions for o in a.option_strings}  # noqa: SLF001
        assert set(names) <= known, (command, set(names) - known)


@pytest.fixture
def train_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\na good movie,pos\na bad movie,neg\n")
    return path


@pytest.mark.parametrize("arguments, named", [
    (["prune", "--prune-sparsity", "lots"], "--prune-sparsity"),
    (["prune", "--prune-structure", "3:4"], "--prune-structure"),
    (["export", "--export", "fp32,int3"], "--export"),
    (["finetune", "--no-such-flag"], "--no-such-flag"),
])
def test_bad_flag_exits_2_naming_it(arguments, named, train_csv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*arguments, "--train-file", str(train_csv)])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize("override, named", [
    ("prune.final_sparsity=1.5", "prune.final_sparsity"),
    ("prune.nope=1", "prune.nope"),
    ("nope.field=1", "nope"),
    ("prune_train.epochs=0", "prune_train.epochs"),
    ("train.batch_size=big", "train.batch_size"),
    ("export.modes=fp32,int3", "export.modes"),
    ("evaluate.accuracy_budget=-1", "evaluate.accuracy_budget"),
    ("export.int8_outlier_percentile=150", "export.int8_outlier_percentile"),
    ("distill.alpha=2", "alpha"),
    ("train.epochs", "FIELD=VALUE"),
    ("export.int8_select_budget=0.5", "selective int8 search was removed"),
    ("data.case_segments=maybe", "data.case_segments"),
])
def test_bad_override_exits_2_naming_the_field(override, named, train_csv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prune", "--train-file", str(train_csv), "--output-dir", str(tmp_path / "out"), "--set", override])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # rejected before anything ran


def test_missing_data_file_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", "--train-file", str(tmp_path / "absent.csv")])
    assert exit_info.value.code == 2
    assert "absent.csv" in capsys.readouterr().err


def test_run_unknown_recipe_exits_2(capsys):
    assert cli.main(["run", "no_such_recipe"]) == 2
    assert "no_such_recipe" in capsys.readouterr().err


def test_bench_without_artifacts_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_env_command_prints_stack_versions(capsys):
    assert cli.main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["tensorflow"].startswith("2.")
    assert info["tf_keras_is_tf_keras"] is True


def test_stage_command_builds_a_one_stage_config(train_csv, tmp_path):

    parser = cli.build_parser()
    args = parser.parse_args(["prune", "--train-file", str(train_csv), "--output-dir", str(tmp_path),
                              "--prune-sparsity", "0.8", "--prune-embeddings", "--set", "prune_train.epochs=2"])
    config = options.config_from_args(args, cli._stage_defaults(), stages=["prune"])  # noqa: SLF001
    assert config.stages == ["prune"]
    assert config.prune.final_sparsity == 0.8 and config.prune.prune_embeddings
    assert config.prune_train.epochs == 2.0
    assert config.data.eval_file == config.data.test_file == str(train_csv)


def _tiny_artifact(path, seq_length=8):
    """A one-matmul .tflite with the signature the runtime expects (input_ids -> logits)."""
    from tfcompress._compat import tf

    module = tf.Module()
    module.weights = tf.Variable(np.random.default_rng(0).normal(size=(seq_length, 2)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, seq_length], tf.int32, name="input_ids")])
    def serve(input_ids):
        return {"logits": tf.matmul(tf.cast(input_ids, tf.float32), module.weights)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
    path.write_bytes(converter.convert())
    return path


def test_bench_rounds_report_the_median_of_each_round(tmp_path, capsys, monkeypatch):
    from tfcompress.evaluate import runtime

    first = _tiny_artifact(tmp_path / "a.tflite")
    second = _tiny_artifact(tmp_path / "b.tflite", seq_length=16)
    order, real_latency = [], runtime.TFLiteModel.latency
    # scripted p50s per (artifact, threads), one per round; the median differs from the first, last and mean
    script = {8: {1: [5.0, 2.0, 1.0], 2: [9.0, 4.0, 2.0]}, 16: {1: [10.0, 7.0, 6.0], 2: [3.0, 1.5, 1.0]}}

    def scripted(self, features=None, warmup=10, runs=100):
        measured = real_latency(self, features, warmup=warmup, runs=runs)  # really runs the artifact
        assert measured["p50"] > 0
        order.append((int(self.seq_length), self.num_threads))
        value = script[int(self.seq_length)][self.num_threads].pop(0)
        return {"p50": value, "p90": value + 1, "mean": value}

    monkeypatch.setattr(runtime.TFLiteModel, "latency", scripted)
    assert cli.main(["bench", str(first), str(second), "--threads", "1,2", "--runs", "5", "--rounds", "3",
                     "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert order == [(8, 1), (8, 2), (16, 1), (16, 2)] * 3  # in turn, round after round
    assert [row["artifact"] for row in rows] == [str(first), str(second)]
    assert [row["seq_length"] for row in rows] == [8, 16]
    assert [row["latency_ms"]["threads1"]["p50"] for row in rows] == [2.0, 7.0]
    assert [row["latency_ms"]["threads2"]["p50"] for row in rows] == [4.0, 1.5]
    assert rows[0]["latency_ms"]["threads2"]["p90"] == 5.0
    for row in rows:
        assert row["rounds"] == 3
        assert row["xnnpack"] is True and row["xnnpack_partitions"] == 1  # a float matmul: all in XNNPACK


def test_bench_without_xnnpack_runs_the_builtin_kernels(tmp_path, capsys):
    from tfcompress.evaluate import runtime

    artifact = _tiny_artifact(tmp_path / "a.tflite")
    assert runtime.xnnpack_partitions(artifact) == 1
    assert runtime.TFLiteModel(artifact).xnnpack_partitions() == 1
    assert runtime.TFLiteModel(artifact, xnnpack=False).xnnpack_partitions() == 0
    assert cli.main(["bench", str(artifact), "--threads", "1", "--runs", "3", "--no-xnnpack", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["xnnpack"] is False and row["xnnpack_partitions"] == 0
    assert row["latency_ms"]["threads1"]["p50"] > 0


def test_bench_zero_rounds_exits_2(tmp_path, capsys):
    artifact = _tiny_artifact(tmp_path / "a.tflite")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", str(artifact), "--rounds", "0"])
    assert exit_info.value.code == 2
    assert "--rounds" in capsys.readouterr().err
