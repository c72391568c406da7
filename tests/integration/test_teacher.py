"""The teacher stage and cross-architecture distillation through the recipe chain, on tiny models:
an MPNet teacher with its own vocabulary teaching a BERT student."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SST_ROWS, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
NAMES = {0: "negative", 1: "positive"}


@pytest.fixture
def student_run(tmp_path, tiny_tokenizer, monkeypatch):
    """A tiny BERT student folder, a CSV with string labels, a teacher-logits cache folder of the test's
    own, and the command that runs the custom_csv chain on them."""
    from tfcompress.models.loading import save_model

    save_model(build_tiny_model("sequence"), tiny_tokenizer, tmp_path / "student")
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\n" + "".join(f"{s},{NAMES[l]}\n" for s, l in SST_ROWS))
    monkeypatch.setenv("TFCOMPRESS_CACHE", str(tmp_path / "cache"))
    command = [sys.executable, "-m", "tfcompress.cli", "run", "custom_csv", "--smoke", "--model",
               str(tmp_path / "student"), "--train-file", str(csv), "--batch-size", "4"]
    return command, tmp_path


def _in_process(command, monkeypatch):
    from tfcompress.cli import commands as cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli.main(command[3:]) == 0


def _stage(out: Path, name: str) -> dict:
    stages = json.loads((out / "report.json").read_text())["stages"]
    return next(s for s in stages if s["name"] == name)


def test_an_mpnet_teacher_teaches_a_bert_student_through_cached_per_text_logits(
        student_run, tiny_mpnet_dir, monkeypatch):
    command, folder = student_run
    first = folder / "first"
    _in_process(command + ["--output-dir", str(first), "--distill-from", str(tiny_mpnet_dir), "--student-layers", "1",
                           "--stages", "distill"], monkeypatch)
    record = _stage(first, "distill")
    assert record["same_tokenizer"] is False and record["student_init"] == "model"
    assert record["input_model"] == str(folder / "student") and record["teacher"] == str(tiny_mpnet_dir)
    assert record["teacher_logits"]["reused"] is False and record["teacher_logits"]["texts"] == len(SST_ROWS)
    assert Path(record["teacher_logits"]["file"]).parent == folder / "cache" / "teacher-logits"
    saved = json.loads((first / "distill" / "model" / "config.json").read_text())
    assert saved["model_type"] == "bert" and saved["num_hidden_layers"] == 1
    assert (first / "distill" / "model" / "vocab.txt").read_text() == (folder / "student" / "vocab.txt").read_text()
    logged = [json.loads(line) for line in (first / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/distill/kd_loss" in row for row in logged)

    second = folder / "second"  # a later run, another folder: the teacher does not run again
    _in_process(command + ["--output-dir", str(second), "--distill-from", str(tiny_mpnet_dir), "--student-layers",
                           "1", "--stages", "distill"], monkeypatch)
    assert _stage(second, "distill")["teacher_logits"]["reused"] is True

    third = folder / "third"  # augmentation and a transfer set change the texts: another cache file
    transfer = folder / "reviews.txt"
    transfer.write_text("a fine film\n\nnot my kind of movie\n")
    _in_process(command + ["--output-dir", str(third), "--distill-from", str(tiny_mpnet_dir), "--student-layers",
                           "1", "--augment-copies", "1", "--alpha", "0.5", "--transfer-file", str(transfer),
                           "--set", "distill.augment_replace_prob=0.5", "--stages", "distill"], monkeypatch)
    assert _stage(third, "distill")["transfer_examples"] == 2
    logits = _stage(third, "distill")["teacher_logits"]
    assert logits["reused"] is False and logits["texts"] > len(SST_ROWS)
    assert logits["file"] != record["teacher_logits"]["file"]
    # the teacher read the masked copies with its own mask token (<mask>), not the student's [MASK]
    import numpy as np

    from tfcompress.compress import teacher_logits
    from tfcompress.data import augment
    from tfcompress.models import loading, surgery

    texts = [text for text, _ in SST_ROWS]
    with np.load(logits["file"]) as archive:
        stored = json.loads(str(archive["fields"]))
    # words swapped for neighbours in the input embeddings of the run's model (the student's checkpoint)
    student = loading.load_model(str(folder / "student"), task="sequence")
    layer, attr = surgery.word_embedding_ref(student)
    neighbours = augment.embedding_neighbours(loading.load_tokenizer(str(folder / "student")),
                                              getattr(layer, attr).numpy(), " ".join(texts).split())
    seed = stored["augmentation"]["seed"]
    copies = augment.augment_texts(texts, 1, "<mask>", seed=seed, replace_prob=0.5, neighbours=neighbours)
    assert copies != augment.augment_texts(texts, 1, "<mask>", seed=seed)  # the replacement did something
    assert stored["augmentation"]["replace_prob"] == 0.5 and stored["augmentation"]["neighbours"] == 15
    expected = texts + copies
    expected += ["a fine film", "not my kind of movie"]
    assert stored["augmentation"]["transfer_file"] == "reviews.txt"
    assert stored["texts_sha256"] == teacher_logits.texts_digest(expected)


def test_the_student_is_pruned_while_it_learns_from_a_teacher_of_another_tokenizer(
        student_run, tiny_mpnet_dir, monkeypatch, capsys):
    """``prune.during=distill``: TFMOT wrappers on the student through the distill stage, stripped before
    saving; the saved student holds the zeros, the record says what was pruned, and trim/export follow."""
    from tfcompress.compress import prune
    from tfcompress.models import loading

    command, folder = student_run
    out = folder / "pruned"
    _in_process(command + ["--output-dir", str(out), "--distill-from", str(tiny_mpnet_dir), "--student-layers", "1",
                           "--set", "prune.during=distill", "--set", "prune.final_sparsity=0.6",
                           "--set", "distill_train.eval_every=1", "--set", "distill_train.log_every=1", "--export", "dynamic"],
                monkeypatch)
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["distill", "export", "evaluate", "release"]  # prune dropped
    record = _stage(out, "distill")
    assert record["pruned_layers"] and abs(record["pruned_sparsity"] - 0.6) < 0.02
    assert record["schedule"]["end_step"] <= record["schedule"]["total_steps"] == record["steps"]
    assert record["best_step"] >= record["schedule"]["end_step"]  # evaluated every step; an earlier one never wins
    logged = [json.loads(line) for line in (out / "distill" / "metrics.jsonl").read_text().splitlines()]
    ramp = [row[key] for row in logged for key in row if key.endswith("prune/global_sparsity")]
    assert len(ramp) > 1 and ramp[0] < ramp[-1]  # the hook drove the schedule while the student trained
    saved = prune.sparsity_report(loading.load_model(str(out / "distill" / "model"), task="sequence"))
    assert abs(saved["pruned"]["sparsity"] - 0.6) < 0.02  # the zeros are in the saved kernels
    assert (out / "export" / "dynamic.tflite").is_file()
    assert _stage(out, "export")["input_model"] == str(out / "distill" / "model")
    with pytest.raises(SystemExit):
        _in_process(command + ["--output-dir", str(folder / "both"), "--distill-from", str(tiny_mpnet_dir),
                               "--set", "prune.during=distill", "--stages", "distill,prune"], monkeypatch)
    assert "prune.during='distill': the distill stage prunes; drop 'prune' from stages" in capsys.readouterr().err
    assert not (folder / "both").exists()


def test_a_teacher_with_other_labels_is_refused_naming_the_field(student_run, tiny_mpnet_dir, tmp_path):
    from tfcompress.models import loading

    teacher = loading.load_model(str(tiny_mpnet_dir), labels=["bad", "good"])
    loading.save_model(teacher, loading.load_tokenizer(str(tiny_mpnet_dir)), tmp_path / "other-labels")
    command, folder = student_run
    result = subprocess.run(command + ["--output-dir", str(folder / "run"), "--distill-from",
                                       str(tmp_path / "other-labels"), "--student-layers", "1", "--stages", "distill"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TFCOMPRESS_CACHE": str(folder / "cache")})
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "student.teacher=" in error and "label set" in error and "Traceback" not in result.stderr


def test_student_init_teacher_is_refused_for_a_teacher_of_another_tokenizer(student_run, tiny_mpnet_dir):
    command, folder = student_run
    result = subprocess.run(command + ["--output-dir", str(folder / "run"), "--distill-from", str(tiny_mpnet_dir),
                                       "--student-layers", "1", "--stages", "distill", "--set", "student.init=teacher"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "student.init='teacher'" in result.stderr.strip().splitlines()[-1]


def test_auto_pooling_does_not_switch_a_mean_trained_mpnet_to_cls_silently(tmp_path, tiny_mpnet_dir):
    import shutil

    from tfcompress.errors import ConfigError
    from tfcompress.models import loading

    folder = tmp_path / "st-mpnet"
    shutil.copytree(tiny_mpnet_dir, folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling",
                                                      "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    with pytest.raises(ConfigError, match="trained with mean pooling.*--pooling cls"):
        loading.load_model(str(folder), pooling="auto")
    assert loading.resolve_pooling("auto", str(tiny_mpnet_dir)) == "cls"  # no sentence-transformers config
    assert type(loading.load_model(str(folder), pooling="cls")).__name__ == "TFMPNetForSequenceClassification"


def test_teacher_flags_choose_the_chain_and_conflict():
    import argparse

    from tfcompress.cli import options
    from tfcompress.config import recipe

    defaults = recipe.RecipeConfig(stages=["finetune", "prune", "export"])
    parser = argparse.ArgumentParser()
    options.add_recipe_arguments(parser, defaults)
    args = parser.parse_args(["--output-dir", "o", "--teacher", "big", "--teacher-epochs", "2"])
    config = options.config_from_args(args, defaults)
    assert config.stages == ["teacher", "finetune", "distill", "prune", "export"]
    assert config.teacher.model == "big" and config.teacher_train.epochs == 2
    with pytest.raises(ValueError, match="--teacher big and --distill-from done"):
        options.config_from_args(parser.parse_args(["--output-dir", "o", "--teacher", "big", "--distill-from", "done"]),
                                 defaults)
    with pytest.raises(ValueError, match="teacher.model is empty"):
        recipe.RecipeConfig(stages=["teacher", "finetune"]).validate()


def test_the_teacher_stage_resumes_after_a_kill_and_teaches_the_student(student_run, tiny_mpnet_dir, monkeypatch):
    """SIGKILL while the teacher trains (after its first checkpoint), the same command again: the stage
    resumes from the checkpoint, and the distill stage learns from the teacher stage's model."""
    command, folder = student_run
    out = folder / "run"
    command = command + ["--output-dir", str(out), "--teacher", str(tiny_mpnet_dir), "--student-layers", "1",
                         "--stages", "teacher,distill", "--set", "teacher.pooling=cls",
                         "--set", "teacher_train.checkpoint_every=1", "--set", "teacher_train.max_steps=40",
                         "--set", "teacher_train.batch_size=1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TFCOMPRESS_CACHE": str(folder / "cache")})
    deadline = time.time() + 600
    try:
        # the manager's state file names a finished checkpoint (an index file alone may be mid-save)
        while not (out / "teacher" / "checkpoints" / "checkpoint").is_file():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "the teacher never checkpointed"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert not (out / "teacher" / "manifest.json").exists()
    _in_process(command, monkeypatch)
    teacher = _stage(out, "teacher")
    assert teacher["resumed_from"] >= 1 and teacher["steps"] == 40
    distill = _stage(out, "distill")
    assert distill["teacher"] == str(out / "teacher" / "model")
    assert distill["input_model"] == str(folder / "student") and distill["same_tokenizer"] is False


def test_mpnet_goes_through_prune_export_and_evaluate(student_run, tiny_mpnet_dir, monkeypatch):
    """MPNet's relative position bias and its own head are new surface for TFMOT and the converter."""
    command, folder = student_run
    out = folder / "mpnet-chain"
    command = [c if c != str(folder / "student") else str(tiny_mpnet_dir) for c in command]
    _in_process(command + ["--output-dir", str(out), "--pooling", "cls", "--stages",
                           "finetune,prune,export,evaluate,release", "--export", "fp32,dynamic,int8"], monkeypatch)
    report = json.loads((out / "report.json").read_text())
    prune = _stage(out, "prune")
    assert prune["sparsity"] > 0.2  # the share of all weight matrices; the pruned Dense layers reach 0.5
    artifacts = {a["name"]: a for a in report["artifacts"]}
    assert set(artifacts) == {"fp32", "dynamic", "int8"}
    assert artifacts["fp32"]["agreement"] == 1.0 and artifacts["fp32"]["logit_error"]["max"] < 1e-3
    # the tiny random model's logits differ by ~1e-4 between classes, so agreement flips on rounding;
    # the logits themselves are what must survive quantization
    assert all(a["logit_error"]["max"] < 0.01 for a in artifacts.values())
    assert (out / "release" / "fp32" / "model.tflite").is_file()
    saved = json.loads((out / "prune" / "model" / "config.json").read_text())
    assert saved["model_type"] == "mpnet"


def test_an_mpnet_ner_teacher_teaches_a_bert_student_per_word(tmp_path, tiny_tokenizer, monkeypatch, capsys):
    """CoNLL chain: an MPNet token teacher (another vocabulary) teaches a BERT student through per-word
    targets; a second run reuses the cached word logits."""
    from conftest import CONLL_TEXT, _save_tiny_mpnet, build_tiny_model
    from tfcompress.config.training import DistillConfig
    from tfcompress.data import augment, readers
    from tfcompress.models.loading import save_model

    data = tmp_path / "conll"
    data.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (data / name).write_text(CONLL_TEXT)
    train = readers.read_conll(data / "train.txt")
    tags = train.label_names  # the run's label set, in the run's order
    (tmp_path / "teacher").mkdir()
    tiny_mpnet_token_dir = _save_tiny_mpnet(tmp_path / "teacher", "token", len(tags), tags)
    save_model(build_tiny_model("token", num_labels=len(tags)), tiny_tokenizer, tmp_path / "student")
    monkeypatch.setenv("TFCOMPRESS_CACHE", str(tmp_path / "cache"))
    command = [sys.executable, "-m", "tfcompress.cli", "run", "conll2003", "--smoke", "--model", str(tmp_path / "student"),
               "--data-dir", str(data), "--batch-size", "2", "--distill-from", str(tiny_mpnet_token_dir),
               "--student-layers", "1", "--stages", "distill"]
    _in_process(command + ["--output-dir", str(tmp_path / "first")], monkeypatch)
    record = _stage(tmp_path / "first", "distill")
    assert record["same_tokenizer"] is False and record["student_init"] == "model"
    logits = record["teacher_logits"]
    assert logits["reused"] is False and logits["words"] == sum(len(w) for w in train.words) and logits["teacher_unseen_words"] == 0
    assert logits["student_words_without_target"] == 0
    rows = [json.loads(line) for line in (tmp_path / "first" / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert any("train/distill/kd_loss" in row for row in rows)
    _in_process(command + ["--output-dir", str(tmp_path / "second")], monkeypatch)
    assert _stage(tmp_path / "second", "distill")["teacher_logits"]["reused"] is True
    # a student reading each sentence in its document context: the teacher's per-sentence word logits serve it
    _in_process(command + ["--output-dir", str(tmp_path / "context"), "--set", "data.document_context=2"], monkeypatch)
    in_context = _stage(tmp_path / "context", "distill")["teacher_logits"]
    assert in_context["reused"] is True and in_context["student_words_without_target"] == 0
    # a teacher trained with document context reads its own (distill.teacher_document_context): another cache
    # file, one row per sentence word, each the teacher's logits at that word read inside its context
    _in_process(command + ["--output-dir", str(tmp_path / "wide"), "--set", "data.document_context=2", "--set",
                           "distill.teacher_document_context=3"], monkeypatch)
    wide = _stage(tmp_path / "wide", "distill")
    assert wide["teacher_document_context"] == 3 and wide["teacher_logits"]["reused"] is False
    assert wide["teacher_logits"]["file"] != logits["file"] and wide["teacher_logits"]["words"] == logits["words"]
    _check_teacher_reads_context(wide["teacher_logits"]["file"], tiny_mpnet_token_dir, train, 3)
    from tfcompress.cli import commands as cli  # a teacher of the student's tokenizer reads the student's batches
    same = [str(tmp_path / "student") if part == str(tiny_mpnet_token_dir) else part for part in command]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(same[3:] + ["--output-dir", str(tmp_path / "same"), "--set", "distill.teacher_document_context=2"])
    assert exited.value.code == 2
    assert "distill.teacher_document_context=2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # nor capitalisation in segment ids it was not trained with
        cli.main(same[3:] + ["--output-dir", str(tmp_path / "same-case"), "--set", "data.case_segments=true"])
    assert exited.value.code == 2 and "trained without case segment ids" in capsys.readouterr().err
    # case segment ids for the student: the teacher (MPNet, no segment ids) reads its own inputs, same cache
    _in_process(command + ["--output-dir", str(tmp_path / "case"), "--set", "data.case_segments=true"], monkeypatch)
    assert _stage(tmp_path / "case", "distill")["teacher_logits"]["reused"] is True
    assert json.loads((tmp_path / "case" / "distill" / "model" / "config.json").read_text())["case_segments"] is True
    # masked copies of the sentences: the teacher labels every word of them too (another cache file); and
    # the hidden states of the mapped layers at each word's first sub-token, in the same file
    # and a transfer set: unlabelled sentences from a text file, labelled per word by the teacher too
    transfer = tmp_path / "news.txt"
    transfer.write_text("berlin talks end\n\nreuters said on monday\nunused line\n")
    _in_process(command + ["--output-dir", str(tmp_path / "third"), "--augment-copies", "1", "--set",
                           "distill.augment_mask_prob=0.5", "--set", "distill.augment_seed=3", "--set",
                           "distill.hidden_loss_weight=1.0", "--transfer-file", str(transfer), "--set",
                           "distill.transfer_max=2"], monkeypatch)
    augmented = _stage(tmp_path / "third", "distill")
    assert augmented["transfer_examples"] == 2
    assert augmented["teacher_logits"]["hidden_layers"] == [layer for layer, _ in augmented["layer_map"]]
    rows = [json.loads(line) for line in (tmp_path / "third" / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("train/distill/hidden_loss", 0) > 0 for row in rows)
    ngram_prob = DistillConfig().augment_ngram_prob  # the run's default
    copies = augment.augment_sentences(train.words, 1, tiny_tokenizer.mask_token, mask_prob=0.5, ngram_prob=ngram_prob,
                                       seed=3)
    assert augmented["augmented_examples"] == len(copies) > 0
    logits = augmented["teacher_logits"]
    assert logits["reused"] is False
    assert logits["words"] == sum(len(w) for w in train.words) + sum(len(w) for w in copies) + 3 + 4
    assert logits["student_words_without_target"] == 0
    # the teacher read the masked words with its own mask token
    import numpy as np

    from tfcompress.compress import teacher_logits

    with np.load(logits["file"]) as archive:
        stored = json.loads(str(archive["fields"]))
    teacher_mask = "<mask>"
    expected = [list(w) for w in train.words] + [[teacher_mask if w == tiny_tokenizer.mask_token else w for w in s]
                                                 for s in copies] + [["berlin", "talks", "end"],
                                                                     ["reuters", "said", "on", "monday"]]
    assert any(teacher_mask in s for s in expected) and stored["texts_sha256"] == teacher_logits.texts_digest(expected)
    # a teacher of the student's own tokenizer gives no per-word targets: augmented sentences are refused
    from tfcompress.cli import commands as cli

    same = [a if a != str(tiny_mpnet_token_dir) else str(tmp_path / "student") for a in command]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(same[3:] + ["--output-dir", str(tmp_path / "fourth"), "--augment-copies", "1"])
    assert exit_info.value.code == 2
    assert "distill.augment_copies=1: unlabelled sentences of a token task" in capsys.readouterr().err


def _check_teacher_reads_context(cache_file, teacher_dir, train, words):
    """Each cached row is the teacher's own logits at its first sub-token of the word, the sentence read
    between ``words`` words of the sentences around it (computed here by hand, sentence by sentence)."""
    import numpy as np

    from tfcompress.models import loading

    rows = np.load(cache_file)["logits"]
    teacher = loading.load_model(str(teacher_dir), task="token", labels=train.label_names)
    tokenizer = loading.load_tokenizer(str(teacher_dir))
    row = 0
    for index, sentence in enumerate(train.words):
        before = [w for s in train.words[:index] for w in s][-words:] if index else []
        after = [w for s in train.words[index + 1:] for w in s][:words]
        encoded = tokenizer([before + sentence + after], is_split_into_words=True, return_tensors="tf",
                            return_token_type_ids=False)
        logits = teacher(dict(encoded), training=False).logits.numpy()[0]
        firsts = {}
        for position, word in enumerate(encoded.word_ids(0)):
            firsts.setdefault(word, position)
        expected = np.stack([logits[firsts[len(before) + w]] for w in range(len(sentence))])
        np.testing.assert_allclose(rows[row:row + len(sentence)], expected, atol=1e-4)
        row += len(sentence)
    assert row == len(rows) and index > 0 and before


def test_pruning_while_distilling_enters_the_distill_hash_only_when_on():
    from tfcompress.config import PruneConfig, recipe
    from tfcompress.errors import ConfigError
    from tfcompress.pipeline import runner

    plain = recipe.RecipeConfig(stages=["distill", "prune", "trim"])
    assert "during" not in runner.stage_config(plain, "prune")["prune"]  # older run folders keep their hashes
    assert "prune" not in runner.stage_config(plain, "distill")
    during = recipe.RecipeConfig(stages=["distill", "trim"])
    during.prune.during = "distill"
    during.validate()
    first = runner.stage_hashes(during)
    assert first["distill"] != runner.stage_hashes(recipe.RecipeConfig(stages=["distill", "trim"]))["distill"]
    during.prune.final_sparsity = 0.7
    assert [n for n, h in runner.stage_hashes(during).items() if h != first[n]] == ["distill", "trim"]
    during.distill_train.early_stopping_patience = 2
    with pytest.raises(ConfigError, match="distill_train.early_stopping_patience=2 with prune.during='distill'"):
        during.validate()
    during.distill_train.early_stopping_patience = 0
    during.stages = ["finetune", "trim"]
    with pytest.raises(ConfigError, match="prune.during='distill': the distill stage prunes, and this chain has none"):
        during.validate()
    with pytest.raises(ConfigError, match="prune.during='finetune': must be one of"):
        PruneConfig(during="finetune")


def test_the_teacher_stage_is_a_side_branch_of_the_hash_chain():
    """Changing the teacher reruns distill and after, never finetune; a run without it keeps its hashes."""
    from tfcompress.config import recipe
    from tfcompress.pipeline import runner

    plain = recipe.RecipeConfig(stages=["finetune", "distill", "prune"])
    with_teacher = recipe.RecipeConfig(stages=["teacher", "finetune", "distill", "prune"])
    with_teacher.teacher.model = "big"
    before = runner.stage_hashes(with_teacher)
    assert before["finetune"] == runner.stage_hashes(plain)["finetune"]
    assert before["distill"] != runner.stage_hashes(plain)["distill"]
    with_teacher.teacher_train.epochs = 2
    after = runner.stage_hashes(with_teacher)
    assert [n for n in before if before[n] != after[n]] == ["teacher", "distill", "prune"]
    with_teacher.student.teacher = "another"
    with pytest.raises(ValueError, match="give one teacher"):
        with_teacher.validate()
